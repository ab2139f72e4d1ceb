"""Redaction knowledge: the catalogue, locating values, rewriting bodies in every wire format.

Each masked body is read back with botocore's own parser for the protocol:
what the SDK would do with it.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import cbor2
import pytest
from botocore.awsrequest import HeadersDict
from botocore.parsers import create_parser
from jsonpath_ng import jsonpath as jp

from addons.aws import detectors, models, redact
from addons.aws.redact import FieldRule
from addons.aws.secrets_catalogue import REQUEST_SECRETS, RESPONSE_SECRETS
from addons.aws.wiredoc import MARKER, MARKER_BYTES, WireError
from addons.rules.actions import CREDENTIAL_MINTING

CANARY = "canary-5f0c0e6e-1d55-4b8e"


def sdk_parse(
    protocol: str, service: str, operation: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    shape = models.service_model(service).operation_model(operation).output_shape
    response = {"status_code": 200, "headers": HeadersDict(headers or {}), "body": body}
    return create_parser(protocol).parse(response, shape)


def builtin(action: str) -> list[FieldRule]:
    return redact.builtin_rules(action, "response")


def mask(
    protocol: str,
    action: str,
    body: bytes,
    rules: list[FieldRule] | None = None,
    headers: dict[str, str] | None = None,
    status: int = 200,
) -> redact.ResponseMasking:
    service, operation = action.split(":")
    return redact.mask_response(
        protocol,
        service,
        operation,
        status,
        headers or {},
        body,
        builtin(action) if rules is None else rules,
    )


# -- the catalogue -------------------------------------------------------------------


def _members_exist(shape: Any, path: Any) -> bool:
    """Every named member of a catalogue path exists in the shape (wildcards pass)."""
    if isinstance(path, jp.Child):
        return _members_exist(shape, path.left) and _members_exist(
            _descend(shape, path.left), path.right
        )
    if isinstance(path, jp.Fields):
        return shape.type_name == "map" or all(name in shape.members for name in path.fields)
    return True


def _descend(shape: Any, path: Any) -> Any:
    if isinstance(path, jp.Child):
        return _descend(_descend(shape, path.left), path.right)
    if isinstance(path, jp.Fields):
        return shape.value if shape.type_name == "map" else shape.members[path.fields[0]]
    if shape.type_name == "list":
        return shape.member
    return shape


@pytest.mark.parametrize(
    ("table", "part"), [(RESPONSE_SECRETS, "output"), (REQUEST_SECRETS, "input")]
)
def test_every_catalogue_entry_names_real_members(table: dict[str, Any], part: str) -> None:
    for action, secrets in table.items():
        service, operation = action.split(":")
        model = models.service_model(service).operation_model(operation)
        shape = model.output_shape if part == "output" else model.input_shape
        for secret in secrets:
            assert _members_exist(shape, redact.compiled(secret.path)), (action, secret.path)


def test_issue_catalogue_is_covered() -> None:
    for action in (
        "secretsmanager:GetSecretValue",
        "secretsmanager:BatchGetSecretValue",
        "ssm:GetParameter",
        "ssm:GetParameters",
        "ssm:GetParametersByPath",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyPair",
        "sts:AssumeRole",
        "sts:GetSessionToken",
        "iam:CreateAccessKey",
        "ecr:GetAuthorizationToken",
        "ec2:GetPasswordData",
        "lambda:GetFunction",
        "lambda:GetFunctionConfiguration",
    ):
        assert RESPONSE_SECRETS[action], action
    for action in (
        "secretsmanager:CreateSecret",
        "secretsmanager:PutSecretValue",
        "ssm:PutParameter",
        "lambda:CreateFunction",
        "lambda:UpdateFunctionConfiguration",
    ):
        assert REQUEST_SECRETS[action], action


# -- JSON ----------------------------------------------------------------------------


def test_json_secret_value_masked_and_parsed_by_the_sdk() -> None:
    body = json.dumps(
        {
            "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db",
            "Name": "db",
            "SecretString": CANARY,
            "SecretBinary": base64.b64encode(CANARY.encode()).decode(),
            "CreatedDate": 1700000000.5,
        }
    ).encode()
    result = mask("json", "secretsmanager:GetSecretValue", body)
    assert result.agent_body is not None and CANARY.encode() not in result.agent_body
    assert result.record_body == result.agent_body
    parsed = sdk_parse("json", "secretsmanager", "GetSecretValue", result.agent_body)
    assert parsed["SecretString"] == MARKER
    assert parsed["SecretBinary"] == MARKER_BYTES
    assert parsed["Name"] == "db"
    assert [str(item) for item in result.masked] == [
        "response $.SecretString by builtin:secretsmanager:GetSecretValue (agent)",
        "response $.SecretBinary by builtin:secretsmanager:GetSecretValue (agent)",
    ]


def test_secure_string_filter_leaves_plain_parameters() -> None:
    body = json.dumps(
        {
            "Parameters": [
                {"Name": "region", "Type": "String", "Value": "eu-west-1"},
                {"Name": "password", "Type": "SecureString", "Value": CANARY},
                {"Name": "hosts", "Type": "StringList", "Value": "a,b"},
            ]
        }
    ).encode()
    result = mask("json", "ssm:GetParametersByPath", body)
    assert result.agent_body is not None
    values = [p["Value"] for p in json.loads(result.agent_body)["Parameters"]]
    assert values == ["eu-west-1", MARKER, "a,b"]
    assert [item.path for item in result.masked] == ["$.Parameters[1].Value"]


def test_dynamodb_policy_mask_recomputes_crc32_and_drops_digests() -> None:
    body = json.dumps(
        {"Item": {"id": {"S": "db"}, "password": {"S": CANARY}, "port": {"N": "5432"}}}
    ).encode()
    headers = {
        "x-amz-crc32": str(zlib.crc32(body)),
        "Content-MD5": "stale",
        "x-amz-checksum-crc32": "stale",
    }
    rules = [FieldRule("$.Item.password.S", "table-passwords", "agent")]
    result = mask("json", "dynamodb:GetItem", body, rules, headers)
    assert result.agent_body is not None
    assert result.header_updates == {
        "x-amz-crc32": str(zlib.crc32(result.agent_body)),
        "Content-MD5": None,
        "x-amz-checksum-crc32": None,
    }
    item = json.loads(result.agent_body)["Item"]
    assert item == {"id": {"S": "db"}, "password": {"S": MARKER}, "port": {"N": "5432"}}


def test_masking_a_structure_masks_every_leaf_in_its_own_type() -> None:
    body = json.dumps({"Item": {"password": {"S": CANARY}, "port": {"N": "5432"}}}).encode()
    rules = [FieldRule("$.Item", "whole-item", "agent")]
    result = mask("json", "dynamodb:GetItem", body, rules)
    assert result.agent_body is not None
    assert json.loads(result.agent_body)["Item"] == {
        "password": {"S": MARKER},
        "port": {"N": MARKER},
    }
    assert [item.path for item in result.masked] == ["$.Item"]


def test_lambda_environment_values_masked_names_kept() -> None:
    body = json.dumps(
        {"Configuration": {"FunctionName": "f", "Environment": {"Variables": {"DB": CANARY}}}}
    ).encode()
    result = mask("rest-json", "lambda:GetFunction", body)
    assert result.agent_body is not None
    parsed = sdk_parse("rest-json", "lambda", "GetFunction", result.agent_body)
    assert parsed["Configuration"]["Environment"]["Variables"] == {"DB": MARKER}


def test_rest_header_members_are_masked_in_the_headers() -> None:
    rules = [FieldRule("$.ExecutedVersion", "versions", "agent")]
    result = mask(
        "rest-json", "lambda:Invoke", b'{"ok": 1}', rules, {"X-Amz-Executed-Version": "7"}
    )
    assert result.header_updates["X-Amz-Executed-Version"] == MARKER
    assert result.agent_body is not None and json.loads(result.agent_body) == {"ok": 1}


def test_errors_and_unknown_operations_are_left_alone() -> None:
    body = json.dumps({"SecretString": CANARY}).encode()
    assert mask("json", "secretsmanager:GetSecretValue", body, status=400).agent_body is None
    unknown = redact.mask_response("json", "secretsmanager", "unknown", 200, {}, body, [])
    assert unknown.agent_body is None and unknown.record_body == body


def test_unparsable_body_raises() -> None:
    with pytest.raises(WireError):
        mask("json", "secretsmanager:GetSecretValue", b"{not json")


# -- scopes -------------------------------------------------------------------------


STS_XML = f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLEEXAMPLE12</AccessKeyId>
      <SecretAccessKey>{CANARY}-secret</SecretAccessKey>
      <SessionToken>{CANARY}-token</SessionToken>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn>
      <AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId></AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata>
</AssumeRoleResponse>""".encode()


def test_query_xml_credentials_masked_and_parsed_by_the_sdk() -> None:
    result = mask("query", "sts:AssumeRole", STS_XML)
    assert result.agent_body is not None and CANARY.encode() not in result.agent_body
    parsed = sdk_parse("query", "sts", "AssumeRole", result.agent_body)
    credentials = parsed["Credentials"]
    assert (credentials["SecretAccessKey"], credentials["SessionToken"]) == (MARKER, MARKER)
    assert credentials["AccessKeyId"] == "ASIAEXAMPLEEXAMPLE12"
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"


def test_record_scope_policy_mask_lowers_the_builtin_for_that_field_only() -> None:
    rules = [
        *builtin("sts:AssumeRole"),
        FieldRule("$.Credentials.SecretAccessKey", "mig", "record"),
    ]
    result = mask("query", "sts:AssumeRole", STS_XML, rules)
    assert result.agent_body is not None and result.record_body is not None
    agent = sdk_parse("query", "sts", "AssumeRole", result.agent_body)["Credentials"]
    assert agent["SecretAccessKey"] == f"{CANARY}-secret"  # lowered: the agent sees it
    assert agent["SessionToken"] == MARKER  # not named by the record mask: still hidden
    assert CANARY.encode() not in result.record_body
    assert sorted(str(item) for item in result.masked) == [
        "response $.Credentials.SecretAccessKey by mig (record)",
        "response $.Credentials.SessionToken by builtin:sts:AssumeRole (agent)",
    ]


def test_record_only_masking_leaves_the_agent_body_untouched() -> None:
    rules = redact.builtin_rules("sts:AssumeRole", "response", scope="record")
    result = mask("query", "sts:AssumeRole", STS_XML, rules)
    assert result.agent_body is None and result.header_updates == {}
    assert result.record_body is not None and CANARY.encode() not in result.record_body


def test_policy_agent_mask_wins_over_a_record_mask() -> None:
    rules = [
        FieldRule("$.Credentials.SecretAccessKey", "mig", "record"),
        FieldRule("$.Credentials", "hide-all", "agent"),
    ]
    result = mask("query", "sts:AssumeRole", STS_XML, rules)
    assert result.agent_body is not None
    assert f"{CANARY}-secret".encode() not in result.agent_body


# -- other wire formats -------------------------------------------------------------


def test_ec2_xml_password_data() -> None:
    body = (
        b'<GetPasswordDataResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        b"<requestId>r</requestId><instanceId>i-1</instanceId>"
        b"<timestamp>2024-01-01T00:00:00Z</timestamp>"
        b"<passwordData>" + CANARY.encode() + b"</passwordData></GetPasswordDataResponse>"
    )
    result = mask("ec2", "ec2:GetPasswordData", body)
    assert result.agent_body is not None
    assert sdk_parse("ec2", "ec2", "GetPasswordData", result.agent_body)["PasswordData"] == MARKER


def test_rest_xml_flattened_list_and_namespace() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><KeyCount>2</KeyCount>"
        b"<Contents><Key>public.txt</Key><Size>1</Size></Contents>"
        b"<Contents><Key>" + CANARY.encode() + b"</Key><Size>2</Size></Contents>"
        b"</ListBucketResult>"
    )
    rules = [FieldRule("$.Contents[1].Key", "hidden-keys", "agent")]
    result = mask("rest-xml", "s3:ListObjectsV2", body, rules)
    assert result.agent_body is not None
    assert b"ns0:" not in result.agent_body  # the namespace stays the default one
    parsed = sdk_parse("rest-xml", "s3", "ListObjectsV2", result.agent_body)
    assert [item["Key"] for item in parsed["Contents"]] == ["public.txt", MARKER]
    assert parsed["Contents"][1]["Size"] == 2


def test_query_xml_map_entries() -> None:
    body = (
        b'<GetTopicAttributesResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        b"<GetTopicAttributesResult><Attributes>"
        b"<entry><key>Owner</key><value>123456789012</value></entry>"
        b"<entry><key>Token</key><value>" + CANARY.encode() + b"</value></entry>"
        b"</Attributes></GetTopicAttributesResult></GetTopicAttributesResponse>"
    )
    rules = [FieldRule("$.Attributes.Token", "topic-token", "agent")]
    result = mask("query", "sns:GetTopicAttributes", body, rules)
    assert result.agent_body is not None
    parsed = sdk_parse("query", "sns", "GetTopicAttributes", result.agent_body)
    assert parsed["Attributes"] == {"Owner": "123456789012", "Token": MARKER}


def test_cbor_body_masked_and_parsed_by_the_sdk() -> None:
    body = cbor2.dumps(
        {
            "MetricDataResults": [
                {"Id": "q1", "Label": CANARY, "Values": [1.5], "StatusCode": "Complete"}
            ]
        }
    )
    rules = [FieldRule("$.MetricDataResults[*].Label", "labels", "agent")]
    result = mask("smithy-rpc-v2-cbor", "cloudwatch:GetMetricData", body, rules)
    assert result.agent_body is not None and CANARY.encode() not in result.agent_body
    parsed = sdk_parse("smithy-rpc-v2-cbor", "cloudwatch", "GetMetricData", result.agent_body)
    assert parsed["MetricDataResults"][0]["Label"] == MARKER
    assert parsed["MetricDataResults"][0]["Values"] == [1.5]


# -- requests (for the record) --------------------------------------------------------


def request(protocol: str, action: str, body: bytes, params: dict[str, Any]) -> Any:
    service, operation = action.split(":")
    rules = redact.builtin_rules(action, "request")
    return redact.mask_request(protocol, service, operation, body, params, rules)


def test_create_secret_request_masked_for_the_record() -> None:
    params = {"Name": "db", "SecretString": CANARY}
    result = request("json", "secretsmanager:CreateSecret", json.dumps(params).encode(), params)
    assert result.record_body is not None
    assert json.loads(result.record_body) == {"Name": "db", "SecretString": MARKER}
    assert result.record_params == {"Name": "db", "SecretString": MARKER}
    assert params["SecretString"] == CANARY  # the caller's parameters are not changed
    assert [item.scope for item in result.masked] == ["record"]


@pytest.mark.parametrize(
    ("kind", "masked"), [(None, True), ("SecureString", True), ("String", False)]
)
def test_put_parameter_value_masked_unless_plainly_typed(kind: str | None, masked: bool) -> None:
    params = {"Name": "p", "Value": CANARY} | ({"Type": kind} if kind else {})
    result = request("json", "ssm:PutParameter", json.dumps(params).encode(), params)
    assert (CANARY.encode() not in result.record_body) is masked
    assert (result.record_params["Value"] == MARKER) is masked


def test_query_form_request_masked_even_when_params_left_it_out() -> None:
    body = (
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15"
        f"&RoleArn=arn%3Ar&WebIdentityToken={CANARY}"
    )
    result = request("query", "sts:AssumeRoleWithWebIdentity", body.encode(), {"RoleArn": "arn:r"})
    assert result.record_body is not None and CANARY.encode() not in result.record_body
    assert b"RoleArn=arn%3Ar" in result.record_body
    assert [item.path for item in result.masked] == ["$.WebIdentityToken"]


def test_unparsable_request_body_is_not_kept() -> None:
    params = {"Name": "db", "SecretString": CANARY}
    result = request("json", "secretsmanager:CreateSecret", b"{broken " + CANARY.encode(), params)
    assert result.record_body is None
    assert result.record_params["SecretString"] == MARKER


def test_requests_without_secrets_are_kept_as_sent() -> None:
    body = b'{"SecretId": "db"}'
    result = request("json", "secretsmanager:DescribeSecret", body, {"SecretId": "db"})
    assert result.record_body is body and result.masked == []


# -- helpers ----------------------------------------------------------------------------


def test_format_steps() -> None:
    assert redact.format_steps(("A", 0, "B")) == "$.A[0].B"
    assert redact.format_steps(("Variables", "my key's")) == "$.Variables['my key\\'s']"


def test_streaming_outputs() -> None:
    assert redact.streams_output("s3", "GetObject")
    assert redact.streams_output("lambda", "InvokeWithResponseStream")
    assert not redact.streams_output("secretsmanager", "GetSecretValue")
    assert not redact.streams_output("nosuchservice", "Nothing")


# -- pattern detectors ---------------------------------------------------------------------


FAKE_KEY_ID = "AKIA" + "Z7EXAMPLEQ4R2T8Y"
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example key


@pytest.mark.parametrize(
    "secret",
    [
        FAKE_KEY_ID,
        FAKE_SECRET,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl",
    ],
)
def test_builtin_detectors_scrub_free_text(secret: str) -> None:
    scrubbed = detectors.Detectors().scrub_bytes(f'{{"note": "see {secret} here"}}'.encode())
    assert secret.encode() not in scrubbed
    assert MARKER.encode() in scrubbed and scrubbed.startswith(b'{"note": "see ')


def test_detectors_leave_digests_and_ids_alone() -> None:
    text = "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 id i-0123456789abcdef0 AIDAEXAMPLE"
    assert detectors.Detectors().scrub_text(text) == text


def test_configured_patterns_and_parameter_trees() -> None:
    found = detectors.Detectors([r"corp-[0-9]{6}"])
    tree = {"Tags": [{"Key": "ticket", "Value": "corp-123456"}], "Count": 3}
    assert found.scrub_value(tree) == {"Tags": [{"Key": "ticket", "Value": MARKER}], "Count": 3}
    body = b"\xff\xfe binary corp-654321"
    assert found.scrub_bytes(body) == b"\xff\xfe binary " + MARKER.encode()


def test_invalid_configured_pattern_is_refused() -> None:
    with pytest.raises(detectors.PatternError):
        detectors.Detectors(["(unclosed"])


# -- what botocore's models mark sensitive --------------------------------------------

# Credential-minting actions whose output holds no secret (a login profile's metadata,
# an SSH public key's id).
NO_SECRET_OUTPUT = {"iam:CreateLoginProfile", "iam:UpdateLoginProfile", "iam:UploadSSHPublicKey"}


def test_every_credential_minting_action_hides_its_secrets_from_the_agent() -> None:
    """A minting call a policy allows returns nothing usable unless a policy mask lowers
    it to record-only: credentials, tokens and passwords alike."""
    uncovered = [
        action
        for action in sorted(CREDENTIAL_MINTING)
        if action not in NO_SECRET_OUTPUT
        and not any(rule.scope == "agent" for rule in builtin(action))
    ]
    assert uncovered == []


def test_sensitive_credentials_masked_and_parsed_by_the_sdk() -> None:
    body = json.dumps(
        {"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": CANARY,
                         "SessionToken": CANARY, "ExpirationTime": 1700000000}}
    ).encode()  # fmt: skip
    result = mask("json", "ssm:GetAccessToken", body)
    assert result.agent_body is not None and CANARY.encode() not in result.agent_body
    parsed = sdk_parse("json", "ssm", "GetAccessToken", result.agent_body)
    assert parsed["Credentials"]["AccessKeyId"] == "ASIAEXAMPLE"
    assert parsed["Credentials"]["SessionToken"] == MARKER


def test_a_password_the_model_marks_sensitive_is_kept_out_of_the_record() -> None:
    body = (
        "Action=CreateDBInstance&Version=2014-10-31&DBInstanceIdentifier=db1"
        f"&DBInstanceClass=db.t3.micro&Engine=postgres&MasterUserPassword={CANARY}"
    )
    params = {"DBInstanceIdentifier": "db1", "MasterUserPassword": CANARY}
    result = request("query", "rds:CreateDBInstance", body.encode(), params)
    assert result.record_body is not None and CANARY.encode() not in result.record_body
    assert b"DBInstanceIdentifier=db1" in result.record_body
    assert result.record_params == {"DBInstanceIdentifier": "db1", "MasterUserPassword": MARKER}
    # Not a minting action: what the output marks sensitive is kept from the record only.
    assert {rule.scope for rule in builtin("rds:CreateDBInstance")} == {"record"}


@pytest.mark.parametrize("service", ["rds", "cognito-idp", "lakeformation", "datazone"])
def test_sensitive_paths_compile_whatever_the_member_names(service: str) -> None:
    """Member names are quoted: a member called ``where`` is not JSONPath's keyword."""
    for operation in models.operation_names(service):
        for part in ("request", "response"):
            for path in redact.sensitive_paths(service, operation, part):
                redact.compiled(path)
