"""The approval addon on mitmproxy test flows with a real SQLite store: hold, decide, refuse."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.connection import ConnectionState
from mitmproxy.http import HTTPFlow
from mitmproxy.test import tflow
from sqlalchemy import Engine

from addons import approval, context
from addons.config import ApprovalsConfig
from addons.context import Decision, Operation, Principal
from addons.store import approvals
from addons.store.db import migrate, open_engine

ISSUER = "http://127.0.0.1:1"
AGENT = Principal(ISSUER, "agent-1", frozenset({"agents"}), "agent", "s-1")
ALICE = Principal(ISSUER, "alice", frozenset({"sre"}))
REVIEW = Decision(
    "review",
    "deletes-need-review",
    "awsgate: review required by rule 'deletes-need-review'",
    ("group:sre",),
)
WAIT = 3.0  # a test that expects a decision never waits this out


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, as mitmproxy runs the addon on its own."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    engine = open_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def addon(engine: Engine) -> Iterator[approval.Approval]:
    stage = approval.Approval()
    stage.engine = engine
    stage.config = ApprovalsConfig(wait=WAIT, public_url="https://gate.example")
    yield stage
    stage.done()


def held_flow(bucket: str = "logs", effect: str = "review", invocation: str = "inv-1") -> HTTPFlow:
    flow = tflow.tflow()
    flow.request.headers["amz-sdk-invocation-id"] = invocation
    gate = context.get(flow)
    gate.principal = AGENT
    gate.operation = Operation(
        "s3", "DeleteBucket", "us-east-1", "s3", "rest-xml", {"Bucket": bucket},
        [f"arn:aws:s3:::{bucket}"],
    )  # fmt: skip
    gate.decision = REVIEW if effect == "review" else Decision("allow", "agents")
    return flow


async def pending(engine: Engine) -> approvals.ApprovalRequest:
    for _ in range(100):
        found = await asyncio.to_thread(approvals.list_requests, engine, "pending")
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no pending request")


async def decide(engine: Engine, approval_id: str, approve: bool, reason: str = "ok") -> None:
    await asyncio.to_thread(
        approvals.decide, engine, approval_id, ALICE, approve=approve, reason=reason, via="test",
        grant_window=timedelta(minutes=5),
    )  # fmt: skip


def message(flow: HTTPFlow) -> str:
    assert flow.response is not None
    return flow.response.get_text() or ""


@in_loop
async def test_an_approved_call_goes_on_while_others_are_not_held(
    addon: approval.Approval, engine: Engine
) -> None:
    flow = held_flow()
    flow.request.content = b'{"SecretString": "s3cr3t"}'
    holding = asyncio.create_task(addon.handle(flow, context.get(flow)))
    request = await pending(engine)
    assert flow.request.raw_content == b""  # what mitmweb could show while a human decides
    # An allowed call passes straight through while the first one waits.
    other = held_flow("other", effect="allow")
    assert addon.request(other) is None  # nothing to wait for
    assert other.response is None and not holding.done()

    await decide(engine, request.id, approve=True)
    await asyncio.wait_for(holding, WAIT)
    assert flow.response is None  # not refused: signing takes it from here
    assert flow.request.content == b'{"SecretString": "s3cr3t"}'  # and the body goes on
    gate = context.get(flow)
    assert gate.approval_id == request.id and "approval" in gate.timings
    stored = approvals.get(engine, request.id)
    assert stored is not None and (stored.status, stored.hold) == ("used", "forwarded")
    assert stored.used_by == gate.request_id


@in_loop
async def test_a_denied_call_is_refused_with_approver_and_reason(
    addon: approval.Approval, engine: Engine
) -> None:
    flow = held_flow()
    holding = asyncio.create_task(addon.handle(flow, context.get(flow)))
    request = await pending(engine)
    await decide(engine, request.id, approve=False, reason="change freeze")
    await asyncio.wait_for(holding, WAIT)
    assert flow.response is not None and flow.response.status_code == 403
    text = message(flow)
    assert "<Code>AccessDenied</Code>" in text
    assert "denied by approver sub:alice (change freeze)" in text and request.id in text
    assert context.get(flow).refusal is not None
    assert approvals.get(engine, request.id).hold == "refused"  # type: ignore[union-attr]


@in_loop
async def test_an_undecided_call_is_refused_with_the_command_that_approves_it(
    addon: approval.Approval, engine: Engine
) -> None:
    addon.config = ApprovalsConfig(wait=0.3, public_url="https://gate.example")
    flow = held_flow()
    await addon.handle(flow, context.get(flow))
    request = approvals.list_requests(engine)[0]
    text = message(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert f"awsgate approvals approve {request.id} --reason TEXT" in text
    assert f"https://gate.example/approvals/{request.id}" in text
    assert text.count("awsgate: review required by rule 'deletes-need-review'; no decision") == 1
    assert (request.status, request.hold) == ("pending", "timed-out")

    # Approved later: the retry (a new invocation) passes once, the next is held anew.
    await decide(engine, request.id, approve=True)
    retry = held_flow(invocation="inv-2")
    await addon.handle(retry, context.get(retry))
    assert retry.response is None and context.get(retry).approval_id == request.id
    again = held_flow(invocation="inv-3")
    await addon.handle(again, context.get(again))
    assert again.response is not None and context.get(again).approval_id != request.id


@in_loop
async def test_an_sdk_retry_joins_the_request_it_already_waits_for(
    addon: approval.Approval, engine: Engine
) -> None:
    first, retry = held_flow(), held_flow()  # same amz-sdk-invocation-id
    tasks = [asyncio.create_task(addon.handle(flow, context.get(flow))) for flow in (first, retry)]
    request = await pending(engine)
    await asyncio.sleep(0.2)
    assert len(approvals.list_requests(engine)) == 1
    await decide(engine, request.id, approve=True)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    # One approval, one call through; the other is told it was used.
    outcomes = sorted(flow.response is None for flow in (first, retry))
    assert outcomes == [False, True]
    refused = first if first.response is not None else retry
    assert "already used by another call" in message(refused)


@in_loop
async def test_a_caller_that_hangs_up_stops_waiting_and_uses_nothing(
    addon: approval.Approval, engine: Engine
) -> None:
    flow = held_flow()
    holding = asyncio.create_task(addon.handle(flow, context.get(flow)))
    request = await pending(engine)
    flow.client_conn.state = ConnectionState.CAN_WRITE  # the agent closed its side
    await asyncio.wait_for(holding, WAIT)
    assert "the caller left" in message(flow)
    stored = approvals.get(engine, request.id)
    assert stored is not None and (stored.status, stored.hold) == ("pending", "abandoned")


@in_loop
async def test_stopping_marks_held_calls_lost(addon: approval.Approval, engine: Engine) -> None:
    flow = held_flow()
    holding = asyncio.create_task(addon.handle(flow, context.get(flow)))
    request = await pending(engine)
    holding.cancel()
    addon.done()
    stored = approvals.get(engine, request.id)
    assert stored is not None and (stored.status, stored.hold) == ("pending", "lost")


@in_loop
async def test_calls_not_under_review_are_left_alone(
    addon: approval.Approval, engine: Engine
) -> None:
    flow = held_flow(effect="allow")
    assert addon.request(flow) is None
    assert flow.response is None and approvals.list_requests(engine) == []
