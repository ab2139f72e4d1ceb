"""Test-only mitmproxy script, loaded before the gateway: makes one stage raise.

A request carrying ``x-awsgate-test-fault: NAME`` makes the knowledge function
behind stage NAME raise, so the tests can prove that an exception anywhere in
the chain refuses the call instead of forwarding it. Never load this in a
real gateway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mitmproxy import http

import addons.flowview
import addons.recording
import addons.rules
import addons.scope
from addons.aws import operations, sigv4

HEADER = "x-awsgate-test-fault"
armed: dict[str, str | None] = {"stage": None}


def _faulty(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if armed["stage"] == stage:
            raise RuntimeError(f"injected fault in {stage}")
        return function(*args, **kwargs)

    return wrapper


TARGETS = {
    "scope": (addons.scope, "should_stream"),
    "flowview": (addons.flowview, "take_agent_auth"),
    "identity": (sigv4, "parse_auth"),
    "operation": (operations, "resolve"),
    "policy": (addons.rules, "evaluate"),
    "signing": (sigv4, "payload_hash"),
    "recording": (addons.recording, "call_record"),
    "response": (addons.recording, "call_outcome"),
}
for _stage, (_module, _name) in TARGETS.items():
    setattr(_module, _name, _faulty(_stage, getattr(_module, _name)))


class FaultSwitch:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        armed["stage"] = flow.request.headers.get(HEADER)


addons = [FaultSwitch()]
