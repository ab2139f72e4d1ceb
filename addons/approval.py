"""Approval: a call a rule sends for review is held open until a human decides.

The held call waits on the event loop without blocking anything else: store
reads and writes run in worker threads, and one poller reads the state of
every held request twice a second (approvers decide from other processes:
the CLI, the approval page, other replicas). Approved in time, the call goes
on to signing (which re-signs with a fresh date); denied, it is refused with
the approver and the reason; undecided after ``approvals.wait``, it is refused
with the approval id and the command that approves it, and its retry passes
once the request is approved. An SDK retry of a held call (same
``amz-sdk-invocation-id``) joins the request it already waits for.

Review never means allow: any failure here refuses the call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Set
from dataclasses import dataclass, field
from datetime import timedelta

from mitmproxy import connection, exceptions, http
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from addons import settings
from addons.config import ApprovalsConfig
from addons.context import Decision, GateContext
from addons.hooks import RequestStage, deny
from addons.notify import Notifier, approve_command, link
from addons.store import approvals, db
from addons.store.approvals import ApprovalRequest

logger = logging.getLogger("awsgate")

POLL_INTERVAL = 0.5  # seconds between reads of the held requests' state
SWEEP_INTERVAL = 30.0  # seconds between expiring stale requests and marking lost holds
INVOCATION_HEADER = "amz-sdk-invocation-id"


@dataclass(eq=False)
class _Waiter:
    """One held call: resolved with the request once decided, or None if the agent hung up."""

    client: connection.Client
    future: asyncio.Future[ApprovalRequest | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Approval(RequestStage):
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.config = ApprovalsConfig()
        self.notifier = Notifier(())
        # Names this process in the store, so holds it leaves behind can be found.
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.waiters: dict[str, set[_Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        try:
            engine = db.open_engine(gateway_config.store)
            approvals.sweep(engine)
        except (db.StoreUnavailable, SQLAlchemyError) as exc:
            raise exceptions.OptionsError(f"awsgate: store (approvals): {exc}") from exc
        if self.engine is not None:
            self.engine.dispose()
        self.engine = engine
        self.config = gateway_config.approvals
        self.notifier.close(timeout=1)
        self.notifier = Notifier(self.config.webhooks, self.config.public_url)

    def running(self) -> None:
        self._start_poller()

    def done(self) -> None:
        # Synchronous, like Policy.done: mitmproxy may call it from sync code.
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self.engine is not None:
            try:
                lost = approvals.release_holder(self.engine, self.holder)
            except SQLAlchemyError as exc:
                logger.error("awsgate: could not mark held calls as lost: %s", db.reason(exc))
            else:
                if lost:
                    logger.warning("awsgate: %d held call(s) lost as the gateway stops", lost)
            self.engine.dispose()
        self.notifier.close(timeout=2)

    def applies(self, gate: GateContext) -> bool:
        decision = gate.decision
        return decision is not None and decision.effect == "review"

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        decision = gate.decision
        assert self.engine is not None and decision is not None
        assert gate.principal is not None and gate.operation is not None
        body = flow.request.raw_content
        call = approvals.held_call(
            gate.request_id,
            gate.principal,
            gate.operation,
            decision,
            gate.record_params,  # masked by RequestMasking, earlier in the chain
            flow.request.headers.get(INVOCATION_HEADER),
            None if body is None else hashlib.sha256(body).hexdigest(),
        )
        started = time.monotonic()
        # While a human decides, the flow mitmweb shows holds no body (it may carry
        # secrets the record masks); the call takes it back when it goes on.
        if body is not None:
            flow.request.raw_content = b""
        try:
            await self._settle(flow, gate, call)
        finally:
            flow.request.raw_content = body
            gate.timings["approval"] = time.monotonic() - started

    async def _settle(
        self, flow: http.HTTPFlow, gate: GateContext, call: approvals.HeldCall
    ) -> None:
        try:
            admission = await asyncio.to_thread(
                approvals.admit,
                self.engine,
                call,
                expire=timedelta(seconds=self.config.expire),
                holder=self.holder,
                hold=timedelta(seconds=self.config.wait),
            )
        except (SQLAlchemyError, db.StoreUnavailable) as exc:
            logger.error("awsgate: cannot open an approval request: %s", db.reason(exc))
            message = f"awsgate: approvals cannot be stored ({db.reason(exc)}); refused"
            deny(flow, message, kind="error", status=503)
            return
        request = admission.approval
        gate.approval_id = request.id
        if admission.created:
            logger.warning(
                "awsgate: %s holds %s for approval by rule %r: %s",
                request.id,
                request.principal,
                request.rule,
                request.action,
            )
            self.notifier.created(request)
        if admission.verdict == "pass":
            how = f"grant {admission.grant}" if admission.grant else "its approval"
            logger.info("awsgate: %s passes on %s (%s)", call.action, request.id, how)
            return
        if admission.verdict == "refuse":
            deny(flow, denied_message(request), kind="review")
            return
        await self._hold(flow, gate, request)

    async def _hold(self, flow: http.HTTPFlow, gate: GateContext, request: ApprovalRequest) -> None:
        """Wait for a decision on ``request``, then let the call on or refuse it."""
        waiter = _Waiter(flow.client_conn)
        self.waiters.setdefault(request.id, set()).add(waiter)
        self._start_poller()
        try:
            decided = await asyncio.wait_for(waiter.future, self.config.wait)
        except TimeoutError:
            await self._end_hold(request.id, approvals.TIMED_OUT)
            assert gate.decision is not None
            deny(flow, timeout_message(gate.decision, request, self.config), kind="review")
            return
        finally:
            held = self.waiters.get(request.id)
            if held is not None:
                held.discard(waiter)
                if not held:
                    del self.waiters[request.id]
        if decided is None:
            await self._end_hold(request.id, approvals.ABANDONED)
            deny(flow, f"awsgate: the caller left while {request.id} was pending", "review")
            return
        if decided.status == approvals.APPROVED:
            consumed = await asyncio.to_thread(
                approvals.consume, self.engine, decided.id, gate.request_id
            )
            if consumed:
                await self._end_hold(request.id, approvals.FORWARDED)
                logger.warning(
                    "awsgate: %s approved by %s; the held call goes on",
                    decided.id,
                    decided.decided_by,
                )
                return
            # Another call took it (an identical call held elsewhere): say so.
            decided = await asyncio.to_thread(approvals.get, self.engine, decided.id) or decided
        await self._end_hold(request.id, approvals.REFUSED)
        deny(flow, denied_message(decided), kind="review")

    async def _end_hold(self, approval_id: str, state: str) -> None:
        try:
            await asyncio.to_thread(
                approvals.end_hold, self.engine, approval_id, self.holder, state
            )
        except SQLAlchemyError as exc:  # bookkeeping only: the call's fate is already decided
            logger.error(
                "awsgate: could not record how %s's hold ended: %s", approval_id, db.reason(exc)
            )

    # --- one poller for every held call ---

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                if self.waiters:
                    await self._poll()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                    await asyncio.to_thread(approvals.sweep, self.engine)
            except SQLAlchemyError as exc:  # held calls time out and are refused meanwhile
                logger.error("awsgate: cannot read approvals: %s", db.reason(exc))
            except Exception:
                logger.exception("awsgate: approval poller error")

    async def _poll(self) -> None:
        current = await asyncio.to_thread(approvals.current, self.engine, list(self.waiters))
        for approval_id, waiters in list(self.waiters.items()):
            request = current.get(approval_id)
            for waiter in list(waiters):
                if waiter.future.done():
                    continue
                if not waiter.client.connected:
                    waiter.future.set_result(None)
                elif request is not None and request.status != approvals.PENDING:
                    waiter.future.set_result(request)


def denied_message(request: ApprovalRequest) -> str:
    """Why a reviewed call is refused after a decision (or a used or expired request)."""
    if request.status == approvals.DENIED:
        return (
            f"awsgate: denied by approver {request.decided_by} ({request.reason}); "
            f"approval {request.id} for rule {request.rule!r}"
        )
    if request.status == approvals.USED:
        return (
            f"awsgate: approval {request.id} for rule {request.rule!r} was already used by "
            "another call; retry to request a new approval"
        )
    return (
        f"awsgate: approval {request.id} for rule {request.rule!r} is {request.status}; "
        "retry to request a new approval"
    )


def timeout_message(decision: Decision, request: ApprovalRequest, config: ApprovalsConfig) -> str:
    """The refusal of a call nobody decided in time: the rule, how to approve it, then retry."""
    page = link(config.public_url, request.id)
    where = f" or at {page}" if page else ""
    return (
        f"{decision.message}; no decision within {config.wait:g}s. Approval {request.id} is "
        f"pending: approve it with '{approve_command(request.id)}'{where}, then retry the same call"
    )
