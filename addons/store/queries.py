"""Reading the store for analysts: call search, sessions, and the time and principal syntax.

Listings stream: rows are fetched a page at a time (``yield_per``) so a
search over months of records holds one page in memory, not the result.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, func, select

from addons.store.models import calls, sessions

PAGE_SIZE = 500
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta | None:
    """``90m``, ``2h``, ``1d``, ``7d``, ``30s``, ``2w`` as a timedelta; None if not one."""
    match = _DURATION.match(value)
    if not match:
        return None
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_time(value: str, *, now: datetime | None = None, future: bool = False) -> datetime:
    """A duration relative to now (in the past, or ahead with ``future``) or an ISO timestamp.

    A timestamp without a zone is UTC. Raises ValueError with a message for people.
    """
    now = now or datetime.now(UTC)
    duration = parse_duration(value)
    if duration is not None:
        return now + duration if future else now - duration
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (90m, 2h, 1d, 7d) nor an ISO timestamp"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class PrincipalFilter:
    """``sub:GLOB``, ``group:NAME`` or a bare subject glob."""

    subject_glob: str | None = None
    group: str | None = None

    @classmethod
    def parse(cls, value: str) -> PrincipalFilter:
        kind, _, rest = value.partition(":")
        if kind == "group" and rest:
            return cls(group=rest)
        if kind == "sub" and rest:
            return cls(subject_glob=rest)
        return cls(subject_glob=value)

    def matches(self, subject: str | None, groups: list[str] | None) -> bool:
        if self.group is not None:
            return self.group in (groups or ())
        return subject is not None and fnmatch.fnmatchcase(subject, self.subject_glob or "*")

    def narrow(self, statement: Select[Any], subject: Any) -> Select[Any]:
        """Let the database drop what it can; ``matches`` has the final word."""
        if self.subject_glob is not None:
            return _glob_where(statement, subject, self.subject_glob)
        return statement


def _glob_where(statement: Select[Any], column: Any, glob: str) -> Select[Any]:
    if not any(char in glob for char in "*?["):
        return statement.where(column == glob)
    prefix = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    if prefix:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(column.like(escaped + "%", escape="\\"))
    return statement


@dataclass(frozen=True)
class CallQuery:
    """Filters of ``audit search``; all optional, combined with AND."""

    action: str | None = None  # glob over "service:Operation"
    resource: str | None = None  # glob over any of the call's resources
    principal: PrincipalFilter | None = None
    decision: str | None = None
    since: datetime | None = None
    session_id: str | None = None

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.action and not fnmatch.fnmatchcase(row["action"] or "", self.action):
            return False
        if self.resource and not any(
            fnmatch.fnmatchcase(str(resource), self.resource) for resource in row["resources"] or ()
        ):
            return False
        return self.principal is None or self.principal.matches(row["subject"], row["groups"])


def search_calls(
    engine: Engine, query: CallQuery, *, limit: int | None = None, newest_first: bool = True
) -> Iterator[Mapping[str, Any]]:
    """Calls matching ``query``, streamed page by page."""
    statement = select(calls)
    if query.action:
        statement = _glob_where(statement, calls.c.action, query.action)
    if query.principal:
        statement = query.principal.narrow(statement, calls.c.subject)
    if query.decision:
        statement = statement.where(calls.c.decision == query.decision)
    if query.since:
        statement = statement.where(calls.c.time >= query.since)
    if query.session_id:
        statement = statement.where(calls.c.session_id == query.session_id)
    order = (calls.c.time.desc(), calls.c.id.desc()) if newest_first else (calls.c.time, calls.c.id)
    statement = statement.order_by(*order)
    yielded = 0
    if limit is not None and limit <= 0:
        return
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=PAGE_SIZE).execute(statement)
        for row in result:
            mapping = row._mapping
            if not query.matches(mapping):
                continue
            yield mapping
            yielded += 1
            if limit is not None and yielded >= limit:
                return


def list_sessions(
    engine: Engine,
    *,
    principal: PrincipalFilter | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Sessions active since ``since``, most recently active first, streamed."""
    statement = select(sessions).order_by(sessions.c.last_seen.desc(), sessions.c.id)
    if since is not None:
        statement = statement.where(sessions.c.last_seen >= since)
    if principal is not None:
        statement = principal.narrow(statement, sessions.c.subject)
    yielded = 0
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=PAGE_SIZE).execute(statement):
            mapping = row._mapping
            if principal is not None and not principal.matches(
                mapping["subject"], mapping["groups"]
            ):
                continue
            if limit is not None and yielded >= limit:
                return
            yield mapping
            yielded += 1


def get_session(engine: Engine, session_id: str) -> Mapping[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(sessions).where(sessions.c.id == session_id)).first()
    return None if row is None else row._mapping


def session_calls(engine: Engine, session_id: str) -> Iterator[Mapping[str, Any]]:
    """A session's calls in the order they arrived."""
    return search_calls(engine, CallQuery(session_id=session_id), newest_first=False)


def count_session_calls(engine: Engine, session_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(calls).where(calls.c.session_id == session_id)
        ).scalar_one()


def principal_name(subject: str | None) -> str | None:
    return f"sub:{subject}" if subject else None
