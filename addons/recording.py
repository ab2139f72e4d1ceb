"""Recording: every AWS call, allowed or not, goes to the record store.

An allowed call is written in two phases: its request part is committed
before the call is forwarded (an unrecorded action must not happen: when the
store cannot be written the call is refused), its outcome when the response
has passed masking. Calls the gateway answers itself (refusals, minted
sessions) are written in one step. Writes run on the store's own thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set
from typing import Any

from mitmproxy import exceptions, http

from addons import context, settings
from addons.context import GateContext
from addons.hooks import RequestStage, deny, fail_closed
from addons.store import db
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

logger = logging.getLogger("awsgate")


def decision_label(gate: GateContext) -> str:
    if gate.refusal is not None:
        return gate.refusal.kind
    if gate.decision is not None:
        return gate.decision.effect
    return "allow" if gate.principal is not None else "error"


def call_record(flow: http.HTTPFlow, gate: GateContext) -> CallRecord:
    request = flow.request
    principal, operation, decision = gate.principal, gate.operation, gate.decision
    peer = flow.client_conn.peername
    return CallRecord(
        request_id=gate.request_id,
        time=gate.started,
        decision=decision_label(gate),
        method=request.method,
        url=request.url,
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
        parameters=dict(operation.params) if operation else {},
        rule=decision.rule if decision else (gate.refusal.code if gate.refusal else None),
        message=gate.refusal.message if gate.refusal else None,
        approval_id=gate.approval_id,
        request_headers=list(request.headers.items(multi=True)),
        request_body=None if gate.streamed else request.raw_content,
        request_body_size=_length(request.headers),
    )


def call_outcome(flow: http.HTTPFlow, gate: GateContext, error: str | None = None) -> CallOutcome:
    response = flow.response
    forwarded = gate.signed and response is not None and gate.refusal is None
    streamed = bool(response is not None and response.stream)
    headers: list[Any] = list(response.headers.items(multi=True)) if response else []
    return CallOutcome(
        duration=max(0.0, (response.timestamp_end or 0) - gate.started) if response else 0.0,
        status=response.status_code if response else None,
        upstream_status=response.status_code if forwarded and response else None,
        upstream_request_id=_request_id(response.headers) if forwarded and response else None,
        decision=decision_label(gate),
        approval_id=gate.approval_id,
        error=error,
        masked=list(gate.masked),
        response_headers=headers,
        response_body=None if streamed or response is None else response.raw_content,
        response_body_size=_length(response.headers) if response else None,
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
        try:
            db.migrate(gateway_config.store)
        except db.StoreUnavailable as exc:
            raise exceptions.OptionsError(f"awsgate: store: {exc}") from exc
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
