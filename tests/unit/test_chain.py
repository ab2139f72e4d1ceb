"""The addon chain: order, and every hook that can let a flow through fails closed."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.test import taddons, tflow

from addons import context, gateway, hooks
from addons.context import Refusal
from addons.logjson import CallLines
from addons.metrics import CallCounter, GatewayMetrics

FLOW_HOOKS = ("http_connect", "requestheaders", "request", "responseheaders", "response")
# With the children the chain gets while JSON logs and the metrics endpoint are on.
ADDONS = [*gateway.addons, CallLines(), CallCounter(GatewayMetrics())]


def test_chain_order_matches_the_design() -> None:
    names = [type(addon).__name__ for addon in gateway.addons]
    assert names == [
        "Settings",
        "JsonLogs",
        "Scope",
        "FlowView",
        "Identity",
        "OperationResolver",
        "Policy",
        "Metrics",
        "RequestMasking",
        "Approval",
        "Signing",
        "Masking",
        "Recording",
        "ForwardGuard",
    ]


@pytest.mark.parametrize(
    ("addon", "hook"),
    [(addon, hook) for addon in ADDONS for hook in FLOW_HOOKS if hasattr(addon, hook)],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_every_flow_hook_is_guarded(addon: object, hook: str) -> None:
    """mitmproxy logs an addon's exception and forwards the flow: each hook must catch it."""
    method = getattr(type(addon), hook)
    assert hasattr(method, "__wrapped__"), f"{type(addon).__name__}.{hook} is not fail_closed"


class Exploding(hooks.RequestStage):
    async def handle(self, flow, gate) -> None:
        secret = "AKIA" + "IOSFODNN7EXAMPLE"
        raise ValueError(f"boom with a secret-looking value {secret}")


def test_fail_closed_turns_an_exception_into_an_aws_shaped_refusal(caplog) -> None:
    flow = tflow.tflow()
    flow.request.host = "sts.us-east-1.amazonaws.com"
    context.get(flow)
    asyncio.run(Exploding().request(flow))
    assert flow.response is not None and flow.response.status_code == 500
    assert b"<Code>InternalFailure</Code>" in flow.response.content
    assert b"awsgate: internal error in exploding.request" in flow.response.content
    assert context.get(flow).refusal.kind == "error"
    assert "AKIAIOSFODNN7EXAMPLE" not in caplog.text  # the message may quote secrets


def test_forward_guard_refuses_an_unsigned_aws_flow() -> None:
    flow = tflow.tflow()
    flow.request.host = "sqs.us-east-1.amazonaws.com"
    context.get(flow)
    with taddons.context():
        hooks.ForwardGuard().request(flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert b"not signed" in flow.response.content


def test_forward_guard_leaves_signed_and_foreign_flows_alone() -> None:
    signed, foreign = tflow.tflow(), tflow.tflow()
    context.get(signed).signed = True
    with taddons.context():
        hooks.ForwardGuard().request(signed)
        hooks.ForwardGuard().request(foreign)
    assert signed.response is None and foreign.response is None


def test_refusal_shape_follows_the_request_protocol() -> None:
    flow = tflow.tflow()
    flow.request.host = "dynamodb.us-east-1.amazonaws.com"
    context.get(flow)
    hooks.refuse(flow, Refusal(403, "AccessDeniedException", "awsgate: no", "deny"))
    assert flow.response.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert flow.response.json()["message"] == "awsgate: no"
