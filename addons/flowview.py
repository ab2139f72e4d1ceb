"""What mitmproxy keeps of an AWS call: nothing the record may not keep.

mitmweb and the console keep every flow in memory, push its headers to their
UI after each of its hooks, and serve its bodies on demand; mitmdump prints
headers at ``response`` (``flow_detail`` 2). mitmproxy sends the flow's own
request and response, so the agent's bytes must be on the flow while they are
in flight, and only then:

- the agent's credentials (auth headers, presigned query) are taken off the
  flow as it arrives, before anything shows it; identity reads them from the
  context (``GateContext.agent_auth``), which drops them at the flow's end;
- once the request has left (its response starts) or the gateway answered it,
  the flow's request shows the record's copy: credential headers redacted,
  body masked;
- once the response has been handed to the agent's connection, the flow's
  response shows the record's copy of the body, and the context gives way to a
  plain summary (which mitmweb can save with the flow).

What a UI can still see, by mitmproxy's design: the request as it goes to AWS
is pushed once the request hooks are done, so the gateway's own signature for
that one call (and its session token, when the gateway runs on temporary
credentials) shows until the response starts; and a request body can be
fetched while the call is in flight (not while it is held for approval: the
approval addon takes the body off the flow meanwhile). Outputs that show a flow while it is in
flight or its response before the swap (bodies printed or saved, intercepts)
are refused at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Set
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons import context, settings
from addons.context import AgentAuth, GateContext
from addons.hooks import fail_closed
from addons.logjson import access_fields
from addons.store import sanitize

logger = logging.getLogger("awsgate")

# The agent's own credentials: taken off the flow on arrival. Other credential headers
# (SSE-C keys) must reach AWS as sent and signed; they are redacted once the request left.
AGENT_CREDENTIAL_HEADERS = frozenset({"authorization", "x-amz-security-token"})
_AGENT_FIELDS = frozenset(name.encode() for name in AGENT_CREDENTIAL_HEADERS)
_CREDENTIAL_FIELDS = frozenset(name.encode() for name in sanitize.CREDENTIAL_HEADERS)
_REDACTED_FIELD = sanitize.REDACTED.encode()
# Should a flow still be live when first checked, how often to look again, how long.
SEND_POLL = 0.01
SEND_WAIT = 600.0
_OUTPUT_OPTIONS = frozenset(
    {"flow_detail", "save_stream_file", "hardump", "proxy_debug", "intercept", "intercept_active"}
)


def leaky_outputs(options: Any) -> list[str]:
    """mitmproxy outputs that would show bodies or credentials the gateway must not leak."""
    problems = []
    if getattr(options, "flow_detail", 0) >= 3:
        problems.append("flow_detail >= 3 prints bodies (use 2 or less)")
    if getattr(options, "save_stream_file", None):
        problems.append("save_stream_file writes whole flows (use `awsgate sessions export`)")
    if getattr(options, "hardump", None):
        problems.append("hardump writes whole flows")
    if getattr(options, "proxy_debug", False):
        problems.append("proxy_debug logs raw connection data")
    if getattr(options, "intercept", None) and getattr(options, "intercept_active", True):
        problems.append("intercept shows signed requests and unmasked responses in flight")
    return problems


def take_agent_auth(request: http.Request) -> AgentAuth | None:
    """Take the agent's credentials off ``request``, keeping what identity must verify.

    Values are replaced, not removed, so the flow still shows they were sent.
    """
    fields, path = request.headers.fields, request.path
    redacted_headers = _redact_fields(request.headers, _AGENT_FIELDS)
    redacted_path = (sanitize.url(path) or path) if "?" in path else path
    if redacted_path != path:
        request.path = redacted_path
    elif not redacted_headers:
        return None
    return AgentAuth(fields, path)


def _redact_fields(headers: http.Headers, names: frozenset[bytes]) -> bool:
    """Replace the values of the fields named ``names`` in one pass; whether any was there."""
    fields = headers.fields
    if not any(name.lower() in names for name, _ in fields):
        return False
    headers.fields = tuple(
        (name, _REDACTED_FIELD if name.lower() in names else value) for name, value in fields
    )
    return True


def agent_request_head(flow: http.HTTPFlow, gate: GateContext) -> tuple[http.Headers, str, str]:
    """Headers, path and query as the agent signed them: the flow no longer shows its
    credentials."""
    auth = gate.agent_auth
    if auth is None:
        headers, raw_path = flow.request.headers, flow.request.path
    else:
        headers, raw_path = http.Headers(auth.header_fields), auth.path
    path, _, query = raw_path.partition("?")
    return headers, path, query


def redact_credential_headers(request: http.Request) -> None:
    """Replace credential header values on a request that has left (or never will)."""
    _redact_fields(request.headers, _CREDENTIAL_FIELDS)


def show_record_request(request: http.Request, gate: GateContext) -> None:
    """The request has left (or never will): the flow shows what the record keeps."""
    redact_credential_headers(request)
    if not gate.request_shown_as_recorded:
        gate.request_shown_as_recorded = True
        _show(request, gate.record_request_body)


def _show(message: http.Message, record_body: bytes | None) -> None:
    if message.raw_content is None or message.raw_content == record_body:
        return  # streamed (never held), or nothing masked
    # No record body (unparsable, or refused unread): an empty one.
    message.content = record_body or b""


def summary(flow: http.HTTPFlow, gate: GateContext) -> dict[str, Any]:
    """What stays in ``flow.metadata`` once the call is over: plain values, no secrets."""
    fields = access_fields(flow, gate)
    fields["request_id"] = gate.request_id
    return {key: value for key, value in fields.items() if value is not None}


class FlowView:
    """Placed right after scope: before identity reads credentials, before any display."""

    def configure(self, updated: Set[str]) -> None:
        if updated & _OUTPUT_OPTIONS or settings.OPTION in updated:
            problems = leaky_outputs(ctx.options)
            if problems:
                raise exceptions.OptionsError(
                    "awsgate: refusing to run with mitmproxy outputs that would show masked "
                    "values and credentials: " + "; ".join(problems)
                )

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None:
            gate.agent_auth = take_agent_auth(flow.request)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None and gate.forwarded:  # the request has left
            show_record_request(flow.request, gate)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        redact_credential_headers(flow.request)

    def _finish(self, flow: http.HTTPFlow) -> None:
        # mitmdump's dumper prints the headers after this hook; the bodies wait for
        # the rest of the chain (the record of a refused call reads its request).
        redact_credential_headers(flow.request)
        gate = context.find(flow)
        if gate is not None:
            deadline = time.monotonic() + SEND_WAIT
            loop = asyncio.get_running_loop()
            # mitmproxy writes the response out one loop turn after the last hook.
            loop.call_soon(loop.call_soon, _after_send, flow, gate, deadline)


def _after_send(flow: http.HTTPFlow, gate: GateContext, deadline: float) -> None:
    """Once mitmproxy has written the response out (the flow is no longer live), the flow
    shows the record's copy, and the context gives way to a summary.

    Should the flow stay live past the deadline (a stalled agent), the swap happens
    anyway: the agent then gets the record's copy, more masked, never less.
    """
    if context.find(flow) is not gate:
        return  # already done (an error after the response)
    if flow.live and time.monotonic() < deadline:
        asyncio.get_running_loop().call_later(SEND_POLL, _after_send, flow, gate, deadline)
        return
    try:
        show_record_request(flow.request, gate)
        if flow.response is not None:
            _show(flow.response, gate.record_response_body)
        flow.metadata[context.METADATA_KEY] = summary(flow, gate)
    except Exception as exc:  # the call is over: nothing to refuse; the type only (bodies)
        logger.error("awsgate: the flow could not show the record's copy: %s", type(exc).__name__)
