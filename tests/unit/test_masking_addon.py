"""The masking addon on mitmproxy flows: what the agent gets, what the record keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons import config
from addons.aws.wiredoc import MARKER
from addons.context import METADATA_KEY, GateContext, Operation
from addons.masking import Masking, RequestMasking
from addons.rules.model import Location, Mask, Selector

CANARY = "canary-0d6f3c8a-masking-addon"
STS_ANSWER = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAEXAMPLEEXAMPLE12</AccessKeyId>
<SecretAccessKey>{CANARY}</SecretAccessKey><SessionToken>{CANARY}</SessionToken>
<Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>
</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>""".encode()


def gate_for(
    flow: http.HTTPFlow, action: str, protocol: str = "json", signed: bool = True, **params: Any
) -> GateContext:
    service, name = action.split(":")
    gate = GateContext(signed=signed)
    gate.operation = Operation(service, name, "us-east-1", service, protocol, params)
    flow.metadata[METADATA_KEY] = gate
    return gate


def response_flow(body: bytes, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x"
    flow.response = http.Response.make(200, body, headers or {})
    return flow


def policy_mask(name: str, path: str, scope: str) -> Mask:
    return Mask(name, (Selector("*", "*"),), (), (path,), scope, Location(Path("p.yaml"), 1, 1))  # type: ignore[arg-type]


def secret_body() -> bytes:
    return json.dumps({"Name": "db", "SecretString": CANARY}).encode()


# -- responses -------------------------------------------------------------------------


def test_builtin_mask_rewrites_the_agents_body_and_the_record() -> None:
    flow = response_flow(secret_body())
    gate = gate_for(flow, "secretsmanager:GetSecretValue")
    Masking().response(flow)
    assert flow.response is not None
    assert json.loads(flow.response.content) == {"Name": "db", "SecretString": MARKER}
    assert flow.response.headers["content-length"] == str(len(flow.response.raw_content))
    assert gate.record_response_body == flow.response.content
    assert gate.masked == [
        "response $.SecretString by builtin:secretsmanager:GetSecretValue (agent)"
    ]


def test_record_scope_mask_keeps_the_value_for_the_agent_only() -> None:
    flow = response_flow(secret_body())
    gate = gate_for(flow, "secretsmanager:GetSecretValue")
    gate.masks = [policy_mask("migration", "$.SecretString", "record")]
    Masking().response(flow)
    assert flow.response is not None
    assert json.loads(flow.response.content)["SecretString"] == CANARY
    assert gate.record_response_body is not None
    assert CANARY.encode() not in gate.record_response_body
    assert gate.masked == ["response $.SecretString by migration (record)"]


def test_gateway_answered_sessions_reach_the_agent_but_not_the_record() -> None:
    flow = response_flow(STS_ANSWER)
    gate = gate_for(flow, "sts:AssumeRoleWithWebIdentity", "query", signed=False)
    Masking().response(flow)
    assert flow.response is not None and flow.response.content == STS_ANSWER
    assert gate.record_response_body is not None
    assert CANARY.encode() not in gate.record_response_body


def test_unparsable_secret_response_is_refused_not_passed_on() -> None:
    flow = response_flow(b'{"SecretString": "' + CANARY.encode())
    gate_for(flow, "secretsmanager:GetSecretValue")
    Masking().response(flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert CANARY.encode() not in flow.response.content
    assert b"awsgate: internal error in masking.response" in flow.response.content


def test_patterns_scrub_the_record_but_not_the_agents_body() -> None:
    key = "AKIA" + "Z7EXAMPLEQ4R2T8Y"
    body = json.dumps({"Functions": [{"Description": f"uses {key}"}]}).encode()
    flow = response_flow(body)
    gate = gate_for(flow, "lambda:ListFunctions", "rest-json")
    Masking().response(flow)
    assert flow.response is not None and flow.response.content == body
    assert gate.record_response_body is not None and key.encode() not in gate.record_response_body


def test_streamed_responses_keep_no_record_body() -> None:
    flow = response_flow(b"")
    gate = gate_for(flow, "s3:GetObject", "rest-xml")
    assert flow.response is not None
    flow.response.stream = True
    gate.record_response_body = b"stale"
    Masking().response(flow)
    assert gate.record_response_body is None


# -- streaming decisions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "protocol", "length", "streams"),
    [
        ("s3:GetObject", "rest-xml", "10", True),  # a streaming payload, whatever its size
        ("s3:ListObjectsV2", "rest-xml", "10", False),
        ("s3:ListObjectsV2", "rest-xml", str(10 * 1024 * 1024), True),  # large, nothing to mask
        ("secretsmanager:GetSecretValue", "json", str(10 * 1024 * 1024), False),  # secrets
    ],
)
def test_responseheaders_streams_only_what_need_not_be_masked(
    action: str, protocol: str, length: str, streams: bool
) -> None:
    flow = response_flow(b"")
    assert flow.response is not None
    flow.response.headers["content-length"] = length  # the body is still upstream
    gate_for(flow, action, protocol)
    Masking().responseheaders(flow)
    assert flow.response is not None and bool(flow.response.stream) is streams


# -- requests --------------------------------------------------------------------------


def test_request_secrets_are_masked_for_the_record_only() -> None:
    flow = tflow.tflow()
    flow.request.content = secret_body()
    gate = gate_for(flow, "secretsmanager:CreateSecret", Name="db", SecretString=CANARY)
    RequestMasking().request(flow)
    assert flow.request.content == secret_body()  # what goes to AWS is unchanged
    assert gate.record_request_body is not None
    assert json.loads(gate.record_request_body)["SecretString"] == MARKER
    assert gate.record_params == {"Name": "db", "SecretString": MARKER}


def test_unresolved_requests_keep_no_body() -> None:
    flow = tflow.tflow()
    flow.request.content = secret_body()
    gate = GateContext()
    flow.metadata[METADATA_KEY] = gate
    RequestMasking().request(flow)
    assert gate.record_request_body is None and gate.record_params == {}


def test_config_masking_patterns(tmp_path: Path) -> None:
    path = tmp_path / "awsgate.yaml"
    parsed = config.parse({"masking": {"patterns": [r"corp-[0-9]{6}"]}}, path)
    assert parsed.mask_patterns == (r"corp-[0-9]{6}",)
    assert config.parse({}, path).mask_patterns == ()
    with pytest.raises(config.ConfigError, match=r"masking\.patterns"):
        config.parse({"masking": {"patterns": ["(unclosed"]}}, path)
    with pytest.raises(config.ConfigError, match="masking takes only patterns"):
        config.parse({"masking": {"fields": []}}, path)
