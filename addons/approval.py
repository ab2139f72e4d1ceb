"""Approval: calls that a rule sends for review wait for a human.

Until approvals are wired to the store, a call under review is refused with
the rule's name, never forwarded: review must never mean allow.
"""

from __future__ import annotations

from mitmproxy import http

from addons.context import GateContext
from addons.hooks import RequestStage, deny


class Approval(RequestStage):
    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        decision = gate.decision
        if decision is not None and decision.effect == "review":
            deny(flow, f"{decision.message}; approvals are not enabled on this gateway", "review")
