"""Approval requests for calls a rule sends for review, and the grants approvers give.

Shared by the gateway (hold, join, consume), the ``awsgate approvals`` commands
and the approval page (list, decide). Everything lives in the store, so any
replica sees any decision. Every state change is a conditional UPDATE
(``... WHERE status = 'pending'``) whose row count says who won: two replicas
consuming one approval, or two approvers deciding one request, get exactly
one winner.

A request's life: ``pending`` until an approver decides (``approved`` or
``denied``) or it ``expired``; an approved request is ``used`` by the one call
it lets through, or expires unused after its grant window. Separately, the
held call itself (``hold``) is ``waiting`` while a gateway holds it open, then
``forwarded``, ``refused``, ``timed-out``, ``abandoned`` (the agent hung up),
or ``lost`` (the gateway holding it stopped).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from addons.context import Decision, Operation, Principal
from addons.rules.load import parse_selector
from addons.store import sanitize
from addons.store.db import StoreUnavailable
from addons.store.models import approvals, grants

PENDING, APPROVED, DENIED, EXPIRED, USED = "pending", "approved", "denied", "expired", "used"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, USED)

WAITING, FORWARDED, REFUSED, TIMED_OUT = "waiting", "forwarded", "refused", "timed-out"
ABANDONED, LOST = "abandoned", "lost"

# A hold whose deadline passed this long ago without its gateway ending it was
# lost with that gateway (crashed, killed).
LOST_AFTER = timedelta(seconds=10)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DecisionRefused(Exception):
    """An approver may not make this decision; the message says why and is safe to show."""


@dataclass(frozen=True)
class HeldCall:
    """What a held call is: who, what, under which rule. Safe to store."""

    request_id: str
    issuer: str
    subject: str
    session_id: str | None
    groups: tuple[str, ...]
    role: str | None
    service: str
    operation: str
    region: str
    resources: tuple[str, ...]
    parameters: dict[str, Any]  # redacted
    rule: str
    approvers: tuple[str, ...]
    fingerprint: str
    invocation_id: str | None = None

    @property
    def action(self) -> str:
        return f"{self.service}:{self.operation}"

    @property
    def scope(self) -> str:
        return grant_scope(self.issuer, self.subject, self.role, self.action, self.resources)


def held_call(
    request_id: str,
    principal: Principal,
    operation: Operation,
    decision: Decision,
    shown_parameters: Mapping[str, Any],
    invocation_id: str | None = None,
    body_sha256: str | None = None,
) -> HeldCall:
    """Describe a call under review; its fingerprint covers the unredacted parameters.

    Two calls with the same fingerprint are the same call: same principal and role,
    operation, resources and parameters. The fingerprint is a hash, so it
    reveals no parameter it covers. ``shown_parameters`` are what approvers see
    and the store keeps: the record's masked copy, never the wire's.
    ``body_sha256`` binds a buffered body too, payloads (a Lambda event, an S3
    object) being no parameters; a streamed body is not known yet.
    """
    return HeldCall(
        request_id=request_id,
        issuer=principal.issuer,
        subject=principal.subject,
        session_id=principal.session_id,
        groups=tuple(sorted(principal.groups)),
        role=principal.role,
        service=operation.service,
        operation=operation.name,
        region=operation.region,
        resources=tuple(operation.resources),
        parameters=sanitize.parameters(shown_parameters),
        rule=decision.rule,
        approvers=tuple(decision.approvers),
        fingerprint=_digest(
            "call",
            principal.issuer,
            principal.subject,
            principal.role,  # the upstream credentials (perhaps another account) it runs with
            operation.action,
            operation.region,
            sorted(operation.resources),
            sanitize.json_safe(operation.params),
            body_sha256,
        ),
        invocation_id=(invocation_id or None) and invocation_id[:128],
    )


def grant_scope(
    issuer: str, subject: str, role: str | None, action: str, resources: Iterable[str]
) -> str:
    """What a time-window grant covers: one principal under one role, one action, these
    resources (ARNs name no account: the role says whose they are)."""
    return _digest("grant", issuer, subject, role, action, sorted(resources))


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_window(text: str, limit: int) -> timedelta:
    """A time-window grant's length: ``30m``, ``8h``, ``1d``; ValueError past ``limit`` seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"a window is a duration such as 30m, 8h or 1d, not {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= limit:
        raise ValueError(f"a window must be longer than 0 and at most {limit}s (max_window)")
    return timedelta(seconds=seconds)


def new_id() -> str:
    return "apr-" + secrets.token_hex(6)


@dataclass(frozen=True)
class ApprovalRequest:
    """One stored approval request, as the CLI, the page and the gateway see it."""

    id: str
    status: str
    created: datetime
    expires: datetime
    fingerprint: str
    issuer: str | None = None
    subject: str | None = None
    session_id: str | None = None
    groups: list[str] = field(default_factory=list)
    role: str | None = None
    service: str | None = None
    operation: str | None = None
    action: str | None = None
    region: str | None = None
    resources: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    approvers: list[str] = field(default_factory=list)
    request_id: str | None = None
    invocation_id: str | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    decider_issuer: str | None = None
    decided_via: str | None = None
    reason: str | None = None
    grant_until: datetime | None = None
    used_at: datetime | None = None
    used_by: str | None = None
    hold: str | None = None
    holder: str | None = None
    hold_until: datetime | None = None

    @property
    def principal(self) -> str:
        return f"sub:{self.subject}"

    @classmethod
    def from_row(cls, row: Any) -> ApprovalRequest:
        values = dict(row._mapping)
        for name in ("groups", "resources", "approvers"):
            values[name] = values[name] or []
        values["parameters"] = values["parameters"] or {}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the listing's columns first, then the details."""
        return {
            "id": self.id,
            "status": self.status,
            "principal": self.principal,
            "action": self.action,
            "resources": list(self.resources),
            "rule": self.rule,
            "approvers": list(self.approvers),
            "created": _iso(self.created),
            "expires": _iso(self.expires),
            "issuer": self.issuer,
            "session_id": self.session_id,
            "groups": list(self.groups),
            "role": self.role,
            "region": self.region,
            "parameters": self.parameters,
            "request_id": self.request_id,
            "decided_at": _iso(self.decided_at),
            "decided_by": self.decided_by,
            "decided_via": self.decided_via,
            "reason": self.reason,
            "grant_until": _iso(self.grant_until),
            "used_at": _iso(self.used_at),
            "used_by": self.used_by,
            "hold": self.hold,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


# --- the gateway's side ---------------------------------------------------

Verdict = Literal["pass", "wait", "refuse"]


@dataclass(frozen=True)
class Admission:
    """What to do with a held call: let it ``pass``, ``wait`` for ``approval``, or ``refuse``."""

    verdict: Verdict
    approval: ApprovalRequest
    created: bool = False  # a new request: tell the approvers
    grant: int | None = None  # the time-window grant that let it pass


def admit(
    engine: Engine,
    call: HeldCall,
    *,
    expire: timedelta,
    holder: str,
    hold: timedelta,
    now: datetime | None = None,
) -> Admission:
    """Join, consume or open the approval a reviewed call needs.

    In order: the approval an SDK retry (same ``amz-sdk-invocation-id``) is
    already waiting for; a pending request for the same call; an approved,
    unused request for the same call (consumed here, exactly once); a
    time-window grant for the principal, action and resources; else a new
    pending request. Waiting calls are marked held by ``holder``.
    """
    now = now or datetime.now(UTC)
    for _attempt in range(3):
        try:
            return _admit(engine, call, expire, holder, hold, now)
        except IntegrityError:
            continue  # an identical call opened its request a moment ago: join that one
    raise StoreUnavailable("could not open or join an approval request")


def _admit(
    engine: Engine,
    call: HeldCall,
    expire: timedelta,
    holder: str,
    hold: timedelta,
    now: datetime,
) -> Admission:
    with engine.begin() as connection:
        joined = _joinable(connection, call, now)
        if joined is not None:
            if joined.status == PENDING:
                return Admission("wait", _hold(connection, joined, holder, now + hold))
            if joined.status == DENIED:
                return Admission("refuse", joined)
        for candidate in _approved_unused(connection, call, now):
            if _consume(connection, candidate.id, call.request_id, now):
                return Admission("pass", _reload(connection, candidate.id))
        grant = connection.execute(
            select(grants.c.id, grants.c.approval_id)
            .where(grants.c.scope == call.scope, grants.c.until > now)
            .order_by(grants.c.until.desc())
        ).first()
        if grant is not None:
            return Admission("pass", _reload(connection, grant.approval_id), grant=grant.id)
        values = _new_request(call, now, now + expire)
        values.update(hold=WAITING, holder=holder[:200], hold_until=now + hold)
        connection.execute(insert(approvals).values(values))
        return Admission("wait", _reload(connection, values["id"]), created=True)


def _joinable(connection: Connection, call: HeldCall, now: datetime) -> ApprovalRequest | None:
    """The request this very call (an SDK retry) or an identical one already opened."""
    same_call = approvals.c.fingerprint == call.fingerprint
    if call.invocation_id:
        row = connection.execute(
            select(approvals)
            .where(same_call, approvals.c.invocation_id == call.invocation_id)
            .where(approvals.c.status.in_((PENDING, DENIED)), approvals.c.expires > now)
            .order_by(approvals.c.created.desc())
        ).first()
        if row is not None:
            return ApprovalRequest.from_row(row)
    row = connection.execute(
        select(approvals)
        .where(same_call, approvals.c.status == PENDING, approvals.c.expires > now)
        .order_by(approvals.c.created)
    ).first()
    return ApprovalRequest.from_row(row) if row is not None else None


def _approved_unused(
    connection: Connection, call: HeldCall, now: datetime
) -> list[ApprovalRequest]:
    rows = connection.execute(
        select(approvals)
        .where(approvals.c.fingerprint == call.fingerprint, approvals.c.status == APPROVED)
        .where(approvals.c.grant_until > now)
        .order_by(approvals.c.decided_at)
    )
    return [ApprovalRequest.from_row(row) for row in rows]


def _new_request(call: HeldCall, now: datetime, expires: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "status": PENDING,
        "created": now,
        "expires": expires,
        "request_id": call.request_id,
        "invocation_id": call.invocation_id,
        "fingerprint": call.fingerprint,
        "issuer": call.issuer,
        "subject": call.subject,
        "session_id": call.session_id,
        "groups": list(call.groups),
        "role": call.role,
        "service": call.service,
        "operation": call.operation,
        "action": call.action,
        "region": call.region,
        "resources": list(call.resources),
        "parameters": call.parameters,
        "rule": call.rule,
        "approvers": list(call.approvers),
    }


def _hold(
    connection: Connection, approval: ApprovalRequest, holder: str, until: datetime
) -> ApprovalRequest:
    connection.execute(
        update(approvals)
        .where(approvals.c.id == approval.id)
        .values(hold=WAITING, holder=holder[:200], hold_until=until)
    )
    return _reload(connection, approval.id)


def _consume(connection: Connection, approval_id: str, request_id: str, now: datetime) -> bool:
    result = connection.execute(
        update(approvals)
        .where(approvals.c.id == approval_id, approvals.c.status == APPROVED)
        .where(approvals.c.grant_until > now)
        .values(status=USED, used_at=now, used_by=request_id)
    )
    return result.rowcount == 1


def _reload(connection: Connection, approval_id: str) -> ApprovalRequest:
    row = connection.execute(select(approvals).where(approvals.c.id == approval_id)).one()
    return ApprovalRequest.from_row(row)


def consume(engine: Engine, approval_id: str, request_id: str, now: datetime | None = None) -> bool:
    """Let one call through on an approved request: True for exactly one caller."""
    with engine.begin() as connection:
        return _consume(connection, approval_id, request_id, now or datetime.now(UTC))


def current(engine: Engine, ids: Iterable[str]) -> dict[str, ApprovalRequest]:
    """The requests with these ids, for gateways polling the ones they hold."""
    wanted = list(ids)
    if not wanted:
        return {}
    with engine.connect() as connection:
        rows = connection.execute(select(approvals).where(approvals.c.id.in_(wanted)))
        return {row.id: ApprovalRequest.from_row(row) for row in rows}


def end_hold(engine: Engine, approval_id: str, holder: str, state: str) -> None:
    """Record how the held call ended, unless another hold (an SDK retry) took over."""
    with engine.begin() as connection:
        connection.execute(
            update(approvals)
            .where(approvals.c.id == approval_id, approvals.c.holder == holder[:200])
            .where(approvals.c.hold == WAITING)
            .values(hold=state)
        )


def release_holder(engine: Engine, holder: str) -> int:
    """Mark every call ``holder`` still holds as lost: its gateway is stopping."""
    with engine.begin() as connection:
        result = connection.execute(
            update(approvals)
            .where(approvals.c.holder == holder[:200], approvals.c.hold == WAITING)
            .values(hold=LOST)
        )
    return result.rowcount


def sweep(engine: Engine, now: datetime | None = None) -> None:
    """Expire undecided and unused requests; mark holds whose gateway died as lost."""
    now = now or datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            update(approvals)
            .where(
                or_(
                    and_(approvals.c.status == PENDING, approvals.c.expires <= now),
                    and_(approvals.c.status == APPROVED, approvals.c.grant_until <= now),
                )
            )
            .values(status=EXPIRED)
        )
        connection.execute(
            update(approvals)
            .where(approvals.c.hold == WAITING, approvals.c.hold_until <= now - LOST_AFTER)
            .values(hold=LOST)
        )


# --- the approvers' side --------------------------------------------------


def get(engine: Engine, approval_id: str) -> ApprovalRequest | None:
    with engine.connect() as connection:
        row = connection.execute(select(approvals).where(approvals.c.id == approval_id)).first()
    return ApprovalRequest.from_row(row) if row is not None else None


def list_requests(
    engine: Engine, status: str | None = None, limit: int = 500
) -> list[ApprovalRequest]:
    """Newest first; ``status`` filters (pending, approved, denied, expired, used)."""
    statement = select(approvals).order_by(approvals.c.created.desc()).limit(limit)
    if status is not None:
        statement = statement.where(approvals.c.status == status)
    with engine.connect() as connection:
        return [ApprovalRequest.from_row(row) for row in connection.execute(statement)]


def refusal(request: ApprovalRequest, approver: Principal) -> str | None:
    """Why ``approver`` may not decide ``request``, or None if they may."""
    if approver.issuer.rstrip("/") == (request.issuer or "").rstrip("/") and (
        approver.subject == request.subject
    ):
        return f"{approver.name} cannot decide its own request"
    selectors = [parse_selector(text) for text in request.approvers]
    if not any(selector.matches(approver) for selector in selectors):
        allowed = ", ".join(request.approvers) or "(none)"
        return (
            f"{approver.name} is not an approver for rule {request.rule!r} (approvers: {allowed})"
        )
    return None


def decide(
    engine: Engine,
    approval_id: str,
    approver: Principal,
    *,
    approve: bool,
    reason: str,
    via: str,
    grant_window: timedelta,
    window: timedelta | None = None,
    now: datetime | None = None,
) -> ApprovalRequest:
    """Approve or deny a pending request as ``approver``; raises ``DecisionRefused``.

    An approval lets the held call (or its retry within ``grant_window``) through
    once; ``window`` also grants the principal that action on those resources
    until ``now + window``.
    """
    now = now or datetime.now(UTC)
    reason = sanitize.text(reason.strip())
    if not reason:
        raise DecisionRefused("a decision needs a reason")
    if window is not None and not approve:
        raise DecisionRefused("only an approval can grant a time window")
    request = get(engine, approval_id)
    if request is None:
        raise DecisionRefused(f"no approval request {approval_id}")
    why_not = refusal(request, approver)
    if why_not is not None:
        raise DecisionRefused(why_not)
    if request.status != PENDING or request.expires <= now:
        state = EXPIRED if request.status == PENDING else request.status
        raise DecisionRefused(f"{approval_id} is {state}, not pending")
    values: dict[str, Any] = {
        "status": APPROVED if approve else DENIED,
        "decided_at": now,
        "decided_by": approver.name,
        "decider_issuer": approver.issuer,
        "decided_via": via[:16],
        "reason": reason[:2000],
    }
    if approve:
        values["grant_until"] = now + grant_window
    with engine.begin() as connection:
        result = connection.execute(
            update(approvals)
            .where(approvals.c.id == approval_id, approvals.c.status == PENDING)
            .where(approvals.c.expires > now)
            .values(values)
        )
        if result.rowcount != 1:
            raise DecisionRefused(f"{approval_id} was decided by someone else a moment ago")
        if window is not None:
            connection.execute(
                insert(grants).values(
                    approval_id=approval_id,
                    scope=grant_scope(
                        request.issuer or "",
                        request.subject or "",
                        request.role,
                        request.action or "",
                        request.resources,
                    ),
                    issuer=request.issuer,
                    subject=request.subject,
                    action=request.action,
                    resources=list(request.resources),
                    created=now,
                    until=now + window,
                    granted_by=approver.name,
                    reason=values["reason"],
                )
            )
        return _reload(connection, approval_id)
