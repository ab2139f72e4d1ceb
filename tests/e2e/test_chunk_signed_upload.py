"""S3 uploads with per-chunk signatures (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) are re-signed
chunk by chunk as they stream through the gateway. No stock SDK sends this form over
HTTPS, so the agent side is built here from the SigV4 chunk rules."""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import uuid
from datetime import UTC, datetime

import boto3
import pytest

from addons.aws import chunked, sigv4
from tests.e2e import harness

pytestmark = pytest.mark.e2e

HOST = "s3.us-east-1.amazonaws.com"
CHUNK = 64 * 1024


def framed(data: bytes, chain: chunked.ChunkChain) -> bytes:
    out = bytearray()
    for start in range(0, len(data), CHUNK):
        piece = data[start : start + CHUNK]
        signature = chain.chunk(hashlib.sha256(piece).hexdigest())
        out += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + piece + b"\r\n"
    out += f"0;chunk-signature={chain.chunk(sigv4.EMPTY_SHA256)}\r\n\r\n".encode()
    return bytes(out)


def send_chunk_signed(agent: dict[str, str], bucket: str, data: bytes) -> int | None:
    """PUT ``data`` chunk-signed as an agent would; returns the status, None if dropped."""
    with harness.environment(agent):
        minted = boto3.Session().get_credentials().get_frozen_credentials()
    creds = sigv4.Credentials(minted.access_key, minted.secret_key, minted.token)
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    path = f"/{bucket}/chunked.bin"
    headers = [
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", str(len(data))),
    ]
    now = datetime.now(UTC)
    signer = sigv4.Signer()
    signed = signer.sign(creds, "PUT", HOST, path, "", headers, mode, "us-east-1", "s3", now)
    amz_date = signed["X-Amz-Date"]
    key = sigv4.signing_key(creds.secret_key, amz_date[:8], "us-east-1", "s3")
    seed = signed["Authorization"].rpartition("Signature=")[2]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    body = framed(data, chunked.ChunkChain(key, amz_date, scope, seed))

    context = ssl.create_default_context(cafile=agent["AWS_CA_BUNDLE"])
    proxy_port = int(agent["HTTPS_PROXY"].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=30, context=context)
    conn.set_tunnel(HOST, 443)
    conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
    for name, value in [("Host", HOST), *headers, *signed.items()]:
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    try:
        conn.send(body)
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return None


def test_chunk_signed_upload_round_trips(agent: dict[str, str], moto: harness.Moto) -> None:
    bucket = f"chunked-{uuid.uuid4().hex[:8]}"
    harness.agent_client(agent, "s3").create_bucket(Bucket=bucket)
    data = os.urandom(3 * CHUNK + 1234)
    assert send_chunk_signed(agent, bucket, data) == 200
    stored = moto.client("s3").get_object(Bucket=bucket, Key="chunked.bin")["Body"].read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
