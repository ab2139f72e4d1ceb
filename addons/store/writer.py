"""The record writer: one background thread that commits calls in batches.

The proxy's event loop never touches the database. It queues a ``begin``
and awaits the returned future (``asyncio.wrap_future``) before forwarding
the call, so an unrecorded action never happens; concurrent begins are
group-committed in one transaction. ``finish`` completes the row and chains
its hash to the previous finished record of this writer's chain.

The writer runs for every call, so it is kept cheap. Nobody waits for an
outcome: a batch without a begin lingers briefly for the next one, so that
under load one commit (one fsync) carries a call's outcome and the next
call's request. Each row is sanitised and its JSON serialised once, when
queued work is prepared, and kept in memory from begin to finish; the
statements are plain SQL built once. On PostgreSQL a batch takes two round
trips (its statements, then COMMIT), which also bounds how long a call
waits for its request to be recorded on a distant server. Session counters
are summed in memory and written at most once a second, whenever the writer
falls idle, and on close.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Connection, Dialect, String, Table, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

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
LINGER = 0.03  # seconds a batch of outcomes waits for a begin to share its transaction
SESSION_INTERVAL = 1.0  # seconds session counters may trail the calls while the writer is busy
# A connection unused this long goes back to the pool, which checks it is alive on checkout.
HOLD_IDLE_CONNECTION = 1.0
# While the store is unavailable, outcomes are retried this often, for this long.
RETRY_INTERVAL = 0.5
RETRY_OUTCOMES_FOR = 10.0
DENIED = frozenset({"deny", "refused-identity"})
_TEXT_LIMITS = {c.name: c.type.length for c in calls.columns if isinstance(c.type, String)}
_JSON_COLUMNS = frozenset(c.name for c in calls.columns if isinstance(c.type, JSON))
_SESSION_COUNTERS = ("calls", "allowed", "denied", "reviewed", "errors")
_SESSION_COLUMNS = (
    "id",
    "issuer",
    "subject",
    "groups",
    "role",
    "started",
    "last_seen",
    *_SESSION_COUNTERS,
)
_SESSION_GROUPS = _SESSION_COLUMNS.index("groups")
_INSERT_COLUMNS = tuple(c.name for c in calls.columns if c.name != "id")
_OUTCOME_COLUMNS = (
    "duration_ms", "status", "upstream_status", "upstream_request_id", "error", "masked",
    "response_headers", "response_body", "response_body_size", "response_body_sha256",
    "decision", "approval_id", "request_body_size", "request_body_sha256",
)  # fmt: skip
# Set at finish: the writer that finishes a call chains it, whichever one began it.
_CHAIN_COLUMNS = ("chain_id", "chain_seq", "prev_hash", "record_hash")
_FINISH_COLUMNS = (*_OUTCOME_COLUMNS, *_CHAIN_COLUMNS)
_STOP = object()
# JSON as stored: keys in the caller's order. The hash covers chain.canonical_json, which
# sorts keys; the two texts differ only for objects, so only those are serialised twice.
_STORED_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def default_chain_id() -> str:
    """hostname-pid plus a nonce: two writers in one process never share a chain by accident."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class _Row:
    """A call as stored: JSON columns hold their stored text, ``hashed`` their canonical JSON."""

    values: dict[str, Any]
    hashed: dict[str, str]
    groups: Any  # the groups column's value, for the sessions table

    def set_json(self, name: str, value: Any) -> None:
        if value is None:
            self.values[name] = None
            self.hashed.pop(name, None)
            return
        self.hashed[name] = text = chain.canonical_json(value)
        self.values[name] = _STORED_JSON(value) if type(value) is dict else text


@dataclass
class _Op:
    future: Future[str]
    record: CallRecord | None = None
    request_id: str | None = None
    outcome: CallOutcome | None = None
    row: _Row = field(init=False)  # filled in the writer thread
    retry_until: float | None = None  # set when the store first failed to take it

    @property
    def inserts(self) -> bool:
        return self.record is not None

    @property
    def finishes(self) -> bool:
        return self.outcome is not None


class _Unrecordable(Exception):
    """The writer's own refusal of an op; its message quotes nothing but ids."""


class _Vanished(Exception):
    """A begun call was no longer unfinished when its outcome was written."""


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
        linger: float = LINGER,
        session_interval: float = SESSION_INTERVAL,
    ) -> None:
        self.chain_id = _text("chain_id", chain_id or default_chain_id())
        self.body_limit = body_limit
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.linger = linger
        self.session_interval = session_interval
        self._engine = open_engine(url, busy_timeout=busy_timeout)
        self._where = describe(self._engine)
        self._sqlite_file = sqlite_path(url)
        self._file_identity: tuple[int, int] | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        # Writer thread only, from here to _lock.
        # request_id -> row of calls begun and not finished, oldest first; a cache of
        # the database, so that finishing needs no read.
        self._begun: dict[str, _Row] = {}
        self._head: tuple[int, str] | None = None  # (seq, hash) of this chain's last record
        self._statements: _Statements | None = None
        self._connection: Connection | None = None  # held between batches
        self._connection_used = 0.0
        # session id -> counts of committed calls not yet in the sessions table
        self._sessions: dict[str, dict[str, Any]] = {}
        self._sessions_due: float | None = None  # when they must be written, at the latest
        self._retry: list[_Op] = []  # outcomes the store could not take yet
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
        """Complete a begun call; the future resolves to its record hash once committed.

        It may wait up to ``linger`` seconds for a ``begin`` to share its transaction.
        """
        return self._submit(_Op(Future(), request_id=request_id, outcome=outcome))

    def record(self, record: CallRecord, outcome: CallOutcome) -> Future[str]:
        """Write a call that is already over (refused before forwarding) in one step."""
        return self._submit(
            _Op(Future(), record=record, request_id=record.request_id, outcome=outcome)
        )

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued and the session counters, then stop the thread."""
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
        try:
            stop = False
            while not stop:
                ops, stop, idle = self._next_batch()
                due = self._sessions_due is not None and time.monotonic() >= self._sessions_due
                try:
                    self._write(ops, flush_sessions=stop or idle or due)
                except BaseException as exc:  # the thread must outlive any bug: fail the calls
                    self._fail(ops, StoreUnavailable(f"record writer error: {reason(exc)}"))
        finally:
            self._release_connection()
            self._fail(self._retry, StoreUnavailable(f"{self._where} was unavailable until close"))

    def _next_batch(self) -> tuple[list[_Op], bool, bool]:
        """Up to ``max_batch`` queued ops, and whether to stop, and whether the writer is idle.

        A batch of outcomes only (``finish``) waits up to ``linger`` for a begin:
        nobody waits for an outcome, and one transaction for both saves a
        commit. ``record`` does not wait, like ``begin``. Idle: nothing came that
        long, or nothing but records, or nothing before the counters or a retry were due.
        """
        batch, self._retry = self._retry, []
        wake = self._sessions_due
        if batch:
            retry = time.monotonic() + RETRY_INTERVAL
            wake = retry if wake is None else min(wake, retry)
        timeout = None if wake is None else max(0.0, wake - time.monotonic())
        try:
            op = self._queue.get(timeout=timeout)
        except queue.Empty:
            return batch, False, True
        inserts = begins = False
        deadline = time.monotonic() + self.linger
        while True:
            if op is _STOP:
                return batch, True, False
            batch.append(op)
            inserts = inserts or op.inserts
            begins = begins or op.outcome is None
            if len(batch) >= self.max_batch:
                return batch, False, False
            try:
                op = self._queue.get_nowait()
                continue
            except queue.Empty:
                if inserts:  # no outcome follows a record's: idle, unless a begin's will
                    return batch, False, not begins
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                op = self._queue.get(timeout=remaining)
            except queue.Empty:
                return batch, False, True

    def _write(self, ops: list[_Op], flush_sessions: bool) -> None:
        staged: dict[str, _Row] = {}
        finishing: set[str] = set()
        ready = []
        for op in ops:
            try:
                self._prepare(op, staged, finishing)
            except _Unrecordable as exc:
                op.future.set_exception(StoreUnavailable(f"cannot record the call: {exc}"))
            except (TypeError, ValueError, OverflowError) as exc:
                # The type only: the message may quote a field of the record.
                kind = type(exc).__name__
                op.future.set_exception(StoreUnavailable(f"cannot record the call: {kind}"))
            except SQLAlchemyError as exc:
                error = StoreUnavailable(f"cannot read {self._where}: {reason(exc)}")
                self._unavailable([op], error)
            else:
                ready.append(op)
        if ready or (flush_sessions and self._sessions):
            self._commit_or_isolate(ready, flush_sessions)

    def _prepare(self, op: _Op, staged: dict[str, _Row], finishing: set[str]) -> None:
        """Turn the op into stored row values; runs before the transaction."""
        if op.record is not None:
            op.row = self._request_row(op.record)
            staged[op.row.values["request_id"]] = op.row
        if op.outcome is not None:
            if op.record is not None:
                request_id, base = op.row.values["request_id"], op.row
            else:
                request_id = sanitize.text(op.request_id or "")
                if request_id in finishing:
                    raise _Unrecordable(f"no unfinished call {request_id!r} was begun")
                base = (
                    staged.get(request_id)
                    or self._begun.get(request_id)
                    or self._load_begun(request_id)
                )
            op.row = self._outcome_row(op.outcome, base)
            finishing.add(request_id)

    def _load_begun(self, request_id: str) -> _Row:
        """A call begun by an earlier writer (reconfigured, restarted) or evicted from memory."""
        connection = self._connect()
        try:
            with connection.begin():
                row = connection.execute(
                    select(calls).where(
                        calls.c.request_id == request_id, calls.c.chain_seq.is_(None)
                    )
                ).first()
        except SQLAlchemyError:
            self._release_connection()
            raise
        if row is None:
            raise _Unrecordable(f"no unfinished call {request_id!r} was begun")
        stored = row._mapping
        loaded = _Row({name: stored[name] for name in _INSERT_COLUMNS}, {}, stored["groups"])
        for name in _JSON_COLUMNS:
            loaded.set_json(name, stored[name])
        return loaded

    def _commit_or_isolate(self, ops: list[_Op], flush_sessions: bool) -> None:
        try:
            results = self._commit(ops, flush_sessions)
        except StoreUnavailable as exc:
            self._unavailable(ops, exc)
        except (SQLAlchemyError, _Vanished, OverflowError, ValueError, TypeError) as exc:
            # A driver's own error on a value (OverflowError, ...) is one bad record too.
            unavailable = isinstance(exc, OperationalError | InterfaceError)
            if not unavailable and ops and (flush_sessions or len(ops) > 1):
                # One bad record (a constraint, a value the database rejects) must not
                # fail the calls batched with it: retry each on its own, and leave the
                # session counts to the next write.
                for op in ops:
                    self._commit_or_isolate([op], flush_sessions=False)
                return
            error = StoreUnavailable(f"cannot write to {self._where}: {reason(exc)}")
            if unavailable or not ops:
                self._unavailable(ops, error)
            else:
                ops[0].future.set_exception(error)
        else:
            self._healthy, self._last_error = True, None
            for op, result in zip(ops, results, strict=True):
                op.future.set_result(result)

    def _commit(self, ops: list[_Op], flush_sessions: bool) -> list[str]:
        self._check_file()
        if self._statements is None:
            self._statements = _Statements(self._engine.dialect)
        statements = self._statements
        counted = _session_counts(ops)
        if flush_sessions:
            # Into a copy: the pending counts stay as they are should the transaction fail.
            writing = {key: dict(delta) for key, delta in self._sessions.items()}
            _add_session_counts(writing, counted)
        head = self._head
        connection = self._connect()
        try:
            with connection.begin():
                if head is None:
                    head = chain.load_head(connection, self.chain_id)
                inserted, finished = [], []
                for op in ops:
                    values = op.row.values
                    if op.finishes:
                        seq = head[0] + 1
                        values["chain_id"] = self.chain_id
                        values["chain_seq"] = seq
                        values["prev_hash"] = head[1]
                        values["record_hash"] = None
                        values["record_hash"] = chain.prepared_hash(values, op.row.hashed)
                        head = (seq, values["record_hash"])
                    if op.inserts:
                        inserted.append(statements.insert_parameters(values))
                    else:
                        finished.append(statements.finish_parameters(values))
                # Sorted: one lock order across replicas sharing a PostgreSQL store.
                counted_sessions = (
                    [statements.session_parameters(writing[key]) for key in sorted(writing)]
                    if flush_sessions
                    else []
                )
                matched = statements.execute(connection, inserted, finished, counted_sessions)
                if matched is not None and matched != len(finished):
                    raise _Vanished(f"{len(finished) - matched} begun call(s) vanished")
        except BaseException:
            self._head = None  # reload from the database: it has not moved
            self._release_connection()
            raise
        self._head = head
        self._connection_used = time.monotonic()
        if flush_sessions:
            self._sessions, self._sessions_due = {}, None
        elif counted:
            _add_session_counts(self._sessions, counted)
            if self._sessions_due is None:
                self._sessions_due = time.monotonic() + self.session_interval
        for op in ops:
            if op.finishes:
                self._begun.pop(op.row.values["request_id"], None)
            else:
                self._begun[op.row.values["request_id"]] = op.row
        while len(self._begun) > self.max_pending:
            del self._begun[next(iter(self._begun))]  # the oldest; finish reads it back
        return [
            op.row.values["record_hash"] if op.finishes else op.row.values["request_id"]
            for op in ops
        ]

    def _connect(self) -> Connection:
        """The connection kept from the last batch, unless it sat idle (the pool checks those)."""
        if self._connection is not None:
            if time.monotonic() - self._connection_used < HOLD_IDLE_CONNECTION:
                return self._connection
            self._release_connection()
        self._connection = self._engine.connect()
        self._connection_used = time.monotonic()
        return self._connection

    def _release_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                connection.close()

    def _request_row(self, record: CallRecord) -> _Row:
        headers = sanitize.headers(record.request_headers)
        body = sanitize.body(record.request_body, record.request_body_size, None, self.body_limit)
        groups = sanitize.json_safe(sorted(set(record.groups)))
        values: dict[str, Any] = dict.fromkeys(_INSERT_COLUMNS)
        values.update(
            request_id=_text("request_id", record.request_id),
            time=datetime.fromtimestamp(float(record.time), UTC),
            session_id=_text("session_id", record.session_id),
            issuer=_text("issuer", record.issuer),
            subject=_text("subject", record.subject),
            role=_text("role", record.role),
            source=_text("source", record.source),
            method=_text("method", record.method),
            url=sanitize.url(record.url),
            http_version=_text("http_version", record.http_version),
            service=_text("service", record.service),
            operation=_text("operation", record.operation),
            action=_text("action", record.action),
            region=_text("region", record.region),
            decision=_text("decision", record.decision),
            rule=_text("rule", record.rule),
            message=_text("message", record.message),
            approval_id=_text("approval_id", record.approval_id),
            request_body=body.content,
            request_body_size=_int(body.size),
            request_body_sha256=body.sha256,
            user_agent=_text("user_agent", record.user_agent or _header(headers, "user-agent")),
            chain_id=self.chain_id,
        )
        if not values["request_id"] or not values["decision"]:
            raise _Unrecordable("a call record needs a request_id and a decision")
        row = _Row(values, {}, groups)
        row.set_json("groups", groups)
        row.set_json("resources", sanitize.json_safe(list(record.resources)))
        row.set_json("parameters", sanitize.parameters(record.parameters))
        row.set_json("request_headers", headers)
        return row

    def _outcome_row(self, outcome: CallOutcome, base: _Row) -> _Row:
        """``base`` completed by ``outcome``: a new row, ``base`` stays as it is."""
        body = sanitize.body(
            outcome.response_body,
            outcome.response_body_size,
            outcome.response_body_sha256,
            self.body_limit,
        )
        begun = base.values
        values = dict(begun)
        values.update(
            duration_ms=round(float(outcome.duration) * 1000, 3),
            status=_int(outcome.status),
            upstream_status=_int(outcome.upstream_status),
            upstream_request_id=_text("upstream_request_id", outcome.upstream_request_id),
            error=_text("error", outcome.error),
            response_body=body.content,
            response_body_size=_int(body.size),
            response_body_sha256=_text("response_body_sha256", body.sha256),
            decision=_text("decision", outcome.decision) or begun["decision"],
            approval_id=_text("approval_id", outcome.approval_id) or begun["approval_id"],
            request_body_size=_int(outcome.request_body_size)
            if outcome.request_body_size is not None
            else begun["request_body_size"],
            request_body_sha256=_text("request_body_sha256", outcome.request_body_sha256)
            or begun["request_body_sha256"],
        )
        row = _Row(values, dict(base.hashed), base.groups)
        row.set_json("masked", sanitize.json_safe(list(outcome.masked)))
        row.set_json("response_headers", sanitize.headers(outcome.response_headers))
        return row

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
            self._release_connection()
            self._engine.dispose()
            raise StoreUnavailable(f"the store file {self._sqlite_file} was replaced")

    def _unavailable(self, ops: list[_Op], exc: StoreUnavailable) -> None:
        """The store failed: outcomes of begun calls are kept a while, to be written once it
        is back rather than leave their calls unfinished; the other ops fail now."""
        now = time.monotonic()
        failed = []
        for op in ops:
            if op.inserts:
                failed.append(op)
                continue
            if op.retry_until is None:
                op.retry_until = now + RETRY_OUTCOMES_FOR
            (self._retry if now < op.retry_until else failed).append(op)
        self._fail(failed, exc)

    def _fail(self, ops: list[_Op], exc: StoreUnavailable) -> None:
        self._healthy, self._last_error = False, str(exc)
        for op in ops:
            if not op.future.done():
                op.future.set_exception(exc)


class _Statements:
    """The writer's statements for one dialect, built once.

    Rows are inserted and finished with plain SQL: no statement compilation or
    per-value type processing per call. JSON columns are bound as the text the
    writer serialised; other columns go through their type's own bind
    processor, so stored values match SQLAlchemy's. On PostgreSQL a batch goes
    in one psycopg pipeline (see ``_execute_pipelined``).
    """

    def __init__(self, dialect: Dialect) -> None:
        if dialect.name not in _DIALECTS or dialect.paramstyle not in _PLACEHOLDERS:
            raise StoreUnavailable(f"the record store does not support {dialect.name} databases")
        mark = _PLACEHOLDERS[dialect.paramstyle]
        # psycopg's pipeline sends a batch's BEGIN and statements in one round trip.
        self._pipelined = dialect.name == "postgresql" and dialect.driver == "psycopg"
        json_mark = mark if dialect.name == "sqlite" else f"CAST({mark} AS JSON)"
        quote = dialect.identifier_preparer.quote

        def placeholder(name: str) -> str:
            return json_mark if name in _JSON_COLUMNS else mark

        def session_placeholder(name: str) -> str:
            return json_mark if name == "groups" else mark

        table = quote(calls.name)
        self.insert = (
            f"INSERT INTO {table} ({', '.join(quote(name) for name in _INSERT_COLUMNS)}) "
            f"VALUES ({', '.join(placeholder(name) for name in _INSERT_COLUMNS)})"
        )
        assignments = ", ".join(f"{quote(name)} = {placeholder(name)}" for name in _FINISH_COLUMNS)
        self.finish = (
            f"UPDATE {table} SET {assignments} "
            f"WHERE {quote('request_id')} = {mark} AND {quote('chain_seq')} IS NULL"
        )
        self._finish_returning = f"{self.finish} RETURNING 1"  # a row per call completed
        self._insert_processors = _bind_processors(calls, dialect, _INSERT_COLUMNS)
        self._finish_processors = _bind_processors(calls, dialect, _FINISH_COLUMNS)
        # A session's first call creates it, later ones (from any replica) add to its counts.
        table = quote(sessions.name)
        counts = ", ".join(
            f"{quote(name)} = {table}.{quote(name)} + excluded.{quote(name)}"
            for name in _SESSION_COUNTERS
        )
        last_seen = quote("last_seen")
        greatest = "max" if dialect.name == "sqlite" else "greatest"  # SQLite's scalar max
        self.upsert = (
            f"INSERT INTO {table} ({', '.join(quote(name) for name in _SESSION_COLUMNS)}) "
            f"VALUES ({', '.join(session_placeholder(name) for name in _SESSION_COLUMNS)}) "
            f"ON CONFLICT ({quote('id')}) DO UPDATE SET {last_seen} = "
            f"{greatest}({table}.{last_seen}, excluded.{last_seen}), {counts}"
        )
        self._session_processors = _bind_processors(sessions, dialect, _SESSION_COLUMNS)

    def execute(
        self,
        connection: Connection,
        inserted: list[tuple[Any, ...]],
        finished: list[tuple[Any, ...]],
        counted_sessions: list[tuple[Any, ...]],
    ) -> int | None:
        """Run one batch's statements; how many begun calls its finishes matched (None: the
        driver cannot tell)."""
        if self._pipelined:
            return _execute_pipelined(
                connection,
                (self.insert, inserted),
                (self._finish_returning, finished),
                (self.upsert, counted_sessions),
            )
        matched = None
        if inserted:
            connection.exec_driver_sql(self.insert, inserted)
        if finished:
            result = connection.exec_driver_sql(self.finish, finished)
            if connection.dialect.supports_sane_multi_rowcount or len(finished) == 1:
                matched = result.rowcount
        if counted_sessions:
            connection.exec_driver_sql(self.upsert, counted_sessions)
        return matched

    def insert_parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        parameters = [values[name] for name in _INSERT_COLUMNS]
        for index, process in self._insert_processors:
            parameters[index] = process(parameters[index])
        return tuple(parameters)

    def session_parameters(self, delta: dict[str, Any]) -> tuple[Any, ...]:
        parameters = [delta[name] for name in _SESSION_COLUMNS]
        parameters[_SESSION_GROUPS] = _STORED_JSON(delta["groups"])
        for index, process in self._session_processors:
            parameters[index] = process(parameters[index])
        return tuple(parameters)

    def finish_parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        parameters = [values[name] for name in _FINISH_COLUMNS]
        for index, process in self._finish_processors:
            parameters[index] = process(parameters[index])
        parameters.append(values["request_id"])
        return tuple(parameters)


_DIALECTS = ("sqlite", "postgresql")  # the statements are theirs: ON CONFLICT, CAST AS JSON
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _bind_processors(
    table: Table, dialect: Dialect, names: tuple[str, ...]
) -> list[tuple[int, Any]]:
    """(index, processor) of each of ``names`` whose type converts values for the driver."""
    processors = []
    for index, name in enumerate(names):
        column_type = table.c[name].type
        if isinstance(column_type, JSON):
            continue  # serialised by the writer already
        process = column_type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((index, process))
    return processors


def _execute_pipelined(
    connection: Connection,
    inserting: tuple[str, list[tuple[Any, ...]]],
    finishing: tuple[str, list[tuple[Any, ...]]],
    counting: tuple[str, list[tuple[Any, ...]]],
) -> int:
    """The batch in one psycopg pipeline: BEGIN and every statement in one round trip,
    COMMIT in the next (after the caller has checked what the finishes matched).

    In pipeline mode a cursor's rowcount is wrong after ``executemany``, so the finish
    returns a row per call it completed. Driver errors come out of the pipeline unwrapped;
    they are raised as SQLAlchemy's, which the writer sorts into outage and bad record.
    """
    driver = connection.connection.driver_connection
    dbapi_error = connection.dialect.loaded_dbapi.Error
    batches = (inserting, finishing, counting)
    cursors = [driver.cursor() for _ in batches]
    _, completed, _ = cursors
    try:
        with driver.pipeline():
            for cursor, (statement, rows) in zip(cursors, batches, strict=True):
                if rows:
                    cursor.executemany(statement, rows, returning=cursor is completed)
        matched = 0
        if finishing[1]:
            while True:
                matched += len(completed.fetchall())
                if not completed.nextset():
                    break
        return matched
    except dbapi_error as exc:
        # Which statement failed is only known to the server: its message says.
        raise DBAPIError.instance(
            None, None, exc, dbapi_error, hide_parameters=True, dialect=connection.dialect
        ) from exc
    finally:
        for cursor in cursors:
            cursor.close()


def _session_counts(ops: list[_Op]) -> dict[str, dict[str, Any]]:
    """What ``ops`` add to their sessions: a row for each session's first call, counts."""
    counts: dict[str, dict[str, Any]] = {}
    for op in ops:
        values = op.row.values
        session_id = values["session_id"]
        if not session_id:
            continue
        at = values["time"]
        delta = counts.get(session_id)
        if delta is None:
            delta = counts[session_id] = {
                "id": session_id,
                "issuer": values["issuer"],
                "subject": values["subject"],
                "groups": op.row.groups,
                "role": values["role"],
                "started": at,
                "last_seen": at,
                **dict.fromkeys(_SESSION_COUNTERS, 0),
            }
        if op.inserts:
            delta["calls"] += 1
            delta["started"] = min(delta["started"], at)
            delta["last_seen"] = max(delta["last_seen"], at)
        if op.finishes:
            decision = values["decision"]
            delta["allowed"] += decision == "allow"
            delta["denied"] += decision in DENIED
            delta["errors"] += decision == "error"
            delta["reviewed"] += values["approval_id"] is not None
    return counts


def _add_session_counts(into: dict[str, dict[str, Any]], counts: dict[str, dict[str, Any]]) -> None:
    for session_id, delta in counts.items():
        total = into.get(session_id)
        if total is None:
            into[session_id] = delta
            continue
        for name in _SESSION_COUNTERS:
            total[name] += delta[name]
        total["started"] = min(total["started"], delta["started"])
        total["last_seen"] = max(total["last_seen"], delta["last_seen"])


def _text(name: str, value: Any) -> str | None:
    """A string column's value: storable text (see ``sanitize.text``) that fits the column."""
    if value is None:
        return None
    value = sanitize.text(value if type(value) is str else str(value))
    limit = _TEXT_LIMITS[name]
    return value[:limit] if limit and len(value) > limit else value


_BIGINT = range(-(2**63), 2**63)


def _int(value: Any) -> int | None:
    """An integer column's value; one no database column holds (a lying Content-Length)
    is unknown, not a reason to fail the batch it came in."""
    if value is None:
        return None
    number = int(value)
    return number if number in _BIGINT else None


def _header(headers: list[list[str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)
