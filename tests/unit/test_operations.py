"""Hand-checked operation resolution: the cases that are easy to get wrong."""

from __future__ import annotations

import dataclasses
import json
import random

import cbor2
import pytest

from addons.aws.operations import RawRequest, credential_scope, resolve
from addons.context import Operation

ACCOUNT = "123456789012"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def s3(
    method: str,
    path: str,
    query: str = "",
    host: str = "s3.us-east-1.amazonaws.com",
    headers: dict[str, str] | None = None,
    body: bytes | None = b"",
) -> Operation:
    request = RawRequest(method, host, path, query, headers or {}, body)
    return resolve(request, "s3", "us-east-1", ACCOUNT)


# --- S3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "name"),
    [
        ("PUT", "/bucket/key", "", {}, "PutObject"),
        ("PUT", "/bucket/key", "x-id=PutObject", {}, "PutObject"),
        ("PUT", "/bucket/key", "partNumber=3&uploadId=abc", {}, "UploadPart"),
        ("PUT", "/bucket/key", "", {"x-amz-copy-source": "src/k"}, "CopyObject"),
        (
            "PUT",
            "/bucket/key",
            "partNumber=3&uploadId=abc",
            {"X-Amz-Copy-Source": "src/k"},
            "UploadPartCopy",
        ),
        ("PUT", "/bucket", "", {}, "CreateBucket"),
        ("PUT", "/bucket/", "", {}, "CreateBucket"),
        ("GET", "/", "", {}, "ListBuckets"),
        ("GET", "/bucket", "", {}, "ListObjects"),
        ("GET", "/bucket", "list-type=2&prefix=logs%2F", {}, "ListObjectsV2"),
        ("GET", "/bucket", "uploads", {}, "ListMultipartUploads"),
        ("GET", "/bucket", "versions", {}, "ListObjectVersions"),
        ("GET", "/bucket", "acl", {}, "GetBucketAcl"),
        ("GET", "/bucket/key", "", {}, "GetObject"),
        ("GET", "/bucket/key", "acl", {}, "GetObjectAcl"),
        # x-id is a hint, never decisive: S3 serves the ACL here.
        ("GET", "/bucket/key", "acl&x-id=GetObject", {}, "GetObjectAcl"),
        ("GET", "/bucket/key", "tagging", {}, "GetObjectTagging"),
        ("GET", "/bucket/key", "uploadId=abc", {}, "ListParts"),
        ("HEAD", "/bucket", "", {}, "HeadBucket"),
        ("HEAD", "/bucket/key", "", {}, "HeadObject"),
        ("POST", "/bucket", "delete", {}, "DeleteObjects"),
        ("POST", "/bucket/key", "uploads", {}, "CreateMultipartUpload"),
        ("POST", "/bucket/key", "uploadId=abc", {}, "CompleteMultipartUpload"),
        ("DELETE", "/bucket/key", "", {}, "DeleteObject"),
        ("DELETE", "/bucket/key", "uploadId=abc", {}, "AbortMultipartUpload"),
        ("DELETE", "/bucket", "", {}, "DeleteBucket"),
        ("GET", "/bucket", "lifecycle", {}, "GetBucketLifecycleConfiguration"),
    ],
)
def test_s3_path_style(
    method: str, path: str, query: str, headers: dict[str, str], name: str
) -> None:
    operation = s3(method, path, query, headers=headers)
    assert (operation.service, operation.name, operation.protocol) == ("s3", name, "rest-xml")
    assert operation.params.get("Bucket") == (None if path == "/" else "bucket")


@pytest.mark.parametrize(
    ("method", "path", "query", "name", "key"),
    [
        ("PUT", "/", "", "CreateBucket", None),
        ("GET", "/", "", "ListObjects", None),
        ("GET", "/", "list-type=2", "ListObjectsV2", None),
        ("PUT", "/dir/file.txt", "", "PutObject", "dir/file.txt"),
        ("PUT", "/file", "partNumber=1&uploadId=u", "UploadPart", "file"),
        ("GET", "/a%20b/c%2Bd%3D", "", "GetObject", "a b/c+d="),
        ("GET", "/dir/", "", "GetObject", "dir/"),
        ("HEAD", "/", "", "HeadBucket", None),
    ],
)
def test_s3_virtual_host_style(
    method: str, path: str, query: str, name: str, key: str | None
) -> None:
    operation = s3(method, path, query, host="my.bucket.s3.eu-west-1.amazonaws.com")
    assert operation.name == name
    assert operation.params["Bucket"] == "my.bucket"
    assert operation.params.get("Key") == key


def test_s3_parameters_and_resources() -> None:
    operation = s3(
        "PUT",
        "/bucket/dir/key",
        "partNumber=7&uploadId=up1",
        headers={"Content-Length": "5", "x-amz-meta-owner": "ci"},
    )
    assert operation.name == "UploadPart"
    assert operation.params["PartNumber"] == 7
    assert operation.params["UploadId"] == "up1"
    assert operation.params["ContentLength"] == 5
    assert operation.resources == ["arn:aws:s3:::bucket/dir/key"]

    copy = s3("PUT", "/dst/k", headers={"x-amz-copy-source": "/src/a%20b?versionId=1"})
    assert copy.params["CopySource"] == "/src/a%20b?versionId=1"
    assert copy.resources == ["arn:aws:s3:::dst/k", "arn:aws:s3:::src/a b"]

    put = s3("PUT", "/bucket/k", headers={"x-amz-meta-owner": "ci"}, body=None)
    assert put.params["Metadata"] == {"owner": "ci"}


def test_s3_delete_objects_reads_the_xml_body() -> None:
    body = (
        b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Object><Key>a.txt</Key></Object><Object><Key>b/c.txt</Key></Object>"
        b"<Quiet>true</Quiet></Delete>"
    )
    operation = s3("POST", "/bucket", "delete", body=body)
    assert operation.name == "DeleteObjects"
    assert operation.params["Delete"] == {
        "Objects": [{"Key": "a.txt"}, {"Key": "b/c.txt"}],
        "Quiet": True,
    }
    assert operation.resources == [
        "arn:aws:s3:::bucket",
        "arn:aws:s3:::bucket/a.txt",
        "arn:aws:s3:::bucket/b/c.txt",
    ]


def test_s3_access_point_host() -> None:
    operation = s3("GET", "/k", host=f"reports-{ACCOUNT}.s3-accesspoint.us-west-2.amazonaws.com")
    assert operation.name == "GetObject"
    assert operation.params["Bucket"] == f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint/reports"
    assert operation.resources == [f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint/reports/object/k"]


def test_s3_china_partition() -> None:
    request = RawRequest("GET", "b12.s3.cn-north-1.amazonaws.com.cn", "/k")
    operation = resolve(request, "s3", "cn-north-1")
    assert operation.resources == ["arn:aws-cn:s3:::b12/k"]


# --- query and json forms of the same service --------------------------------------


def test_cloudwatch_query_form() -> None:
    body = (
        b"Action=PutMetricData&Version=2010-08-01&Namespace=ci"
        b"&MetricData.member.1.MetricName=latency&MetricData.member.1.Value=1.5"
        b"&MetricData.member.1.Dimensions.member.1.Name=host"
        b"&MetricData.member.1.Dimensions.member.1.Value=a"
    )
    request = RawRequest("POST", "monitoring.us-east-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(request, "monitoring", "us-east-1")
    assert (operation.service, operation.name, operation.protocol) == (
        "cloudwatch",
        "PutMetricData",
        "query",
    )
    assert operation.params == {
        "Namespace": "ci",
        "MetricData": [
            {"MetricName": "latency", "Value": 1.5, "Dimensions": [{"Name": "host", "Value": "a"}]}
        ],
    }


def test_cloudwatch_json_and_cbor_forms() -> None:
    headers = {
        "X-Amz-Target": "GraniteServiceVersion20100801.ListMetrics",
        "Content-Type": "application/x-amz-json-1.0",
    }
    body = json.dumps({"Namespace": "AWS/EC2"}).encode()
    request = RawRequest("POST", "monitoring.us-east-1.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "monitoring", "us-east-1")
    assert (operation.name, operation.protocol) == ("ListMetrics", "json")
    assert operation.params == {"Namespace": "AWS/EC2"}

    cbor = RawRequest(
        "POST",
        "monitoring.us-east-1.amazonaws.com",
        "/service/GraniteServiceVersion20100801/operation/ListMetrics",
        "",
        {"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"},
        cbor2.dumps({"Namespace": "AWS/EC2"}),
    )
    operation = resolve(cbor, "monitoring", "us-east-1")
    assert (operation.name, operation.protocol) == ("ListMetrics", "smithy-rpc-v2-cbor")
    assert operation.params == {"Namespace": "AWS/EC2"}


QUEUE_URL = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/jobs"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:{ACCOUNT}:jobs"


def test_sqs_json_form() -> None:
    headers = {"X-Amz-Target": "AmazonSQS.SendMessage", "x-amzn-query-mode": "true"}
    body = json.dumps({"QueueUrl": QUEUE_URL, "MessageBody": "hi", "DelaySeconds": 5}).encode()
    request = RawRequest("POST", "sqs.us-east-1.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "sqs", "us-east-1")
    assert (operation.service, operation.name, operation.protocol) == ("sqs", "SendMessage", "json")
    assert operation.params["DelaySeconds"] == 5
    assert operation.resources == [QUEUE_ARN]


def test_sqs_query_form_from_an_old_sdk() -> None:
    body = (
        f"Action=SendMessageBatch&Version=2012-11-05&QueueUrl={QUEUE_URL}"
        "&SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=x"
        "&SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=y"
        "&SendMessageBatchRequestEntry.2.DelaySeconds=3"
    ).encode()
    request = RawRequest("POST", "sqs.us-east-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(request, "sqs", "us-east-1")
    assert (operation.name, operation.protocol) == ("SendMessageBatch", "query")
    assert operation.params["Entries"] == [
        {"Id": "a", "MessageBody": "x"},
        {"Id": "b", "MessageBody": "y", "DelaySeconds": 3},
    ]
    assert operation.resources == [QUEUE_ARN]


def test_sqs_query_form_in_the_query_string() -> None:
    query = f"Action=ReceiveMessage&QueueUrl={QUEUE_URL}&MaxNumberOfMessages=10"
    request = RawRequest("GET", "sqs.us-east-1.amazonaws.com", "/", query)
    operation = resolve(request, "sqs", "us-east-1")
    assert operation.name == "ReceiveMessage"
    assert operation.params["MaxNumberOfMessages"] == 10


# --- EC2, Lambda, DynamoDB, STS ---------------------------------------------------------


def test_ec2_run_instances() -> None:
    body = (
        b"Action=RunInstances&Version=2016-11-15&ImageId=ami-12345678&MinCount=1&MaxCount=3"
        b"&InstanceType=t3.micro&SubnetId=subnet-1"
        b"&TagSpecification.1.ResourceType=instance"
        b"&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=ci-runner"
        b"&SecurityGroupId.1=sg-1&SecurityGroupId.2=sg-2"
    )
    request = RawRequest("POST", "ec2.us-east-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(request, "ec2", "us-east-1", ACCOUNT)
    assert (operation.service, operation.name, operation.protocol) == (
        "ec2",
        "RunInstances",
        "ec2",
    )
    assert operation.params["MaxCount"] == 3
    assert operation.params["MinCount"] == 1
    assert operation.params["InstanceType"] == "t3.micro"
    assert operation.params["SecurityGroupIds"] == ["sg-1", "sg-2"]
    assert operation.params["TagSpecifications"] == [
        {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "ci-runner"}]}
    ]
    assert "arn:aws:ec2:us-east-1::image/ami-12345678" in operation.resources
    assert f"arn:aws:ec2:us-east-1:{ACCOUNT}:security-group/sg-2" in operation.resources


def test_ec2_terminate_instances_resources() -> None:
    body = b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2"
    request = RawRequest("POST", "ec2.eu-west-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(request, "ec2", "eu-west-1", ACCOUNT)
    assert operation.params == {"InstanceIds": ["i-1", "i-2"]}
    assert operation.resources == [
        f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-1",
        f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-2",
    ]


def test_lambda_invoke_with_an_arn_in_the_path() -> None:
    arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:deploy"
    path = "/2015-03-31/functions/" + arn.replace(":", "%3A") + "/invocations"
    headers = {"X-Amz-Invocation-Type": "Event"}
    request = RawRequest("POST", "lambda.us-east-1.amazonaws.com", path, "", headers, b"{}")
    operation = resolve(request, "lambda", "us-east-1")
    assert (operation.service, operation.name, operation.protocol) == (
        "lambda",
        "Invoke",
        "rest-json",
    )
    assert operation.params["FunctionName"] == arn
    assert operation.params["InvocationType"] == "Event"
    assert operation.resources == [arn]


def test_lambda_name_gives_an_arn_with_the_account() -> None:
    path = "/2015-03-31/functions/deploy:prod/configuration"
    request = RawRequest("GET", "lambda.eu-west-1.amazonaws.com", path)
    operation = resolve(request, "lambda", "eu-west-1", ACCOUNT)
    assert operation.name == "GetFunctionConfiguration"
    assert operation.resources == [f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:deploy"]


def test_dynamodb_put_item() -> None:
    headers = {
        "X-Amz-Target": "DynamoDB_20120810.PutItem",
        "Content-Type": "application/x-amz-json-1.0",
    }
    item = {"pk": {"S": "1"}}
    body = json.dumps({"TableName": "jobs", "Item": item}).encode()
    request = RawRequest("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "dynamodb", "us-east-1", ACCOUNT)
    assert (operation.service, operation.name) == ("dynamodb", "PutItem")
    assert operation.params == {"TableName": "jobs", "Item": item}
    assert operation.resources == [f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/jobs"]


def test_unsigned_global_endpoint_takes_the_partition_region() -> None:
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    request = RawRequest("POST", "sts.amazonaws.com", "/", "", FORM, body)
    assert resolve(request, None, None).region == "us-east-1"


def test_hostile_input_never_raises() -> None:
    """Truncated, flipped and random bodies and paths give an operation, never an exception."""
    rng = random.Random(7)
    seeds = [
        RawRequest("POST", "ec2.us-east-1.amazonaws.com", "/", "", FORM, b"Action=RunInstances"),
        RawRequest("POST", "s3.us-east-1.amazonaws.com", "/b12", "delete", {}, b"<Delete/>"),
        RawRequest(
            "POST",
            "dynamodb.us-east-1.amazonaws.com",
            "/",
            "",
            {"X-Amz-Target": "DynamoDB_20120810.PutItem"},
            b'{"TableName": "t"}',
        ),
        RawRequest(
            "POST",
            "monitoring.us-east-1.amazonaws.com",
            "/service/GraniteServiceVersion20100801/operation/PutMetricData",
            "",
            {"smithy-protocol": "rpc-v2-cbor"},
            cbor2.dumps({"Namespace": "n", "MetricData": [{"MetricName": "m"}]}),
        ),
    ]
    alphabet = "/%{}?&=.+:~-_aZ09\x00\u00fc"
    for _ in range(400):
        seed = rng.choice(seeds)
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        query = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        for variant in (
            dataclasses.replace(seed, body=(seed.body or b"")[: rng.randrange(40)]),
            dataclasses.replace(seed, body=body),
            dataclasses.replace(seed, path=path, query=query),
        ):
            operation = resolve(variant, None, None)
            assert isinstance(operation, Operation)


@pytest.mark.parametrize("host", ["sts.amazonaws.com", "sts.us-west-2.amazonaws.com"])
def test_sts_get_caller_identity(host: str) -> None:
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    operation = resolve(RawRequest("POST", host, "/", "", FORM, body), "sts", "us-west-2")
    assert (operation.service, operation.name, operation.protocol) == (
        "sts",
        "GetCallerIdentity",
        "query",
    )
    assert operation.region == "us-west-2"


def test_sts_assume_role_with_web_identity_unsigned() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/agent"
    body = (
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15"
        f"&RoleArn={role}&RoleSessionName=ci&WebIdentityToken=fake.jwt.value"
        "&DurationSeconds=3600"
    ).encode()
    request = RawRequest("POST", "sts.us-east-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(request, None, None)  # the SDK does not sign this call
    assert (operation.service, operation.name, operation.region) == (
        "sts",
        "AssumeRoleWithWebIdentity",
        "us-east-1",
    )
    assert operation.params["DurationSeconds"] == 3600
    assert operation.params["RoleArn"] == role
    assert operation.resources == [role]


# --- signing scope, other services, hostile input ---------------------------------------


def test_credential_scope_from_authorization_and_presigned_query() -> None:
    authorization = (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/sqs/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc"
    )
    assert credential_scope({"authorization": authorization}, "") == ("sqs", "eu-west-1")
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKID%2F20240101%2Fus-east-2%2Fs3%2Faws4_request"
    )
    assert credential_scope({}, query) == ("s3", "us-east-2")
    assert credential_scope({}, "") is None

    request = RawRequest("GET", "b12.s3.us-east-2.amazonaws.com", "/k", query)
    operation = resolve(request, None, None)
    assert (operation.name, operation.region, operation.signing_name) == (
        "GetObject",
        "us-east-2",
        "s3",
    )


def test_rest_json_query_and_header_parameters() -> None:
    path = "/2015-03-31/functions/"
    request = RawRequest("GET", "lambda.us-east-1.amazonaws.com", path, "MaxItems=5&Marker=m")
    operation = resolve(request, "lambda", "us-east-1")
    assert operation.name == "ListFunctions"
    assert operation.params == {"MaxItems": 5, "Marker": "m"}


def test_ssm_kms_secrets_and_iam_resources() -> None:
    def json_call(service: str, target: str, params: dict[str, object]) -> Operation:
        headers = {"X-Amz-Target": target}
        body = json.dumps(params).encode()
        request = RawRequest("POST", f"{service}.us-east-1.amazonaws.com", "/", "", headers, body)
        return resolve(request, service, "us-east-1", ACCOUNT)

    ssm = json_call("ssm", "AmazonSSM.GetParameter", {"Name": "/ci/token"})
    assert ssm.resources == [f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/ci/token"]
    kms = json_call("kms", "TrentService.Decrypt", {"CiphertextBlob": "AA==", "KeyId": "alias/ci"})
    assert kms.resources == [f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/ci"]
    secret_arn = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db-AbCdEf"
    secret = json_call("secretsmanager", "secretsmanager.GetSecretValue", {"SecretId": secret_arn})
    assert secret.resources == [secret_arn]
    by_name = json_call("secretsmanager", "secretsmanager.GetSecretValue", {"SecretId": "db"})
    assert by_name.resources == [f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db"]

    body = b"Action=GetRole&Version=2010-05-08&RoleName=deployer"
    iam = resolve(RawRequest("POST", "iam.amazonaws.com", "/", "", FORM, body), "iam", "us-east-1")
    assert iam.name == "GetRole"
    assert iam.resources == ["arn:aws:iam::*:role/deployer"]


def test_sns_topic_and_generic_catalogue() -> None:
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:alerts"
    body = f"Action=Publish&Version=2010-03-31&TopicArn={topic}&Message=hi".encode()
    request = RawRequest("POST", "sns.us-east-1.amazonaws.com", "/", "", FORM, body)
    assert resolve(request, "sns", "us-east-1").resources == [topic]

    headers = {"X-Amz-Target": "AWSStepFunctions.StartExecution"}
    machine = f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:deploy"
    body = json.dumps({"stateMachineArn": machine}).encode()
    request = RawRequest("POST", "states.us-east-1.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "states", "us-east-1")
    assert (operation.service, operation.name) == ("stepfunctions", "StartExecution")


@pytest.mark.parametrize(
    "request_",
    [
        RawRequest("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", {}, b"{}"),
        RawRequest(
            "POST",
            "dynamodb.us-east-1.amazonaws.com",
            "/",
            "",
            {"X-Amz-Target": "DynamoDB_20120810.DropEverything"},
            b"{}",
        ),
        RawRequest("GET", "evil.example.com", "/", "Action=GetCallerIdentity"),
        RawRequest("PATCH", "lambda.us-east-1.amazonaws.com", "/nowhere"),
        RawRequest(
            "POST",
            "monitoring.us-east-1.amazonaws.com",
            "/service/Other/operation/ListMetrics",
            "",
            {"smithy-protocol": "rpc-v2-cbor"},
            b"",
        ),
    ],
)
def test_unknown_requests(request_: RawRequest) -> None:
    signing = "dynamodb" if "dynamodb" in request_.host else None
    operation = resolve(request_, signing, "us-east-1")
    assert operation.name == Operation.UNKNOWN
    assert not operation.known


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-Amz-Target": "DynamoDB_20120810.PutItem"}, b"{not json"),
        ({"X-Amz-Target": "DynamoDB_20120810.PutItem"}, b"[1, 2]"),
        ({"X-Amz-Target": "DynamoDB_20120810.PutItem"}, b"\xff\xfe"),
        ({"X-Amz-Target": "DynamoDB_20120810.PutItem"}, None),
    ],
)
def test_malformed_json_body_keeps_the_operation(
    headers: dict[str, str], body: bytes | None
) -> None:
    request = RawRequest("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "dynamodb", "us-east-1")
    assert (operation.name, operation.params, operation.resources) == ("PutItem", {}, [])
    assert operation.unread


DYNAMODB_JSON = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "DynamoDB_20120810.DeleteTable",
}


@pytest.mark.parametrize(
    "body",
    [
        None,  # streamed
        b'{"TableName": "prod-ledger"}' + b" " * (1 << 20),  # over the parse limit
        # parsers differ on which repeated key wins: AWS may delete the other table
        b'{"TableName": "scratch", "TableName": "prod-ledger"}',
        b'{"Key": {"pk": {"S": "a"}, "pk": {"S": "b"}}, "TableName": "t"}',
    ],
)
def test_a_body_not_read_is_marked_unread(body: bytes | None) -> None:
    request = RawRequest("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", DYNAMODB_JSON, body)
    operation = resolve(request, "dynamodb", "us-east-1", ACCOUNT)
    assert (operation.name, operation.resources, operation.unread) == ("DeleteTable", [], True)


def test_a_readable_body_is_not_marked_unread() -> None:
    body = b'{"TableName": "prod-ledger"}'
    request = RawRequest("POST", "dynamodb.us-east-1.amazonaws.com", "/", "", DYNAMODB_JSON, body)
    operation = resolve(request, "dynamodb", "us-east-1", ACCOUNT)
    assert operation.resources == [f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/prod-ledger"]
    assert not operation.unread
    empty = RawRequest("POST", "sts.amazonaws.com", "/", "", FORM, b"")
    assert not resolve(empty, "sts", "us-east-1").unread


def test_a_thousand_keys_of_delete_objects_are_read() -> None:
    keys = [f"protected/{'k' * 100}-{i}" for i in range(1000)]
    body = (
        b"<Delete>"
        + b"".join(f"<Object><Key>{key}</Key></Object>".encode() for key in keys)
        + b"</Delete>"
    )
    assert len(body) > 64 << 10
    operation = s3("POST", "/data", "delete", body=body)
    assert not operation.unread
    assert f"arn:aws:s3:::data/{keys[-1]}" in operation.resources


def test_streamed_or_unparsable_delete_objects_are_unread() -> None:
    for body in (None, b"<Delete><Object><Key>a", b"<!DOCTYPE d><Delete/>"):
        operation = s3("POST", "/data", "delete", body=body)
        assert (operation.name, operation.unread) == ("DeleteObjects", True)
        assert operation.params == {"Bucket": "data"}  # the path still counts
    assert not s3("PUT", "/data/key", body=None).unread  # a blob payload is data


@pytest.mark.parametrize(
    ("path", "query", "headers", "body"),
    [
        # a JSON target and a query Action in the form body or in the query string
        ("/", "", {**FORM, "X-Amz-Target": "AmazonSQS.ListQueues"}, b"Action=DeleteQueue"),
        ("/", "Action=DeleteQueue", {"X-Amz-Target": "AmazonSQS.ListQueues"}, b"{}"),
        # a JSON target on a form body
        ("/", "", {**FORM, "X-Amz-Target": "AmazonSQS.ListQueues"}, b"QueueUrl=x"),
    ],
)
def test_an_operation_named_two_ways_is_unknown(
    path: str, query: str, headers: dict[str, str], body: bytes
) -> None:
    request = RawRequest("POST", "sqs.us-east-1.amazonaws.com", path, query, headers, body)
    assert not resolve(request, "sqs", "us-east-1").known


def test_differing_actions_in_query_and_form_are_unknown() -> None:
    """Which one STS obeys is unknown; the resolver must not pick the harmless one."""
    query = "Action=AssumeRoleWithWebIdentity&WebIdentityToken=x"
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    request = RawRequest("POST", "sts.amazonaws.com", "/", query, FORM, body)
    assert not resolve(request, "sts", "us-east-1").known
    same = RawRequest("POST", "sts.amazonaws.com", "/", "Action=GetCallerIdentity", FORM, body)
    assert resolve(same, "sts", "us-east-1").name == "GetCallerIdentity"
    # An S3 object that happens to be a form is data: no query API reads it.
    upload = s3("PUT", "/bucket/form.txt", headers=FORM, body=b"Action=a&Action=b")
    assert (upload.name, upload.unread) == ("PutObject", False)


def test_cloudwatch_named_two_ways_is_unknown() -> None:
    cbor_path = "/service/GraniteServiceVersion20100801/operation/DeleteAlarms"
    target = {"X-Amz-Target": "GraniteServiceVersion20100801.DescribeAlarms"}
    for path, query, headers in [
        (cbor_path, "", {"smithy-protocol": "rpc-v2-cbor", **target}),
        (cbor_path, "Action=DescribeAlarms", {"smithy-protocol": "rpc-v2-cbor"}),
        ("/", "", {**FORM, **target}),
    ]:
        request = RawRequest("POST", "monitoring.us-east-1.amazonaws.com", path, query, headers)
        assert not resolve(request, "monitoring", "us-east-1").known


def test_form_media_type_ignores_case() -> None:
    headers = {"Content-Type": "Application/X-WWW-Form-Urlencoded; Charset=UTF-8"}
    body = b"Action=DeleteUser&Version=2010-05-08&UserName=admin"
    request = RawRequest("POST", "iam.amazonaws.com", "/", "", headers, body)
    operation = resolve(request, "iam", "us-east-1", ACCOUNT)
    assert operation.params == {"UserName": "admin"}
    assert operation.resources == [f"arn:aws:iam::{ACCOUNT}:user/admin"]


def test_query_calls_away_from_the_root_path_are_unread() -> None:
    # SQS's legacy form names the queue in the path, where no parameter says it.
    request = RawRequest(
        "POST", "sqs.us-east-1.amazonaws.com", f"/{ACCOUNT}/prod-orders", "", FORM,
        b"Action=DeleteQueue&Version=2012-11-05",
    )  # fmt: skip
    operation = resolve(request, "sqs", "us-east-1", ACCOUNT)
    assert (operation.name, operation.unread) == ("DeleteQueue", True)
    streamed = RawRequest(
        "POST", "sqs.us-east-1.amazonaws.com", "/", "Action=DeleteQueue", FORM, None
    )
    assert resolve(streamed, "sqs", "us-east-1").unread


@pytest.mark.parametrize(
    "body",
    [
        b"<Delete><Object><Key>a",
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "y">]><Delete>&x;</Delete>',
        b"\x00\x01garbage",
    ],
)
def test_malformed_xml_body(body: bytes) -> None:
    operation = s3("POST", "/bucket", "delete", body=body)
    assert operation.name == "DeleteObjects"
    assert operation.params == {"Bucket": "bucket"}
    assert operation.unread


def test_malformed_cbor_and_query() -> None:
    cbor = RawRequest(
        "POST",
        "monitoring.us-east-1.amazonaws.com",
        "/service/GraniteServiceVersion20100801/operation/ListMetrics",
        "",
        {"smithy-protocol": "rpc-v2-cbor"},
        b"\xbf\xff\xff\x00garbage",
    )
    assert resolve(cbor, "monitoring", "us-east-1").params == {}
    body = b"Action=RunInstances&MaxCount=lots&TagSpecification.x.Tag=1&MinCount.1=2&%zz=%"
    query = RawRequest("POST", "ec2.us-east-1.amazonaws.com", "/", "", FORM, body)
    operation = resolve(query, "ec2", "us-east-1")
    assert operation.name == "RunInstances"
    assert operation.params["MaxCount"] == "lots"
