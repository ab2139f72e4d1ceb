"""What mitmproxy keeps of a call: credentials off the flow, the record's copies once sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mitmproxy import exceptions, hooks, http, io
from mitmproxy.test import taddons, tflow

from addons import context, flowview, settings
from addons.context import METADATA_KEY, GateContext
from addons.flowview import SEND_POLL, FlowView, agent_request_head, leaky_outputs

SIGNATURE = "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20260101/us-east-1/sts/aws4_request, x"
TOKEN = "token-0d6f3c8a-flowview"
PRESIGNED = (
    "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20260101"
    f"&X-Amz-Security-Token={TOKEN}&X-Amz-Signature=abc123&response-content-type=text%2Fplain"
)


def hooks_then_send(flow: http.HTTPFlow, hooks: Callable[[], None]) -> list[bytes | None]:
    """Run ``hooks`` on an event loop, then let mitmproxy "send" the response: the flow
    stays live for a few loop turns, then is not. Returns the response body while live."""
    while_live: list[bytes | None] = []

    async def main() -> None:
        hooks()
        for _ in range(3):
            await asyncio.sleep(SEND_POLL)
            while_live.append(flow.response.content if flow.response else None)
        flow.live = False
        await asyncio.sleep(3 * SEND_POLL)

    asyncio.run(main())
    return while_live


def aws_flow(path: str = "/", **headers: str) -> tuple[http.HTTPFlow, GateContext]:
    flow = tflow.tflow()
    flow.request.path = path
    for name, value in headers.items():
        flow.request.headers[name.replace("_", "-")] = value
    return flow, context.get(flow)


def test_agent_credentials_leave_the_flow_before_anything_shows_it() -> None:
    flow, gate = aws_flow(Authorization=SIGNATURE, X_Amz_Security_Token=TOKEN, X_Amz_Date="x")
    FlowView().requestheaders(flow)
    assert flow.request.headers["Authorization"] == "[redacted]"
    assert flow.request.headers["X-Amz-Security-Token"] == "[redacted]"
    assert flow.request.headers["X-Amz-Date"] == "x"  # not a credential: stays as sent
    headers, path, query = agent_request_head(flow, gate)
    assert headers["Authorization"] == SIGNATURE and headers["X-Amz-Security-Token"] == TOKEN
    assert (path, query) == ("/", "")


def test_presigned_query_credentials_leave_the_flow() -> None:
    flow, gate = aws_flow(PRESIGNED)
    FlowView().requestheaders(flow)
    assert TOKEN not in flow.request.path and "abc123" not in flow.request.path
    assert "response-content-type=text%2Fplain" in flow.request.path  # the rest as sent
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in flow.request.path
    _, path, query = agent_request_head(flow, gate)
    assert f"{path}?{query}" == PRESIGNED


def test_a_web_identity_token_in_the_query_leaves_the_flow() -> None:
    path = "/?Action=AssumeRoleWithWebIdentity&WebIdentityToken=header.payload.sig&Version=1"
    flow, gate = aws_flow(path)
    FlowView().requestheaders(flow)
    assert "header.payload.sig" not in flow.request.path
    _, _, query = agent_request_head(flow, gate)
    assert "WebIdentityToken=header.payload.sig" in query  # identity still validates it


def test_unsigned_requests_are_left_alone() -> None:
    flow, gate = aws_flow("/?Action=GetCallerIdentity")
    FlowView().requestheaders(flow)
    assert gate.agent_auth is None and flow.request.path == "/?Action=GetCallerIdentity"


def test_flows_outside_the_gateway_are_left_alone() -> None:
    flow = tflow.tflow()
    flow.request.headers["Authorization"] = SIGNATURE
    FlowView().requestheaders(flow)
    assert flow.request.headers["Authorization"] == SIGNATURE


def test_once_the_request_left_the_flow_shows_the_record_copy() -> None:
    flow, gate = aws_flow(Authorization="gateway signature")
    flow.request.content = b'{"SecretString": "s3cr3t"}'
    flow.request.headers["X-Amz-Server-Side-Encryption-Customer-Key"] = "customer key"
    gate.record_request_body = b'{"SecretString": "[masked]"}'
    gate.signed = True
    flow.response = tflow.tresp()
    FlowView().responseheaders(flow)
    assert flow.request.content == gate.record_request_body
    assert flow.request.headers["Authorization"] == "[redacted]"
    assert flow.request.headers["X-Amz-Server-Side-Encryption-Customer-Key"] == "[redacted]"


def test_a_body_the_record_does_not_keep_is_not_shown() -> None:
    flow, gate = aws_flow()
    flow.request.content = b"unparsed"
    gate.signed = True
    FlowView().responseheaders(flow)
    assert flow.request.raw_content == b""


def test_a_call_the_gateway_answered_keeps_its_request_until_the_chain_is_done() -> None:
    """mitmproxy emulates responseheaders for a response set in the request hook: the
    request never left, and the record of a refused call still reads it."""
    flow, _ = aws_flow(Authorization="agent signature")
    flow.request.content = b"Action=GetCallerIdentity"
    flow.response = tflow.tresp()  # a refusal
    FlowView().responseheaders(flow)
    assert flow.request.content == b"Action=GetCallerIdentity"
    hooks_then_send(flow, lambda: FlowView().response(flow))
    assert flow.request.content == b""  # then the record's copy: none for a refusal
    assert flow.request.headers["Authorization"] == "[redacted]"


def test_after_the_send_the_response_shows_the_record_copy_and_a_summary() -> None:
    flow, gate = aws_flow()
    flow.response = http.Response.make(200, b'{"SecretString": "for the agent"}')
    gate.record_response_body = b'{"SecretString": "[masked]"}'
    gate.request_id = "req-1"
    while_live = hooks_then_send(flow, lambda: FlowView().response(flow))
    assert while_live == [b'{"SecretString": "for the agent"}'] * 3  # what mitmproxy sends
    # then the record's copy, and the context gives way to plain values.
    assert flow.response.content == gate.record_response_body
    assert context.find(flow) is None
    assert flow.metadata[METADATA_KEY]["request_id"] == "req-1"
    assert flow.metadata[METADATA_KEY]["decision"] == "error"  # nobody identified


def test_a_finished_flow_can_be_saved_and_replayed(tmp_path: Path) -> None:
    flow, _ = aws_flow(Authorization=SIGNATURE)
    FlowView().requestheaders(flow)
    flow.response = tflow.tresp()
    hooks_then_send(flow, lambda: FlowView().response(flow))
    with open(tmp_path / "flows", "wb") as file:
        io.FlowWriter(file).add(flow)  # the live context would not serialise
    replayed = flow.copy()
    assert context.find(replayed) is None
    assert isinstance(context.get(replayed), GateContext)  # a replay starts afresh


def test_an_error_after_the_response_summarises_once() -> None:
    flow, _ = aws_flow()
    flow.response = tflow.tresp()
    addon = FlowView()

    def response_then_error() -> None:
        addon.response(flow)
        addon.error(flow)

    hooks_then_send(flow, response_then_error)
    assert isinstance(flow.metadata[METADATA_KEY], dict)


def test_a_failure_after_the_send_is_logged_by_type_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: http.Message, record_body: bytes | None) -> None:
        raise ValueError("quotes a body: s3cr3t")

    monkeypatch.setattr(flowview, "_show", broken)
    flow, _ = aws_flow()
    flow.response = tflow.tresp()
    hooks_then_send(flow, lambda: FlowView().response(flow))
    assert "ValueError" in caplog.text and "s3cr3t" not in caplog.text


# -- mitmproxy outputs -----------------------------------------------------------------

DEFAULTS = {
    "flow_detail": 1,
    "save_stream_file": None,
    "hardump": "",
    "proxy_debug": False,
    "intercept": None,
    "intercept_active": False,
}


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"flow_detail": 3}, "flow_detail"),
        ({"flow_detail": 4}, "flow_detail"),
        ({"save_stream_file": "flows.out"}, "save_stream_file"),
        ({"hardump": "flows.har"}, "hardump"),
        ({"proxy_debug": True}, "proxy_debug"),
        ({"intercept": "~q", "intercept_active": True}, "intercept"),
    ],
)
def test_leaky_outputs_are_named(options: dict[str, Any], problem: str) -> None:
    found = leaky_outputs(SimpleNamespace(**(DEFAULTS | options)))
    assert len(found) == 1 and problem in found[0]


def test_headers_only_output_and_an_inactive_intercept_are_allowed() -> None:
    options = DEFAULTS | {"flow_detail": 2, "intercept": "~q", "intercept_active": False}
    assert leaky_outputs(SimpleNamespace(**options)) == []


def test_configure_refuses_to_start_with_a_leaky_output(tmp_path: Path) -> None:
    config = tmp_path / "awsgate.yaml"
    config.write_text(yaml.safe_dump({"certs": str(tmp_path / "certs")}))
    addon = FlowView()
    with taddons.context() as tctx:
        tctx.options.add_option(settings.OPTION, str, str(config), "the awsgate config")
        tctx.options.add_option("flow_detail", int, 3, "as mitmdump's dumper has it")
        tctx.master.addons.add(addon)
        with pytest.raises(exceptions.OptionsError, match="flow_detail >= 3"):
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))


def test_credential_headers_are_redacted_on_flows_outside_the_gateway_too() -> None:
    flow = tflow.tflow(resp=True)
    flow.request.headers["Proxy-Authorization"] = "Basic token"
    FlowView().http_connect_error(flow)
    assert flow.request.headers["Proxy-Authorization"] == "[redacted]"
