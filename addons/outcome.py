"""What became of a call, named once for the record, the metrics and the logs.

Plain functions of the shared context (no mitmproxy): the metrics and
structured-log addons read a finished call through them, so a call counted
as ``deny`` on the Prometheus endpoint is logged and recorded as ``deny``.
"""

from __future__ import annotations

from addons.context import GateContext


def decision_label(gate: GateContext) -> str:
    """allow, deny, review, refused-identity or error: the refusal's kind wins over the policy."""
    if gate.refusal is not None:
        return gate.refusal.kind
    if gate.decision is not None:
        return gate.decision.effect
    return "allow" if gate.principal is not None else "error"


def is_store_error(gate: GateContext) -> bool:
    """Refused because the store could not be read or written (identity and recording: 503)."""
    refusal = gate.refusal
    return refusal is not None and refusal.kind == "error" and refusal.status == 503
