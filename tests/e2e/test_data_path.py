"""The data path end to end: real clients through a real mitmdump to moto with auth on."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e import harness
from tests.e2e.conftest import HERE, gateway_settings

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_sts_reports_the_gateway_identity(agent: dict[str, str], moto: harness.Moto) -> None:
    """The agent holds only minted credentials; upstream sees the gateway's IAM user."""
    expected = moto.client("sts").get_caller_identity()["Arn"]
    identity = harness.agent_client(agent, "sts").get_caller_identity()
    assert identity["Arn"] == expected
    assert identity["Arn"].endswith(":user/awsgate-gateway")


def test_aws_cli_get_caller_identity(agent: dict[str, str]) -> None:
    done = harness.aws_cli(agent, "sts", "get-caller-identity", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"].endswith(":user/awsgate-gateway")


def test_s3_object_round_trip(agent: dict[str, str], moto: harness.Moto) -> None:
    s3 = harness.agent_client(agent, "s3")
    bucket = unique("data")
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="dir/small object.bin", Body=body)
    got = s3.get_object(Bucket=bucket, Key="dir/small object.bin", ChecksumMode="ENABLED")
    assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(body).digest()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["dir/small object.bin"]
    # moto's own view agrees: the bytes are the object, not aws-chunked framing
    direct = moto.client("s3").get_object(Bucket=bucket, Key="dir/small object.bin")
    assert hashlib.sha256(direct["Body"].read()).digest() == hashlib.sha256(body).digest()
    s3.delete_object(Bucket=bucket, Key="dir/small object.bin")
    s3.delete_bucket(Bucket=bucket)
    assert bucket not in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]


def test_s3_multipart_upload_with_default_checksums(
    agent: dict[str, str], moto: harness.Moto, tmp_path: Path
) -> None:
    """25 MiB through upload_file: multipart, aws-chunked with CRC trailers, streamed."""
    s3 = harness.agent_client(agent, "s3")
    bucket = unique("multipart")
    s3.create_bucket(Bucket=bucket)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(25 * 1024 * 1024))
    s3.upload_file(str(source), bucket, "big.bin")
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "big.bin", str(target))
    assert (
        hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )
    head = moto.client("s3").head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == 25 * 1024 * 1024


def test_aws_cli_s3_copy_round_trip(agent: dict[str, str], tmp_path: Path) -> None:
    bucket = unique("cli")
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    for args in (
        ("s3", "mb", f"s3://{bucket}"),
        ("s3", "cp", str(source), f"s3://{bucket}/payload.bin"),
        ("s3", "cp", f"s3://{bucket}/payload.bin", str(tmp_path / "back.bin")),
        ("s3", "ls", f"s3://{bucket}/"),
    ):
        done = harness.aws_cli(agent, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_dynamodb_put_get(agent: dict[str, str], moto: harness.Moto) -> None:
    table = unique("table")
    moto.client("dynamodb").create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb = harness.agent_client(agent, "dynamodb")
    dynamodb.put_item(TableName=table, Item={"id": {"S": "a"}, "n": {"N": "7"}})
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": "a"}})["Item"]
    assert item == {"id": {"S": "a"}, "n": {"N": "7"}}


def test_sqs_send_receive(agent: dict[str, str]) -> None:
    sqs = harness.agent_client(agent, "sqs")
    url = sqs.create_queue(QueueName=unique("queue"))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello through awsgate")
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in messages] == ["hello through awsgate"]


def test_secretsmanager_create_get(agent: dict[str, str]) -> None:
    secrets = harness.agent_client(agent, "secretsmanager")
    name = unique("secret")
    secrets.create_secret(Name=name, SecretString="not-a-real-secret")
    assert secrets.describe_secret(SecretId=name)["Name"] == name


def test_ec2_describe(agent: dict[str, str]) -> None:
    assert "Reservations" in harness.agent_client(agent, "ec2").describe_instances()
    done = harness.aws_cli(agent, "ec2", "describe-regions", "--output", "json")
    assert done.returncode == 0, done.stderr


def test_lambda_list(agent: dict[str, str]) -> None:
    """moto runs with addons/devstack_moto.py's fix: moto 5.2.5 verifies bodiless requests
    (every Lambda GET) against a body nobody sent, refusing botocore's own signature."""
    assert "Functions" in harness.agent_client(agent, "lambda").list_functions()
    done = harness.aws_cli(agent, "lambda", "list-functions")
    assert done.returncode == 0, done.stderr


def test_agent_credentials_are_refused_by_aws(agent: dict[str, str], moto: harness.Moto) -> None:
    """The same call straight to moto with the agent's credentials fails: only the
    gateway's signature is accepted upstream."""
    with harness.environment(agent):
        minted = boto3.Session().get_credentials().get_frozen_credentials()
    sts = moto.client(
        "sts",
        access_key=minted.access_key,
        secret_key=minted.secret_key,
        aws_session_token=minted.token,
    )
    with pytest.raises(ClientError):
        sts.get_caller_identity()
    s3 = moto.client("s3", access_key="AKIAFAKEAGENTKEY0000", secret_key="fake")
    with pytest.raises(ClientError):
        s3.list_buckets()


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers.items()))
        body = b"plain upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def _serve(tls_dir: Path | None = None) -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    if tls_dir is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def test_non_aws_http_request_is_not_resigned(gateway: harness.Gateway) -> None:
    """An AWS-looking signature sent to another host passes through as it was."""
    server, port = _serve()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        signature = (
            "AWS4-HMAC-SHA256 Credential=AKIAAGENT/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=" + "0" * 64
        )
        conn.request("GET", f"http://127.0.0.1:{port}/x", headers={"Authorization": signature})
        answer = conn.getresponse()
        assert answer.status == 200 and answer.read() == b"plain upstream"
        assert _Recorder.seen[-1]["Authorization"] == signature
    finally:
        server.shutdown()


def test_non_aws_https_passes_through_without_interception(
    gateway: harness.Gateway, tmp_path: Path
) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    server, port = _serve(tmp_path)
    try:
        # Trusting only the server's own certificate proves the gateway did not intercept.
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, timeout=10, context=context)
        conn.set_tunnel("127.0.0.1", port)
        conn.request("GET", "/through")
        answer = conn.getresponse()
        assert answer.status == 200 and answer.read() == b"plain upstream"
    finally:
        server.shutdown()


def test_unsigned_request_is_refused_in_aws_shape(gateway: harness.Gateway) -> None:
    """No identity at all: an AWS-shaped 403 the CLI can print, and nothing forwarded."""
    env = harness.agent_env(gateway)
    client = boto3.client(
        "s3",
        region_name=harness.REGION,
        aws_access_key_id="AKIANOTFROMGATEWAY00",
        aws_secret_access_key="not-a-gateway-secret",
        config=Config(proxies={"https": env["HTTPS_PROXY"]}, retries={"max_attempts": 1}),
        verify=env["AWS_CA_BUNDLE"],
    )
    with pytest.raises(ClientError) as refused:
        client.list_buckets()
    error = refused.value.response["Error"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Code"] == "AccessDenied"
    assert error["Message"].startswith("awsgate:")


def test_presigned_url_through_the_gateway(agent: dict[str, str], tmp_path: Path) -> None:
    """A presigned GET made with minted credentials is verified, then re-signed as header
    auth (moto cannot verify presigned URLs itself). SigV2 URLs are refused."""
    s3 = harness.agent_client(agent, "s3", signature_version="s3v4")
    bucket = unique("presign")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="shared file+1.txt", Body=b"presigned bytes")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared file+1.txt"}, ExpiresIn=300
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": agent["HTTPS_PROXY"]}),
        urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=agent["AWS_CA_BUNDLE"])
        ),
    )
    with opener.open(url, timeout=30) as answer:
        assert answer.read() == b"presigned bytes"
    tampered = url.replace("X-Amz-Expires=300", "X-Amz-Expires=301")
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(tampered, timeout=30)
    assert refused.value.code == 403
    sigv2 = harness.agent_client(agent, "s3", signature_version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared file+1.txt"}, ExpiresIn=300
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(sigv2, timeout=30)
    assert b"presign with SigV4" in refused.value.read()


@pytest.fixture(scope="module")
def blocking_gateway(workdir: Path, moto: harness.Moto, idp) -> Iterator[harness.Gateway]:
    settings = gateway_settings(idp.url, HERE / "policies" / "base.yaml")
    settings["non_aws"] = "block"
    gateway = harness.Gateway.configure(workdir / "blocking-gateway", moto, settings)
    gateway.start(moto)
    yield gateway
    gateway.stop()


def test_non_aws_traffic_can_be_blocked(
    blocking_gateway: harness.Gateway, agent_token_file: Path
) -> None:
    """With non_aws: block, plain and tunnelled requests to other hosts are refused,
    while AWS calls still work."""
    server, port = _serve()
    try:
        seen = len(_Recorder.seen)
        conn = http.client.HTTPConnection("127.0.0.1", blocking_gateway.port, timeout=10)
        conn.request("GET", f"http://127.0.0.1:{port}/x")
        assert conn.getresponse().status == 403
        tunnel = http.client.HTTPConnection("127.0.0.1", blocking_gateway.port, timeout=10)
        tunnel.set_tunnel("127.0.0.1", port)
        with pytest.raises(OSError, match="403"):
            tunnel.request("GET", "/through")
        assert len(_Recorder.seen) == seen, "a blocked request reached the other host"
    finally:
        server.shutdown()
    env = harness.agent_env(blocking_gateway, token_file=agent_token_file)
    assert "Arn" in harness.agent_client(env, "sts").get_caller_identity()
