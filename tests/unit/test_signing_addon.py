"""The signing addon's response side: the agent's connection outlives the upstream's."""

from __future__ import annotations

from mitmproxy.test import tflow

from addons import context
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
