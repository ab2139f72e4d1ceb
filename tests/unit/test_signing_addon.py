"""The signing addon: refusals before re-signing, and the agent's connection outliving the
upstream's."""

from __future__ import annotations

import asyncio
import hashlib

from mitmproxy import http
from mitmproxy.test import tflow

from addons import context
from addons.aws import sigv4
from addons.context import GateContext, Operation, Principal
from addons.signing import Signing


def test_the_agent_keeps_its_connection_and_the_closing_upstream_one_is_not_reused() -> None:
    flow = tflow.tflow(resp=True)
    context.get(flow)
    upstream = flow.response
    assert upstream is not None
    upstream.headers["Connection"] = "close"
    Signing().responseheaders(flow)
    assert flow.response is not None and "connection" not in flow.response.headers
    # mitmproxy's upstream side reads the response it parsed: it still sees the close.
    assert upstream.headers["connection"] == "close"


def test_flows_outside_the_gateway_are_left_alone() -> None:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    flow.response.headers["Connection"] = "close"
    Signing().responseheaders(flow)
    assert flow.response.headers["connection"] == "close"


class StubCredentials:
    def needs_network(self, role: str | None, subject: str) -> bool:
        return False

    def get(self, role: str | None, subject: str) -> sigv4.Credentials:
        return sigv4.Credentials("AKIDEXAMPLE", "not-a-real-secret-key")


def s3_flow(scheme: str, body: bytes, declared_sha256: str) -> tuple[http.HTTPFlow, GateContext]:
    flow = tflow.tflow()
    request = flow.request
    request.scheme, request.host, request.port = scheme, "s3.us-east-1.amazonaws.com", 443
    request.method, request.path = "PUT", "/bucket/key"
    request.headers["Host"] = "s3.us-east-1.amazonaws.com"
    request.headers["x-amz-content-sha256"] = declared_sha256
    request.content = body
    gate = context.get(flow)
    gate.operation = Operation("s3", "PutObject", "us-east-1", "s3")
    gate.principal = Principal("https://issuer.example", "agent-1")
    return flow, gate


def signed(flow: http.HTTPFlow, gate: GateContext) -> tuple[int | None, str]:
    signing = Signing()
    signing.credentials = StubCredentials()  # type: ignore[assignment]
    asyncio.run(signing.handle(flow, gate))
    response = flow.response
    return (response.status_code, response.text or "") if response else (None, "")


def test_plain_http_to_aws_is_refused_without_an_upstream() -> None:
    """Re-signed, it would cross the network in clear, session token and all."""
    flow, gate = s3_flow("http", b"data", hashlib.sha256(b"data").hexdigest())
    status, text = signed(flow, gate)
    assert status == 403 and "AWS is reached over HTTPS only" in text
    assert not gate.signed and "x-amz-security-token" not in flow.request.headers


def test_a_body_that_does_not_match_its_declared_hash_is_the_agents_error() -> None:
    flow, gate = s3_flow("https", b"data", hashlib.sha256(b"other").hexdigest())
    status, text = signed(flow, gate)
    assert status == 400 and "<Code>XAmzContentSHA256Mismatch</Code>" in text
    assert not gate.signed
    flow, gate = s3_flow("https", b"data", hashlib.sha256(b"data").hexdigest())
    assert signed(flow, gate) == (None, "") and gate.signed
