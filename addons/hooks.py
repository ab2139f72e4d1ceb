"""Hook plumbing shared by the gateway's addons: request stages and failing closed.

mitmproxy logs an exception raised by an addon and lets the flow continue,
which for a gateway means forwarding a request nobody checked. Every gateway
hook therefore runs under ``fail_closed``: an exception refuses the request
(or replaces the response) with an AWS-shaped error instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

from addons import context
from addons.aws import endpoints, errors
from addons.context import GateContext, Refusal

logger = logging.getLogger("awsgate")

Hook = Callable[[Any, http.HTTPFlow], Awaitable[None] | None]


def refuse(flow: http.HTTPFlow, refusal: Refusal) -> None:
    """Answer the flow with an AWS-shaped error and remember why, for the record."""
    gate = context.get(flow)
    gate.refusal = refusal
    protocol = wire_protocol(flow, gate)
    rendered = errors.render(
        protocol, refusal.status, refusal.code, refusal.message, gate.request_id
    )
    flow.request.stream = False
    flow.response = http.Response.make(rendered.status, rendered.body, rendered.headers)


def deny(flow: http.HTTPFlow, message: str, kind: str = "deny", status: int = 403) -> None:
    """Refuse with the protocol's access-denied code."""
    code = errors.access_denied_code(wire_protocol(flow, context.get(flow)))
    refuse(flow, Refusal(status, code, message, kind))


def wire_protocol(flow: http.HTTPFlow, gate: GateContext) -> str:
    """The protocol the request spoke, so its error parses (SQS speaks json and query)."""
    operation = gate.operation
    if operation is not None:
        return operation.protocol or errors.protocol_for(operation.service)
    endpoint = endpoints.classify_host(flow.request.host)
    return errors.protocol_for(endpoint.services[0] if endpoint and endpoint.services else None)


def split_path(request: http.Request) -> tuple[str, str]:
    """The raw path and query string as sent, but for the agent's credentials, which the
    flow no longer holds (``flowview.agent_request_head`` has what the agent signed)."""
    path, _, query = request.path.partition("?")
    return path, query


def fail_closed(hook: Hook) -> Hook:
    """Turn an exception in ``hook`` into a refusal of the flow (or of its response).

    ``hook`` may be a coroutine function or a plain one that returns an awaitable
    only when it has work to do (a stage that does not apply costs no coroutine);
    either way the exception is caught where it happens.
    """

    def on_error(addon: Any, flow: http.HTTPFlow, exc: BaseException) -> None:
        name = f"{type(addon).__name__.lower()}.{hook.__name__}"
        # Frames only: an exception's message may quote a token or a body.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        logger.error("awsgate: internal error in %s: %s\n%s", name, type(exc).__name__, frames)
        message = f"awsgate: internal error in {name}; refused"
        # Replacing the response also covers a failing response hook: the
        # unmasked upstream body never reaches the agent.
        try:
            refuse(flow, Refusal(500, "InternalFailure", message, "error"))
        except Exception:
            logger.exception("awsgate: could not render the refusal; dropping the connection")
            flow.kill()

    async def guard(addon: Any, flow: http.HTTPFlow, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception as exc:
            on_error(addon, flow, exc)

    @functools.wraps(hook)
    def guarded(addon: Any, flow: http.HTTPFlow) -> Awaitable[None] | None:
        try:
            result = hook(addon, flow)
        except Exception as exc:
            on_error(addon, flow, exc)
            return None
        return guard(addon, flow, result) if inspect.isawaitable(result) else None

    return guarded


class RequestStage:
    """An addon step that runs once per AWS request, as early as the body allows.

    Streamed requests (large uploads) have sent their body upstream by the time
    the ``request`` hook runs, so their whole decision happens in
    ``requestheaders``; buffered requests wait for the body in ``request``.
    Subclasses implement ``handle``; it is skipped once the flow has a response
    (refused, or answered by the gateway itself), or when ``applies`` says the
    stage has nothing to do for this call.
    """

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        raise NotImplementedError

    def applies(self, gate: GateContext) -> bool:
        return True

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._stage(flow, streamed_phase=True)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._stage(flow, streamed_phase=False)

    def _stage(self, flow: http.HTTPFlow, streamed_phase: bool) -> Awaitable[None] | None:
        gate = context.find(flow)
        if (
            gate is None
            or gate.streamed != streamed_phase
            or flow.response is not None
            or not self.applies(gate)
        ):
            return None
        return self.handle(flow, gate)


class ForwardGuard:
    """Last in the request chain: nothing unsigned leaves the gateway.

    Every gateway hook already fails closed; this catches the rest (a stage
    skipped by a logic error): an AWS flow that reaches the end of its request
    phase without a response and without the signing addon's mark is refused.
    """

    def _check(self, flow: http.HTTPFlow, phase_streamed: bool) -> None:
        gate = context.find(flow)
        if gate is None or gate.streamed != phase_streamed or flow.response is not None:
            return
        if not gate.signed:
            refuse(
                flow,
                Refusal(
                    500, "InternalFailure", "awsgate: request was not signed; refused", "error"
                ),
            )

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow, phase_streamed=True)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        self._check(flow, phase_streamed=False)
