"""The record writer: one background thread that commits calls in batches.

The proxy's event loop never touches the database. It queues a ``begin``
and awaits the returned future (``asyncio.wrap_future``) before forwarding
the call, so an unrecorded action never happens; concurrent begins are
group-committed in one transaction. ``finish`` completes the row and chains
its hash to the previous finished record of this writer's chain.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, String, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from addons.store import chain, sanitize
from addons.store.db import (
    DEFAULT_BUSY_TIMEOUT,
    StoreUnavailable,
    describe,
    open_engine,
    reason,
    sqlite_path,
)
from addons.store.models import calls, sessions
from addons.store.records import CallOutcome, CallRecord

BODY_LIMIT = 64 * 1024
DENIED = frozenset({"deny", "refused-identity"})
_TEXT_LIMITS = {c.name: c.type.length for c in calls.columns if isinstance(c.type, String)}
_SESSION_COUNTERS = ("calls", "allowed", "denied", "reviewed", "errors")
_OUTCOME_COLUMNS = (
    "duration_ms", "status", "upstream_status", "upstream_request_id", "error", "masked",
    "response_headers", "response_body", "response_body_size", "response_body_sha256",
    "decision", "approval_id", "request_body_size", "request_body_sha256",
)  # fmt: skip
# Set at finish: the writer that finishes a call chains it, whichever one began it.
_CHAIN_COLUMNS = ("chain_id", "chain_seq", "prev_hash", "record_hash")
_STOP = object()
# Completes a begun call; built once, the writer runs it for every finished call.
_FINISH = (
    update(calls)
    .where(calls.c.request_id == bindparam("b_request_id"), calls.c.chain_seq.is_(None))
    .values(
        {
            name: bindparam(f"b_{name}", type_=calls.c[name].type)
            for name in (*_OUTCOME_COLUMNS, *_CHAIN_COLUMNS)
        }
    )
)


def default_chain_id() -> str:
    """hostname-pid plus a nonce: two writers in one process never share a chain by accident."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class _Op:
    future: Future[str]
    record: CallRecord | None = None
    request_id: str | None = None
    outcome: CallOutcome | None = None
    row: dict[str, Any] = field(default_factory=dict)  # filled in the writer thread

    @property
    def inserts(self) -> bool:
        return self.record is not None

    @property
    def finishes(self) -> bool:
        return self.outcome is not None


class RecordWriter:
    """Writes call records to the store at ``url`` from one background thread."""

    def __init__(
        self,
        url: str,
        *,
        chain_id: str | None = None,
        body_limit: int = BODY_LIMIT,
        max_batch: int = 500,
        max_queue: int = 10_000,
        max_pending: int = 10_000,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self.chain_id = sanitize.text(chain_id or default_chain_id())[: _TEXT_LIMITS["chain_id"]]
        self.body_limit = body_limit
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._engine = open_engine(url, busy_timeout=busy_timeout)
        self._where = describe(self._engine)
        self._sqlite_file = sqlite_path(url)
        self._file_identity: tuple[int, int] | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        # request_id -> stored row of calls begun and not finished, oldest first; a cache
        # of the database, so that finishing needs no read. Writer thread only.
        self._begun: dict[str, dict[str, Any]] = {}
        self._head: tuple[int, str] | None = None  # (seq, hash) of this chain's last record
        self._upsert: Any = None
        self._healthy = True
        self._last_error: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="awsgate-record-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False when the last write failed; the next successful write sets it back."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def begin(self, record: CallRecord) -> Future[str]:
        """Insert the request part; the future resolves to the request id once committed."""
        return self._submit(_Op(Future(), record=record, request_id=record.request_id))

    def finish(self, request_id: str, outcome: CallOutcome) -> Future[str]:
        """Complete a begun call; the future resolves to its record hash once committed."""
        return self._submit(_Op(Future(), request_id=request_id, outcome=outcome))

    def record(self, record: CallRecord, outcome: CallOutcome) -> Future[str]:
        """Write a call that is already over (refused before forwarding) in one step."""
        return self._submit(
            _Op(Future(), record=record, request_id=record.request_id, outcome=outcome)
        )

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        self._engine.dispose()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _submit(self, op: _Op) -> Future[str]:
        with self._lock:
            if self._closed:
                op.future.set_exception(StoreUnavailable("the record writer is closed"))
                return op.future
            try:
                self._queue.put_nowait(op)
            except queue.Full:
                op.future.set_exception(
                    StoreUnavailable(f"{self._queue.maxsize} records are waiting for {self._where}")
                )
        return op.future

    # --- the writer thread ---

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while batch[-1] is not _STOP and len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            ops = [op for op in batch if op is not _STOP]
            try:
                self._write(ops)
            except BaseException as exc:  # the thread must outlive any bug: fail the calls
                self._fail(ops, StoreUnavailable(f"record writer error: {reason(exc)}"))

    def _write(self, ops: list[_Op]) -> None:
        staged: dict[str, dict[str, Any]] = {}
        ready = []
        for op in ops:
            try:
                self._prepare(op, staged)
            except (TypeError, ValueError, OverflowError) as exc:
                op.future.set_exception(StoreUnavailable(f"cannot record the call: {exc}"))
            except SQLAlchemyError as exc:
                self._fail([op], StoreUnavailable(f"cannot read {self._where}: {reason(exc)}"))
            else:
                ready.append(op)
        if ready:
            self._commit_or_isolate(ready)

    def _prepare(self, op: _Op, staged: dict[str, dict[str, Any]]) -> None:
        """Turn the op into stored row values; runs before the transaction."""
        if op.record is not None:
            op.row = self._request_row(op.record)
            staged[op.row["request_id"]] = op.row
        if op.outcome is not None:
            request_id = sanitize.text(op.request_id or "")
            base = (
                op.row
                or staged.get(request_id)
                or self._begun.get(request_id)
                or self._load_begun(request_id)
            )
            op.row = {**base, **self._outcome_fields(op.outcome, base)}

    def _load_begun(self, request_id: str) -> dict[str, Any]:
        """A call begun by an earlier writer (reconfigured, restarted) or evicted from memory."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(calls).where(calls.c.request_id == request_id, calls.c.chain_seq.is_(None))
            ).first()
        if row is None:
            raise ValueError(f"no unfinished call {request_id!r} was begun")
        return dict(row._mapping)

    def _commit_or_isolate(self, ops: list[_Op]) -> None:
        try:
            results = self._commit(ops)
        except StoreUnavailable as exc:
            self._fail(ops, exc)
        except SQLAlchemyError as exc:
            unavailable = isinstance(exc, OperationalError | InterfaceError)
            if len(ops) > 1 and not unavailable:
                # One bad record (a constraint, a value the database rejects) must not
                # fail the calls batched with it: retry each on its own.
                for op in ops:
                    self._commit_or_isolate([op])
                return
            error = StoreUnavailable(f"cannot write to {self._where}: {reason(exc)}")
            if unavailable:
                self._fail(ops, error)
            else:
                ops[0].future.set_exception(error)
        else:
            self._healthy, self._last_error = True, None
            for op, result in zip(ops, results, strict=True):
                op.future.set_result(result)

    def _commit(self, ops: list[_Op]) -> list[str]:
        self._check_file()
        head = self._head
        try:
            with self._engine.begin() as connection:
                if head is None:
                    head = chain.load_head(connection, self.chain_id)
                for op in ops:
                    if op.finishes:
                        seq = head[0] + 1
                        op.row.update(
                            chain_id=self.chain_id,
                            chain_seq=seq,
                            prev_hash=head[1],
                            record_hash=None,
                        )
                        op.row["record_hash"] = chain.record_hash(op.row)
                        head = (seq, op.row["record_hash"])
                self._apply_sessions(connection, ops)
                inserted = [op.row for op in ops if op.inserts]
                if inserted:
                    connection.execute(insert(calls), inserted)
                finished = [op for op in ops if op.finishes and not op.inserts]
                if finished:
                    self._update_finished(connection, finished)
        except BaseException:
            self._head = None  # reload from the database: it has not moved
            raise
        self._head = head
        for op in ops:
            if op.finishes:
                self._begun.pop(op.row["request_id"], None)
            else:
                self._begun[op.row["request_id"]] = op.row
        while len(self._begun) > self.max_pending:
            del self._begun[next(iter(self._begun))]  # the oldest; finish reads it back
        return [op.row["record_hash"] if op.finishes else op.row["request_id"] for op in ops]

    def _update_finished(self, connection: Connection, ops: list[_Op]) -> None:
        columns = (*_OUTCOME_COLUMNS, *_CHAIN_COLUMNS)
        params = [{f"b_{name}": op.row[name] for name in ("request_id", *columns)} for op in ops]
        result = connection.execute(_FINISH, params)
        if connection.dialect.supports_sane_multi_rowcount and result.rowcount != len(ops):
            raise StoreUnavailable(
                f"{len(ops) - result.rowcount} begun call(s) vanished from {self._where}"
            )

    def _apply_sessions(self, connection: Connection, ops: list[_Op]) -> None:
        """Create each session on its first call and add this batch to its counts."""
        deltas: dict[str, dict[str, Any]] = {}
        for op in ops:
            row = op.row
            if not row["session_id"]:
                continue
            delta = deltas.get(row["session_id"])
            if delta is None:
                delta = deltas[row["session_id"]] = {
                    "id": row["session_id"],
                    "issuer": row["issuer"],
                    "subject": row["subject"],
                    "groups": row["groups"],
                    "role": row["role"],
                    "started": row["time"],
                    "last_seen": row["time"],
                    **dict.fromkeys(_SESSION_COUNTERS, 0),
                }
            if op.inserts:
                delta["calls"] += 1
                delta["started"] = min(delta["started"], row["time"])
                delta["last_seen"] = max(delta["last_seen"], row["time"])
            if op.finishes:
                decision = row["decision"]
                delta["allowed"] += decision == "allow"
                delta["denied"] += decision in DENIED
                delta["errors"] += decision == "error"
                delta["reviewed"] += row["approval_id"] is not None
        if deltas:
            # Sorted: one lock order across replicas sharing a PostgreSQL store.
            if self._upsert is None:
                self._upsert = _session_upsert(connection)  # built once: it is not cacheable
            connection.execute(self._upsert, [deltas[key] for key in sorted(deltas)])

    def _request_row(self, record: CallRecord) -> dict[str, Any]:
        headers = sanitize.headers(record.request_headers)
        body = sanitize.body(record.request_body, record.request_body_size, None, self.body_limit)
        row: dict[str, Any] = dict.fromkeys(_OUTCOME_COLUMNS + _CHAIN_COLUMNS)
        row.update(
            request_id=record.request_id,
            time=datetime.fromtimestamp(float(record.time), UTC),
            session_id=record.session_id,
            issuer=record.issuer,
            subject=record.subject,
            groups=sanitize.json_safe(sorted(set(record.groups))),
            role=record.role,
            source=record.source,
            method=record.method,
            url=sanitize.url(record.url),
            http_version=record.http_version,
            service=record.service,
            operation=record.operation,
            action=record.action,
            region=record.region,
            resources=sanitize.json_safe(list(record.resources)),
            parameters=sanitize.parameters(record.parameters),
            decision=record.decision,
            rule=record.rule,
            message=record.message,
            approval_id=record.approval_id,
            request_headers=headers,
            request_body=body.content,
            request_body_size=body.size,
            request_body_sha256=body.sha256,
            user_agent=record.user_agent or _header(headers, "user-agent"),
            chain_id=self.chain_id,
        )
        if not row["request_id"] or not row["decision"]:
            raise ValueError("a call record needs a request_id and a decision")
        return _clip_text(row)

    def _outcome_fields(self, outcome: CallOutcome, base: dict[str, Any]) -> dict[str, Any]:
        body = sanitize.body(
            outcome.response_body,
            outcome.response_body_size,
            outcome.response_body_sha256,
            self.body_limit,
        )
        fields = {
            "duration_ms": round(float(outcome.duration) * 1000, 3),
            "status": _int(outcome.status),
            "upstream_status": _int(outcome.upstream_status),
            "upstream_request_id": outcome.upstream_request_id,
            "error": outcome.error,
            "masked": sanitize.json_safe(list(outcome.masked)),
            "response_headers": sanitize.headers(outcome.response_headers),
            "response_body": body.content,
            "response_body_size": body.size,
            "response_body_sha256": body.sha256,
            "decision": outcome.decision or base["decision"],
            "approval_id": outcome.approval_id or base["approval_id"],
            "request_body_size": _int(outcome.request_body_size)
            if outcome.request_body_size is not None
            else base["request_body_size"],
            "request_body_sha256": outcome.request_body_sha256 or base["request_body_sha256"],
        }
        return _clip_text(fields)

    def _check_file(self) -> None:
        """Refuse to write into a SQLite file that was deleted or replaced under us.

        A pooled connection keeps writing to a deleted file's inode without an
        error, so records would silently go nowhere.
        """
        if self._sqlite_file is None:
            return
        try:
            status = os.stat(self._sqlite_file)
        except OSError as exc:
            if self._file_identity is None:
                return  # not created yet: connecting reports the real problem
            raise StoreUnavailable(
                f"the store file {self._sqlite_file} is gone ({exc.strerror})"
            ) from None
        identity = (status.st_dev, status.st_ino)
        if self._file_identity is None:
            self._file_identity = identity
        elif identity != self._file_identity:
            self._engine.dispose()
            raise StoreUnavailable(f"the store file {self._sqlite_file} was replaced")

    def _fail(self, ops: list[_Op], exc: StoreUnavailable) -> None:
        self._healthy, self._last_error = False, str(exc)
        for op in ops:
            if not op.future.done():
                op.future.set_exception(exc)


def _session_upsert(connection: Connection) -> Any:
    """INSERT a session, or add to its counts when another call (or replica) created it."""
    dialect = connection.dialect.name
    if dialect not in _UPSERTS:
        raise StoreUnavailable(f"the record store does not support {dialect} databases")
    make_insert, greatest = _UPSERTS[dialect]
    statement = make_insert(sessions)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[sessions.c.id],
        set_={
            "last_seen": greatest(sessions.c.last_seen, new.last_seen),
            **{name: sessions.c[name] + new[name] for name in _SESSION_COUNTERS},
        },
    )


_UPSERTS = {
    "sqlite": (sqlite.insert, func.max),  # two-argument max() is SQLite's scalar max
    "postgresql": (postgresql.insert, func.greatest),
}


def _clip_text(row: dict[str, Any]) -> dict[str, Any]:
    """Strings fit their columns (PostgreSQL rejects longer ones) and hold no NUL."""
    for name, limit in _TEXT_LIMITS.items():
        value = row.get(name)
        if value is None:
            continue
        value = value if type(value) is str else str(value)
        if "\x00" in value:
            value = sanitize.text(value)
        row[name] = value[:limit] if limit and len(value) > limit else value
    return row


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _header(headers: list[list[str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)
