"""What a policy change would do: recorded calls re-decided by a candidate policy.

The record store keeps, for every call, who made it (issuer, subject, groups,
role), what it was (service, operation, region, resources, parameters) and
what the policy in force decided. That is all ``evaluate`` needs, so a
candidate policy can be tried on weeks of real traffic before it ships.

Not every record can be replayed: calls refused before the policy ran
(``refused-identity``, ``error``) have no principal or operation, and calls
the gateway answers itself (``sts:AssumeRoleWithWebIdentity``) never reach
the policy. They are skipped and counted by reason.

Rows are the store's ``calls`` mappings; this module reads only the columns
in ``REPLAY_COLUMNS`` and never imports the store, so it runs on any
iterable of rows, streamed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from addons.context import Effect, Operation, Principal
from addons.rules.evaluate import evaluate
from addons.rules.model import Policy

# The columns of the store's ``calls`` table a replay reads.
REPLAY_COLUMNS = (
    "request_id", "time", "session_id", "issuer", "subject", "groups", "role",
    "service", "operation", "region", "resources", "parameters",
    "decision", "rule", "approval_id",
)  # fmt: skip
NO_POLICY_DECISION = ("refused-identity", "error")
EFFECTS: tuple[Effect, ...] = ("allow", "deny", "review")
MAX_EXAMPLES = 3
MAX_CACHED_PRINCIPALS = 10_000


class NotReplayable(ValueError):
    """A record the policy cannot re-decide; the message is the reason, for counting."""


@dataclass(frozen=True)
class RecordedCall:
    """One recorded call, rebuilt as the policy engine sees a live one."""

    request_id: str
    time: datetime | None
    principal: Principal
    operation: Operation
    effect: Effect  # what the policy in force decided
    rule: str


def recorded_call(
    row: Mapping[str, Any], principals: dict[tuple[Any, ...], Principal] | None = None
) -> RecordedCall:
    """Rebuild ``Principal`` and ``Operation`` from a stored call; ``NotReplayable`` if it can't.

    ``principals`` caches principals between calls: a session makes many.
    """
    decision = row["decision"]
    if decision in NO_POLICY_DECISION:
        raise NotReplayable(decision)
    if not row["subject"] or not row["service"] or not row["operation"]:
        raise NotReplayable("no principal or operation recorded")
    if row["rule"] is None:
        raise NotReplayable("answered by the gateway itself")
    # A call held for approval was a review, whatever the approver then decided.
    effect = "review" if row["approval_id"] is not None else decision
    if effect not in EFFECTS:
        raise NotReplayable(f"decision {decision!r}")
    principal = _principal(row, {} if principals is None else principals)
    operation = Operation(
        service=row["service"],
        name=row["operation"],
        region=row["region"] or "",
        signing_name=row["service"],
        params=dict(row["parameters"] or {}),
        resources=[str(resource) for resource in row["resources"] or ()],
    )
    return RecordedCall(row["request_id"], row["time"], principal, operation, effect, row["rule"])


def _principal(row: Mapping[str, Any], cache: dict[tuple[Any, ...], Principal]) -> Principal:
    groups = tuple(row["groups"] or ())
    key = (row["issuer"], row["subject"], groups, row["role"], row["session_id"])
    principal = cache.get(key)
    if principal is None:
        principal = Principal(
            issuer=row["issuer"] or "",
            subject=row["subject"],
            groups=frozenset(groups),
            role=row["role"],
            session_id=row["session_id"],
        )
        if len(cache) < MAX_CACHED_PRINCIPALS:
            cache[key] = principal
    return principal


def replayable(rows: Iterable[Mapping[str, Any]], skipped: Counter[str]) -> Iterator[RecordedCall]:
    """The rows that can be re-decided, rebuilt; the others are counted in ``skipped`` by reason."""
    principals: dict[tuple[Any, ...], Principal] = {}
    for row in rows:
        try:
            yield recorded_call(row, principals)
        except NotReplayable as reason:
            skipped[str(reason)] += 1


@dataclass(frozen=True)
class Example:
    request_id: str
    time: datetime | None
    resources: tuple[str, ...]
    rule_before: str
    rule_after: str


@dataclass
class Change:
    """Every call of one principal and action whose decision goes from ``before`` to ``after``."""

    principal: str
    action: str
    before: Effect
    after: Effect
    count: int = 0
    examples: list[Example] = field(default_factory=list)

    @property
    def newly_denied(self) -> bool:
        return self.after == "deny"


@dataclass
class WhatIfReport:
    replayed: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    changes: dict[tuple[str, str, str, str], Change] = field(default_factory=dict)

    @property
    def newly_denied(self) -> int:
        """Calls that were allowed or reviewed and would now be denied."""
        return sum(change.count for change in self.changes.values() if change.newly_denied)

    def sorted_changes(self) -> list[Change]:
        """Newly denied first, then by principal, action and effect."""
        return sorted(
            self.changes.values(),
            key=lambda c: (not c.newly_denied, c.principal, c.action, c.before, c.after),
        )


def what_if(policy: Policy, rows: Iterable[Mapping[str, Any]]) -> WhatIfReport:
    """Re-decide every row under ``policy`` and collect the calls whose decision changes."""
    report = WhatIfReport()
    for call in replayable(rows, report.skipped):
        report.replayed += 1
        decision = evaluate(policy, call.principal, call.operation)
        if decision.effect == call.effect:
            report.unchanged += 1
            continue
        principal, action = call.principal.name, call.operation.action
        key = (principal, action, call.effect, decision.effect)
        change = report.changes.get(key)
        if change is None:
            change = report.changes[key] = Change(principal, action, call.effect, decision.effect)
        change.count += 1
        if len(change.examples) < MAX_EXAMPLES:
            change.examples.append(
                Example(
                    call.request_id,
                    call.time,
                    tuple(call.operation.resources),
                    call.rule,
                    decision.rule,
                )
            )
    return report
