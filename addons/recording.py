"""Recording: every AWS call, allowed or not, goes to the record store.

An allowed call is written in two phases: its request part is committed
before the call is forwarded (an unrecorded action must not happen: when the
store cannot be written the call is refused), its outcome when the response
has passed masking. Calls the gateway answers itself (refusals, minted
sessions) are written in one step. Writes run on the store's own thread.

What is stored of the bodies and parameters is the masking addon's copy for
the record (``GateContext.record_*``), never the wire bytes. Streamed bodies
are never held: they are hashed as they pass, and stored as size and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Set
from typing import Any

from mitmproxy import http

from addons import context, settings
from addons.aws import operations
from addons.context import GateContext, Operation
from addons.flowview import agent_request_head
from addons.hooks import RequestStage, deny, fail_closed
from addons.store import db
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

logger = logging.getLogger("awsgate")

Stream = Callable[[bytes], bytes | Iterable[bytes]]


class BodyDigest:
    """A pass-through ``stream`` callable that measures and hashes the body as it streams.

    It wraps whatever stream transformer is already set (``inner``) rather
    than replacing it. ``hash_output`` hashes what ``inner`` emits (the body
    the agent receives) instead of what it is given (the body the agent sent).
    """

    def __init__(self, inner: Stream | None = None, hash_output: bool = False) -> None:
        self.inner = inner
        self.hash_output = hash_output
        self.size = 0
        self._sha256 = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def __call__(self, data: bytes) -> bytes | Iterable[bytes]:
        if not self.hash_output:
            self._update(data)
        if self.inner is None:
            if self.hash_output:
                self._update(data)
            return data
        chunks = self.inner(data)
        if not self.hash_output:
            return chunks
        chunks = [chunks] if isinstance(chunks, bytes) else list(chunks)
        for chunk in chunks:
            self._update(chunk)
        return chunks

    def _update(self, data: bytes) -> None:
        self._sha256.update(data)
        self.size += len(data)


def digest_stream(message: http.Message, hash_output: bool) -> None:
    """Hash ``message``'s body while it streams, keeping any transformer already set
    (a chunk re-signer stays reachable as ``inner``)."""
    stream = message.stream
    if not stream or isinstance(stream, BodyDigest):
        return
    message.stream = BodyDigest(stream if callable(stream) else None, hash_output)


def streamed_digest(message: http.Message | None) -> BodyDigest | None:
    stream = message.stream if message is not None else None
    return stream if isinstance(stream, BodyDigest) else None


def agent_url(flow: http.HTTPFlow) -> str:
    """The URL as the agent addressed it: AWS's name, even once routed to an upstream."""
    request = flow.request
    host = request.host_header
    if not host:
        return request.url
    scheme = "https" if flow.client_conn.tls_established else "http"
    return f"{scheme}://{host}{request.path}"


def attempted_operation(flow: http.HTTPFlow, gate: GateContext) -> Operation | None:
    """What a call refused before it was resolved (a refused identity) tried to do.

    Only its action, region and resources are recorded: its parameters were
    never masked, so they are left out.
    """
    request = flow.request
    headers, path, query = agent_request_head(flow, gate)
    raw = operations.RawRequest(
        request.method, request.host, path, query, headers,
        None if gate.streamed else request.raw_content,
    )  # fmt: skip
    service, region = gate.credential_scope or (None, None)
    try:
        return operations.resolve(raw, service, region)
    except Exception:  # the record of the refusal matters more than naming its action
        logger.exception("awsgate: could not resolve a refused call for its record")
        return None


def call_record(flow: http.HTTPFlow, gate: GateContext) -> CallRecord:
    request = flow.request
    principal, decision = gate.principal, gate.decision
    operation = gate.operation or attempted_operation(flow, gate)
    peer = flow.client_conn.peername
    size = _length(request.headers) if gate.streamed else len(request.raw_content or b"")
    return CallRecord(
        request_id=gate.request_id,
        time=gate.started,
        decision=gate.outcome,
        method=request.method,
        url=agent_url(flow),
        http_version=request.http_version,
        source=f"{peer[0]}:{peer[1]}" if peer else None,
        session_id=principal.session_id if principal else None,
        issuer=principal.issuer if principal else None,
        subject=principal.subject if principal else None,
        groups=sorted(principal.groups) if principal else [],
        role=principal.role if principal else None,
        service=operation.service if operation else None,
        operation=operation.name if operation else None,
        region=operation.region if operation else None,
        resources=list(operation.resources) if operation else [],
        parameters=dict(gate.record_params),
        rule=decision.rule if decision else (gate.refusal.code if gate.refusal else None),
        message=gate.refusal.message if gate.refusal else None,
        approval_id=gate.approval_id,
        request_headers=list(request.headers.items(multi=True)),
        request_body=gate.record_request_body,
        request_body_size=None if gate.record_request_body is not None else size,
    )


def call_outcome(flow: http.HTTPFlow, gate: GateContext, error: str | None = None) -> CallOutcome:
    response = flow.response
    forwarded = gate.forwarded and response is not None
    ended = (response.timestamp_end if response else None) or time.time()
    sent, received = streamed_digest(flow.request), streamed_digest(response)
    if received is not None:
        size: int | None = received.size
    elif response is not None and gate.record_response_body is None:
        size = len(response.raw_content or b"")
    else:
        size = None
    return CallOutcome(
        duration=max(0.0, ended - gate.started),
        status=response.status_code if response else None,
        upstream_status=response.status_code if forwarded and response else None,
        upstream_request_id=_request_id(response.headers) if forwarded and response else None,
        decision=gate.outcome,
        approval_id=gate.approval_id,
        error=error,
        masked=list(gate.masked),
        response_headers=list(response.headers.items(multi=True)) if response else [],
        response_body=gate.record_response_body if response else None,
        response_body_size=size,
        response_body_sha256=received.sha256 if received else None,
        request_body_size=sent.size if sent else None,
        request_body_sha256=sent.sha256 if sent else None,
    )


def _request_id(headers: http.Headers) -> str | None:
    return headers.get("x-amzn-requestid") or headers.get("x-amz-request-id")


def _length(headers: http.Headers) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


class Recording(RequestStage):
    """Placed after signing: the request part is committed before the call leaves."""

    def __init__(self) -> None:
        self.writer: RecordWriter | None = None

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        if self.writer is not None:
            self.writer.close()
        self.writer = RecordWriter(gateway_config.store)

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close(timeout=10)

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        assert self.writer is not None
        try:
            await asyncio.wrap_future(self.writer.begin(call_record(flow, gate)))
        except db.StoreUnavailable as exc:
            gate.signed = False
            deny(
                flow, f"awsgate: the record store cannot be written ({exc}); refused", "error", 503
            )
            return
        gate.recorded = True
        digest_stream(flow.request, hash_output=False)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # After masking, which decides whether the response streams.
        if context.find(flow) is not None and flow.response is not None:
            digest_stream(flow.response, hash_output=True)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._complete(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._complete(flow, error=flow.error.msg if flow.error else "connection failed")

    def _complete(self, flow: http.HTTPFlow, error: str | None = None) -> None:
        gate = context.find(flow)
        if gate is None or self.writer is None:
            return
        outcome = call_outcome(flow, gate, error)
        if gate.recorded:
            future = self.writer.finish(gate.request_id, outcome)
        else:
            future = self.writer.record(call_record(flow, gate), outcome)
        future.add_done_callback(_log_failure)


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        logger.error("awsgate: a call's record could not be completed: %s", exc)
