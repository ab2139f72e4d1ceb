"""Revoked sessions and principals: stored here, checked on every call from memory.

An operator revokes a session (one minted credential or proxy token) or every
session of a subject glob; each gateway sharing the store picks the change up
within ``refresh_seconds``, from a background thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from addons.store.db import StoreUnavailable, describe, open_engine, reason
from addons.store.models import revocations

SESSION = "session"
PRINCIPAL = "principal"


@dataclass(frozen=True)
class Revocation:
    id: int
    kind: str  # "session" or "principal"
    target: str  # the session id, or the subject glob
    reason: str
    created: datetime
    until: datetime | None = None  # None: until lifted
    created_by: str | None = None

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    @classmethod
    def from_row(cls, row: Any) -> Revocation:
        return cls(**row._mapping)


def revoke_session(
    engine: Engine,
    session_id: str,
    reason: str,
    until: datetime | None = None,
    created_by: str | None = None,
) -> Revocation:
    """Refuse every further call of one session."""
    return _revoke(engine, SESSION, session_id, reason, until, created_by)


def revoke_principal(
    engine: Engine,
    subject_glob: str,
    reason: str,
    until: datetime | None = None,
    created_by: str | None = None,
) -> Revocation:
    """Refuse every call of the subjects matching ``subject_glob`` (``sub:`` prefix allowed)."""
    return _revoke(engine, PRINCIPAL, subject_glob.removeprefix("sub:"), reason, until, created_by)


def _revoke(
    engine: Engine,
    kind: str,
    target: str,
    why: str,
    until: datetime | None,
    created_by: str | None,
) -> Revocation:
    if not target:
        raise ValueError(f"a {kind} revocation needs a target")
    values = {
        "kind": kind,
        "target": target,
        "reason": why or "revoked",
        "created": datetime.now(UTC),
        "until": until,
        "created_by": created_by,
    }
    with engine.begin() as connection:
        new_id = connection.execute(insert(revocations).values(values)).inserted_primary_key[0]
    return Revocation(id=new_id, **values)


def lift(engine: Engine, revocation_id: int) -> bool:
    """End a revocation now; False when there is no such active revocation."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        result = connection.execute(
            update(revocations)
            .where(revocations.c.id == revocation_id)
            .where(or_(revocations.c.until.is_(None), revocations.c.until > now))
            .values(until=now)
        )
    return result.rowcount > 0


def list_revocations(
    engine: Engine, *, include_expired: bool = False, now: datetime | None = None
) -> list[Revocation]:
    statement = select(revocations).order_by(revocations.c.id)
    if not include_expired:
        now = now or datetime.now(UTC)
        statement = statement.where(or_(revocations.c.until.is_(None), revocations.c.until > now))
    with engine.connect() as connection:
        return [Revocation.from_row(row) for row in connection.execute(statement)]


class RevocationCache:
    """In-memory view of the active revocations, refreshed from the store in the background.

    ``is_revoked`` is a dict lookup plus one regex match: cheap enough for every
    call on the event loop. If a refresh fails the last known set stays in force
    and ``healthy`` turns False.
    """

    def __init__(self, url: str, refresh_seconds: float = 2.0) -> None:
        self.refresh_seconds = refresh_seconds
        self._engine = open_engine(url)
        self._sessions: dict[str, list[Revocation]] = {}
        self._principals: list[tuple[re.Pattern[str], Revocation]] = []
        self._healthy = True
        self._last_error: str | None = None
        self._stop = threading.Event()
        self.refresh()  # start with the current set, or fail loudly
        self._thread = threading.Thread(target=self._run, name="awsgate-revocations", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def is_revoked(
        self, session_id: str | None, subject: str | None, now: datetime | None = None
    ) -> Revocation | None:
        """The revocation that stops this call, or None."""
        now = now or datetime.now(UTC)
        sessions, principals = self._sessions, self._principals  # one consistent snapshot
        for revocation in sessions.get(session_id or "", ()):
            if revocation.active(now):
                return revocation
        if subject is not None:
            for pattern, revocation in principals:
                if revocation.active(now) and pattern.match(subject):
                    return revocation
        return None

    def refresh(self) -> None:
        """Load the active revocations now; raises StoreUnavailable when the store fails."""
        try:
            active = list_revocations(self._engine)
        except SQLAlchemyError as exc:
            self._healthy, self._last_error = False, reason(exc)
            raise StoreUnavailable(
                f"cannot read revocations from {describe(self._engine)}: {reason(exc)}"
            ) from exc
        sessions: dict[str, list[Revocation]] = {}
        principals = []
        for revocation in active:
            if revocation.kind == SESSION:
                sessions.setdefault(revocation.target, []).append(revocation)
            elif revocation.kind == PRINCIPAL:
                principals.append((re.compile(fnmatch.translate(revocation.target)), revocation))
        self._sessions, self._principals = sessions, principals
        self._healthy, self._last_error = True, None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            # On failure keep the last known set; healthy and last_error tell the gateway.
            with contextlib.suppress(StoreUnavailable):
                self.refresh()
