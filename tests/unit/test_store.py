"""The record store (addons.store): migrations, two-phase writes, chains, revocations, queries.

Every test that takes ``store_url`` runs on SQLite and, when
``AWSGATE_TEST_PG_URL`` names a PostgreSQL server, on a fresh database there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, func, insert, select, text

from addons.devstack import throwaway_database
from addons.store import chain, queries, revocations, sanitize
from addons.store.db import (
    StoreUnavailable,
    connect,
    current_revision,
    head_revision,
    migrate,
    open_engine,
)
from addons.store.models import calls, metadata, sessions
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

ROOT = Path(__file__).resolve().parents[2]
NOW = time.time()
WAIT = 30  # seconds a future may take before the test gives up (never reached when healthy)
# Fake credentials: distinctive so that a test can prove none reaches the store.
SECRET = "FAKE-SECRET-4f1c9a"
PG_HINT = (
    "PostgreSQL tests need AWSGATE_TEST_PG_URL=postgresql://USER@127.0.0.1:PORT/DB "
    "(a server where USER may create databases)"
)


# -- fixtures and builders -------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(migrated: bool = True) -> Iterator[str]:
    """A throw-away database on the server named by AWSGATE_TEST_PG_URL."""
    base = os.environ.get("AWSGATE_TEST_PG_URL")
    if not base:
        pytest.skip(PG_HINT)
    with throwaway_database(base, "awsgate_test") as url:
        if migrated:
            migrate(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        with postgres_database() as url:
            yield url
        return
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        with postgres_database(migrated=False) as url:
            yield url
        return
    yield f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def writer(store_url: str) -> Iterator[RecordWriter]:
    with RecordWriter(store_url, chain_id="test-chain") as writer:
        yield writer


def call(request_id: str | None = None, **overrides: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "request_id": request_id or uuid.uuid4().hex,
        "time": NOW,
        "decision": "allow",
        "method": "POST",
        "url": "https://lambda.us-east-1.amazonaws.com/2015-03-31/functions/build/invocations",
        "source": "127.0.0.1:50123",
        "session_id": "sess-1",
        "issuer": "https://idp.test",
        "subject": "repo:acme/infra:ref:refs/heads/main",
        "groups": ["deployers", "ci"],
        "role": "deployer",
        "service": "lambda",
        "operation": "Invoke",
        "region": "us-east-1",
        "resources": ["arn:aws:lambda:us-east-1:123456789012:function:build"],
        "parameters": {"FunctionName": "build"},
        "rule": "ci-may-invoke",
        "request_headers": [
            ("Host", "lambda.us-east-1.amazonaws.com"),
            ("User-Agent", "Boto3/1.44.8"),
        ],
        "request_body": b'{"go": true}',
    }
    fields.update(overrides)
    return CallRecord(**fields)


def outcome(**overrides: Any) -> CallOutcome:
    fields: dict[str, Any] = {
        "duration": 0.042,
        "status": 200,
        "upstream_status": 200,
        "upstream_request_id": "b7e0f6d2-upstream",
        "response_headers": [("Content-Type", "application/json")],
        "response_body": b'{"StatusCode": 200}',
    }
    fields.update(overrides)
    return CallOutcome(**fields)


def done(future: Future[str]) -> str:
    return future.result(timeout=WAIT)


def failure(future: Future[str]) -> StoreUnavailable:
    with pytest.raises(StoreUnavailable) as raised:
        future.result(timeout=WAIT)
    return raised.value


def test_a_record_that_cannot_be_prepared_is_refused_without_quoting_it(
    writer: RecordWriter,
) -> None:
    error = failure(writer.begin(call(time="s3cr3t-not-a-time")))
    assert "cannot record the call: ValueError" in str(error)
    quoted = "s3cr3t" in str(error)
    assert not quoted


def rows(engine: Engine, *where: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(select(calls).where(*where).order_by(calls.c.id))
        return [dict(row._mapping) for row in result]


def write_calls(
    writer: RecordWriter, count: int, start: float = NOW, **overrides: Any
) -> list[str]:
    ids = []
    for index in range(count):
        record = call(time=start + index, **overrides)
        done(writer.begin(record))
        done(writer.finish(record.request_id, outcome()))
        ids.append(record.request_id)
    return ids


@contextlib.contextmanager
def writer_paused(writer: RecordWriter) -> Iterator[threading.Event]:
    """Hold the writer's next transaction until the yielded event is set; count commits."""
    release, entered = threading.Event(), threading.Event()
    commits: list[int] = []

    def hold(_connection: Any) -> None:
        if not release.is_set():
            entered.set()
            release.wait(WAIT)

    def count(_connection: Any) -> None:
        commits.append(1)

    event.listen(writer._engine, "begin", hold)
    event.listen(writer._engine, "commit", count)
    release.entered = entered  # type: ignore[attr-defined]
    release.commits = commits  # type: ignore[attr-defined]
    try:
        yield release
    finally:
        release.set()
        event.remove(writer._engine, "begin", hold)
        event.remove(writer._engine, "commit", count)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- migrations ------------------------------------------------------------------------


def test_migrate_creates_the_head_schema_and_is_idempotent(empty_store_url: str) -> None:
    migrate(empty_store_url)
    migrate(empty_store_url)
    engine = open_engine(empty_store_url)
    try:
        assert current_revision(engine) == head_revision() == "0003"
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, metadata) == []  # models.py matches the migrations
    finally:
        engine.dispose()


def test_store_from_revision_1_is_migrated_with_its_records_intact(empty_store_url: str) -> None:
    migrate(empty_store_url, "0001")
    engine = open_engine(empty_store_url)
    old = {
        "request_id": "from-revision-1",
        "time": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "duration_ms": 12.5,
        "session_id": "old-session",
        "subject": "old-agent",
        "groups": ["ops"],
        "action": "s3:ListBuckets",
        "service": "s3",
        "operation": "ListBuckets",
        "resources": [],
        "parameters": {"MaxBuckets": 10},
        "decision": "allow",
        "status": 200,
        "upstream_status": 200,
        "request_headers": [["User-Agent", "aws-cli/1.46"]],
        "response_body": b"<ListAllMyBucketsResult/>",
        "chain_id": "replica-a",
        "chain_seq": 1,
        "prev_hash": chain.GENESIS,
    }
    old["record_hash"] = chain.record_hash(old)
    try:
        assert current_revision(engine) == "0001"
        with engine.begin() as connection:
            connection.execute(insert(calls).values(old))
    finally:
        engine.dispose()

    migrate(empty_store_url)

    engine = open_engine(empty_store_url)
    try:
        assert current_revision(engine) == "0003"
        (stored,) = rows(engine)
        for key, value in old.items():
            assert stored[key] == value, key
        assert stored["user_agent"] is None  # the column revision 0002 added
        assert chain.verify(engine).ok
        # The same replica carries its chain on across the upgrade.
        with RecordWriter(empty_store_url, chain_id="replica-a") as writer:
            write_calls(writer, 1)
        report = chain.verify(engine)
        assert (report.ok, report.records) == (True, 2)
        assert rows(engine)[-1]["chain_seq"] == 2
    finally:
        engine.dispose()


def test_readers_refuse_a_missing_or_unmigrated_store(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="no record store"):
        connect(f"sqlite:///{tmp_path / 'typo.sqlite'}")
    assert not (tmp_path / "typo.sqlite").exists()
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    migrate(url, "0001")
    with pytest.raises(StoreUnavailable, match="revision 0001"):
        connect(url)
    migrate(url)
    connect(url).dispose()


def test_sqlite_store_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    engine = open_engine(url, busy_timeout=1.5)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 1500
    finally:
        engine.dispose()


# -- two-phase writes ------------------------------------------------------------------


def test_begin_commits_the_request_before_finish_completes_it(
    writer: RecordWriter, engine: Engine
) -> None:
    record = call()
    assert done(writer.begin(record)) == record.request_id

    (begun,) = rows(engine)  # visible to another connection: committed
    assert (begun["decision"], begun["action"], begun["status"]) == ("allow", "lambda:Invoke", None)
    assert begun["record_hash"] is None and begun["chain_seq"] is None
    assert begun["request_body"] == b'{"go": true}'
    assert begun["user_agent"] == "Boto3/1.44.8"
    assert chain.verify(engine).unfinished == 1

    record_hash = done(writer.finish(record.request_id, outcome(masked=["Payload.password"])))

    (finished,) = rows(engine)
    assert finished["record_hash"] == record_hash
    assert (finished["status"], finished["upstream_status"]) == (200, 200)
    assert finished["duration_ms"] == 42.0
    assert finished["upstream_request_id"] == "b7e0f6d2-upstream"
    assert finished["masked"] == ["Payload.password"]
    assert finished["response_body"] == b'{"StatusCode": 200}'
    assert (finished["chain_id"], finished["chain_seq"]) == ("test-chain", 1)
    report = chain.verify(engine)
    assert (report.ok, report.records, report.unfinished) == (True, 1, 0)
    assert writer.healthy and writer.last_error is None


def test_a_refused_call_is_recorded_in_one_step(writer: RecordWriter, engine: Engine) -> None:
    refused = call(decision="refused-identity", session_id=None, subject=None, rule="bad-token")
    done(writer.record(refused, outcome(status=403, upstream_status=None, response_body=b"<E/>")))
    (row,) = rows(engine)
    assert (row["decision"], row["status"], row["upstream_status"]) == (
        "refused-identity",
        403,
        None,
    )
    assert row["chain_seq"] == 1
    assert chain.verify(engine).ok


def test_finish_can_change_the_decision_after_approval(
    writer: RecordWriter, engine: Engine
) -> None:
    held = call(decision="review", approval_id="appr-7")
    done(writer.begin(held))
    done(writer.finish(held.request_id, outcome(decision="deny", status=403, upstream_status=None)))
    (row,) = rows(engine)
    assert (row["decision"], row["approval_id"]) == ("deny", "appr-7")


def test_finishing_an_unknown_or_finished_call_fails(writer: RecordWriter) -> None:
    assert "no unfinished call" in str(failure(writer.finish("never-begun", outcome())))
    record = call()
    done(writer.record(record, outcome()))
    assert "no unfinished call" in str(failure(writer.finish(record.request_id, outcome())))
    assert writer.healthy  # a caller's mistake, not a store failure


def test_a_call_begun_by_an_earlier_writer_is_finished_by_the_next(
    store_url: str, engine: Engine
) -> None:
    record = call()
    with RecordWriter(store_url, chain_id="before-reload") as first:
        done(first.begin(record))
    with RecordWriter(store_url, chain_id="after-reload", max_pending=2) as second:
        done(second.finish(record.request_id, outcome()))
        others = [call() for _ in range(5)]
        for other in others:  # more than max_pending in flight: the oldest are read back
            done(second.begin(other))
        for other in others:
            done(second.finish(other.request_id, outcome()))
    assert {row["chain_id"] for row in rows(engine)} == {"after-reload"}
    report = chain.verify(engine)
    assert (report.ok, report.records, report.unfinished) == (True, 6, 0)


def test_2000_calls_from_20_threads_are_all_recorded_and_chained(
    writer: RecordWriter, engine: Engine
) -> None:
    threads_count, per_thread = 20, 100
    errors: list[BaseException] = []

    def agent(index: int) -> None:
        try:
            for n in range(per_thread):
                record = call(session_id=f"sess-{index}", time=NOW + n)
                done(writer.begin(record))
                done(writer.finish(record.request_id, outcome()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with engine.connect() as connection:
        finished = connection.execute(
            select(func.count()).select_from(calls).where(calls.c.record_hash.is_not(None))
        ).scalar_one()
        counts = connection.execute(select(func.sum(sessions.c.calls), func.count())).one()
    assert finished == threads_count * per_thread
    assert tuple(counts) == (2000, 20)
    report = chain.verify(engine)
    assert (report.ok, report.records, report.unfinished) == (True, 2000, 0)


def test_concurrent_begins_are_group_committed(writer: RecordWriter, engine: Engine) -> None:
    first = call()
    with writer_paused(writer) as release:
        pending = [writer.begin(first)]
        assert release.entered.wait(WAIT)  # the writer is inside the first transaction
        pending += [writer.begin(call()) for _ in range(99)]
        release.set()
        for future in pending:
            done(future)
        assert len(release.commits) == 2  # the first call, then the 99 queued behind it
    assert len(rows(engine)) == 100


def test_one_bad_record_does_not_fail_its_batch(writer: RecordWriter, engine: Engine) -> None:
    done(writer.begin(call("taken")))
    with writer_paused(writer) as release:
        pending = [writer.begin(call())]
        assert release.entered.wait(WAIT)
        duplicate = writer.begin(call("taken"))
        others = [writer.begin(call()) for _ in range(5)]
        release.set()
        for future in [*pending, *others]:
            done(future)
        assert "cannot write" in str(failure(duplicate))
    assert len(rows(engine)) == 7


def test_a_size_no_column_holds_is_unknown_and_fails_nothing(
    writer: RecordWriter, engine: Engine
) -> None:
    """A streamed upload's size is the agent's Content-Length, whatever it claims."""
    begun = call()
    done(writer.begin(begun))
    with writer_paused(writer) as release:
        finished = writer.finish(begun.request_id, outcome())
        assert release.entered.wait(WAIT)
        lying = call(request_body=None, request_body_size=10**20)
        lied = writer.begin(lying)
        other = writer.begin(call())
        release.set()
        for future in (finished, lied, other):
            done(future)
    (row,) = rows(engine, calls.c.request_id == lying.request_id)
    assert row["request_body_size"] is None
    assert len(rows(engine)) == 3


def test_close_writes_everything_queued(store_url: str, engine: Engine) -> None:
    writer = RecordWriter(store_url)
    pending = [writer.begin(call()) for _ in range(50)]
    writer.close()
    assert all(future.done() and future.exception() is None for future in pending)
    assert len(rows(engine)) == 50
    assert "closed" in str(failure(writer.begin(call())))


# -- what is stored --------------------------------------------------------------------


def test_credentials_are_redacted_even_when_the_caller_forgot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    record = call(
        url=(
            "https://bucket.s3.amazonaws.com/key?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIDFAKE%2F20250101&X-Amz-Signature={SECRET}"
            f"&X-Amz-Security-Token={SECRET}&versionId=3"
        ),
        request_headers=[
            ("Host", "bucket.s3.amazonaws.com"),
            ("Authorization", f"AWS4-HMAC-SHA256 Credential=AKIDFAKE/x, Signature={SECRET}"),
            ("X-Amz-Security-Token", SECRET),
            ("Proxy-Authorization", f"Basic {SECRET}"),
            ("Cookie", f"session={SECRET}"),
            ("x-amz-server-side-encryption-customer-key", SECRET),
        ],
        parameters={"RoleArn": "arn:aws:iam::1:role/r", "WebIdentityToken": SECRET},
        request_body=f"Action=AssumeRoleWithWebIdentity&WebIdentityToken={SECRET}&x=1".encode(),
    )
    minted = (
        f"<Credentials><AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>{SECRET}"
        f"</SecretAccessKey><SessionToken>{SECRET}</SessionToken></Credentials>"
    ).encode()
    with RecordWriter(url) as writer:
        done(writer.begin(record))
        done(
            writer.finish(
                record.request_id,
                outcome(
                    response_headers=[("Set-Cookie", f"s={SECRET}"), ("X-Ok", "yes")],
                    response_body=minted,
                ),
            )
        )
    engine = open_engine(url)
    try:
        (row,) = rows(engine)
    finally:
        engine.dispose()
    headers = dict(row["request_headers"])
    assert headers["Authorization"] == "[redacted]"
    assert headers["Host"] == "bucket.s3.amazonaws.com"
    assert dict(row["response_headers"]) == {"Set-Cookie": "[redacted]", "X-Ok": "yes"}
    assert "versionId=3" in row["url"] and "X-Amz-Signature=[redacted]" in row["url"]
    assert row["parameters"] == {
        "RoleArn": "arn:aws:iam::1:role/r",
        "WebIdentityToken": "[redacted]",
    }
    assert (
        row["request_body"] == b"Action=AssumeRoleWithWebIdentity&WebIdentityToken=[redacted]&x=1"
    )
    assert (
        b"<AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>[redacted]<" in row["response_body"]
    )
    for path in tmp_path.iterdir():  # the database file, its WAL, anything
        assert SECRET.encode() not in path.read_bytes(), path.name


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (
            "https://h/k%2Fx?a=%2F1&X-Amz-Signature=s",
            "https://h/k%2Fx?a=%2F1&X-Amz-Signature=[redacted]",
        ),
        (
            "https://h/?Signature=s&AWSAccessKeyId=AKID",
            "https://h/?Signature=[redacted]&AWSAccessKeyId=[redacted]",
        ),
        ("https://h/?x-amz-security-token=t", "https://h/?x-amz-security-token=[redacted]"),
        ("https://h/?list-type=2&prefix=a+b", "https://h/?list-type=2&prefix=a+b"),
        ("https://h/path", "https://h/path"),
    ],
)
def test_credential_query_parameters_are_redacted_and_the_rest_kept(raw: str, stored: str) -> None:
    assert sanitize.url(raw) == stored


def test_large_bodies_are_kept_as_size_and_sha256(writer: RecordWriter, engine: Engine) -> None:
    big = os.urandom(64 * 1024 + 1)
    record = call(request_body=big)
    done(writer.begin(record))
    done(writer.finish(record.request_id, outcome(response_body=None, response_body_size=5 << 30)))
    (row,) = rows(engine)
    assert row["request_body"] is None
    assert row["request_body_size"] == len(big)
    assert row["request_body_sha256"] == hashlib.sha256(big).hexdigest()
    assert (row["response_body"], row["response_body_size"]) == (None, 5 << 30)


def test_calls_are_grouped_into_sessions(writer: RecordWriter, engine: Engine) -> None:
    def one(session: str | None, decision: str, at: float, **extra: Any) -> None:
        record = call(session_id=session, decision=decision, time=at, **extra)
        done(writer.record(record, outcome()))

    one("sess-a", "allow", NOW)
    one("sess-a", "deny", NOW + 10)
    one("sess-a", "error", NOW + 5)
    one("sess-a", "review", NOW + 20, approval_id="appr-1")
    one("sess-b", "allow", NOW + 1, subject="other")
    one(None, "refused-identity", NOW + 2, subject=None)

    found = {row["id"]: row for row in queries.list_sessions(engine)}
    assert set(found) == {"sess-a", "sess-b"}
    a = found["sess-a"]
    assert (a["calls"], a["allowed"], a["denied"], a["errors"], a["reviewed"]) == (4, 1, 1, 1, 1)
    assert a["started"].timestamp() == pytest.approx(NOW, abs=1e-3)
    assert a["last_seen"].timestamp() == pytest.approx(NOW + 20, abs=1e-3)
    assert (a["subject"], a["groups"], a["role"]) == (
        "repo:acme/infra:ref:refs/heads/main",
        ["ci", "deployers"],
        "deployer",
    )
    in_order = [row["decision"] for row in queries.session_calls(engine, "sess-a")]
    assert in_order == ["allow", "error", "deny", "review"]


# -- an unavailable store --------------------------------------------------------------


def test_a_store_in_a_missing_directory_fails_fast_then_recovers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone' / 'store.sqlite'}"
    with RecordWriter(url) as writer:
        error = failure(writer.begin(call()))
        assert "unable to open database file" in str(error)
        assert not writer.healthy and "unable to open" in (writer.last_error or "")
        (tmp_path / "gone").mkdir()
        migrate(url)
        done(writer.begin(call()))
        assert writer.healthy


def test_a_store_file_replaced_at_run_time_fails_the_next_begin(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    migrate(f"sqlite:///{path}")
    with RecordWriter(f"sqlite:///{path}") as writer:
        done(writer.begin(call()))
        for leftover in tmp_path.glob("store.sqlite*"):
            leftover.unlink()
        path.mkdir()  # root ignores permissions; a directory in its place stops anyone
        error = str(failure(writer.begin(call())))
        assert str(path) in error and "was replaced" in error
        assert not writer.healthy


def test_a_locked_store_fails_after_the_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    blocker = open_engine(url)
    with RecordWriter(url, busy_timeout=0.2) as writer, blocker.connect() as connection:
        done(writer.begin(call()))
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
        assert "database is locked" in str(failure(writer.begin(call())))
        connection.exec_driver_sql("ROLLBACK")
        done(writer.begin(call()))
        assert writer.healthy
    blocker.dispose()


def test_an_unreachable_postgresql_fails_fast_without_leaking_the_password() -> None:
    url = f"postgresql://awsgate:{SECRET}@127.0.0.1:{free_port()}/awsgate"
    with RecordWriter(url) as writer:
        error = failure(writer.begin(call()))
    assert "127.0.0.1" in str(error)
    assert SECRET not in str(error) and SECRET not in (writer.last_error or "")
    assert not writer.healthy


# -- hash chains -----------------------------------------------------------------------


def test_an_edited_record_breaks_the_chain_at_that_record(
    writer: RecordWriter, engine: Engine
) -> None:
    write_calls(writer, 5)
    third = rows(engine)[2]
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE calls SET rule = 'edited' WHERE id = :id"), {"id": third["id"]}
        )
    report = chain.verify(engine)
    assert not report.ok
    (broken,) = report.broken
    assert (broken.record_id, broken.seq, broken.request_id) == (
        third["id"],
        3,
        third["request_id"],
    )
    assert "contents do not match" in broken.problem
    assert report.records == 2


def test_an_edited_body_or_hash_is_detected(writer: RecordWriter, engine: Engine) -> None:
    write_calls(writer, 3)
    first, second, _ = rows(engine)
    with engine.begin() as connection:
        connection.execute(
            calls.update().where(calls.c.id == first["id"]).values(response_body=b"{}")
        )
    assert chain.verify(engine).broken[0].record_id == first["id"]
    with engine.begin() as connection:
        connection.execute(
            calls.update()
            .where(calls.c.id == first["id"])
            .values(response_body=first["response_body"])
        )
        connection.execute(
            calls.update().where(calls.c.id == second["id"]).values(prev_hash="f" * 64)
        )
    (broken,) = chain.verify(engine).broken
    assert broken.record_id == second["id"] and "prev_hash" in broken.problem


def test_a_deleted_record_breaks_the_chain(writer: RecordWriter, engine: Engine) -> None:
    write_calls(writer, 4)
    second = rows(engine)[1]
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM calls WHERE id = :id"), {"id": second["id"]})
    (broken,) = chain.verify(engine).broken
    assert broken.seq == 3 and "missing" in broken.problem


def test_prune_keeps_the_chain_verifiable(store_url: str, engine: Engine) -> None:
    old, new = NOW - 100 * 86400, NOW
    with RecordWriter(store_url, chain_id="replica") as writer:
        write_calls(writer, 3, start=old, session_id="old-session")
        for record in (call(time=new), call(time=new)):
            done(writer.record(record, outcome()))
    report = chain.prune(engine, datetime.now(UTC) - timedelta(days=90))
    assert (report.records, report.chains, report.sessions) == (3, 1, 1)
    assert [row["chain_seq"] for row in rows(engine)] == [4, 5]
    verified = chain.verify(engine)
    assert (verified.ok, verified.records) == (True, 2)
    assert queries.get_session(engine, "old-session") is None

    # Tampering is still caught after a prune, and the chain carries on.
    with RecordWriter(store_url, chain_id="replica") as writer:
        write_calls(writer, 1)
    assert chain.verify(engine).records == 3
    with engine.begin() as connection:
        connection.execute(text("UPDATE calls SET decision = 'deny' WHERE chain_seq = 4"))
    assert chain.verify(engine).broken[0].seq == 4

    # Pruning everything leaves a checkpoint a new writer continues from.
    with engine.begin() as connection:
        connection.execute(text("UPDATE calls SET decision = 'allow' WHERE chain_seq = 4"))
    assert chain.prune(engine, datetime.now(UTC) + timedelta(days=1)).records == 3
    with RecordWriter(store_url, chain_id="replica") as writer:
        write_calls(writer, 1)
    assert [row["chain_seq"] for row in rows(engine)] == [7]
    assert chain.verify(engine).ok


def test_prune_stops_at_a_young_record_in_the_middle_of_a_chain(
    writer: RecordWriter, engine: Engine
) -> None:
    old = NOW - 100 * 86400
    write_calls(writer, 1, start=old)
    write_calls(writer, 1, start=NOW)  # a young record chained in between
    write_calls(writer, 1, start=old)  # e.g. an old call held for approval, finished late
    report = chain.prune(engine, datetime.now(UTC) - timedelta(days=90))
    assert report.records == 1
    assert [row["chain_seq"] for row in rows(engine)] == [2, 3]
    assert chain.verify(engine).ok


def test_each_replica_has_its_own_chain(store_url: str, engine: Engine) -> None:
    with (
        RecordWriter(store_url, chain_id="replica-1") as one,
        RecordWriter(store_url, chain_id="replica-2") as two,
    ):
        for _ in range(3):
            write_calls(one, 1)
            write_calls(two, 1)
    report = chain.verify(engine)
    assert (report.ok, report.chains, report.records) == (True, 2, 6)


# -- revocations -----------------------------------------------------------------------


def test_revocations_of_sessions_and_principals(store_url: str, engine: Engine) -> None:
    cache = revocations.RevocationCache(store_url, refresh_seconds=3600)
    try:
        assert cache.is_revoked("sess-1", "ci-runner") is None
        session = revocations.revoke_session(engine, "sess-1", "leaked in a log")
        principal = revocations.revoke_principal(engine, "sub:repo:acme/*", "compromised repo")
        later = datetime.now(UTC) + timedelta(hours=1)
        revocations.revoke_principal(engine, "bot-?", "paused", until=later)
        cache.refresh()

        assert cache.is_revoked("sess-1", "someone") == session
        assert cache.is_revoked("sess-2", "repo:acme/infra:ref:x") == principal
        assert cache.is_revoked("sess-2", "repo:other/x") is None
        assert cache.is_revoked(None, "bot-1").reason == "paused"  # type: ignore[union-attr]
        assert cache.is_revoked(None, "bot-1", now=later + timedelta(seconds=1)) is None
        assert cache.is_revoked(None, "bot-12") is None

        assert revocations.lift(engine, session.id)
        assert not revocations.lift(engine, session.id)
        cache.refresh()
        assert cache.is_revoked("sess-1", "someone") is None
        active = revocations.list_revocations(engine)
        assert [r.target for r in active] == ["repo:acme/*", "bot-?"]
        assert len(revocations.list_revocations(engine, include_expired=True)) == 3
    finally:
        cache.close()


def test_a_revocation_from_another_process_takes_effect_within_the_refresh(
    store_url: str,
) -> None:
    cache = revocations.RevocationCache(store_url, refresh_seconds=0.1)
    try:
        script = (
            "import sys\n"
            "from addons.store import open_engine, revoke_session\n"
            "engine = open_engine(sys.argv[1])\n"
            "revoke_session(engine, 'sess-9', 'from elsewhere')\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", script, store_url], check=True, env=env, timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while cache.is_revoked("sess-9", None) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        revoked = cache.is_revoked("sess-9", None)
        assert revoked is not None and revoked.reason == "from elsewhere"
        assert cache.healthy
    finally:
        cache.close()


def test_revocation_cache_keeps_the_last_set_when_the_store_fails(
    store_url: str, engine: Engine
) -> None:
    revocations.revoke_session(engine, "sess-1", "x")
    cache = revocations.RevocationCache(store_url, refresh_seconds=3600)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE revocations"))
        with pytest.raises(StoreUnavailable, match="cannot read revocations"):
            cache.refresh()
        assert not cache.healthy and cache.last_error
        assert cache.is_revoked("sess-1", None) is not None
    finally:
        cache.close()


# -- queries ---------------------------------------------------------------------------


def test_parse_time_accepts_durations_and_iso_timestamps() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert queries.parse_time("90m", now=now) == now - timedelta(minutes=90)
    assert queries.parse_time("2h", now=now) == now - timedelta(hours=2)
    assert queries.parse_time("7d", now=now) == now - timedelta(days=7)
    assert queries.parse_time("1d", now=now, future=True) == now + timedelta(days=1)
    assert queries.parse_time("2025-05-01T10:00:00", now=now) == datetime(
        2025, 5, 1, 10, tzinfo=UTC
    )
    assert queries.parse_time("2025-05-01T10:00:00+02:00") == datetime(2025, 5, 1, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        queries.parse_time("yesterday")


def test_search_filters(writer: RecordWriter, engine: Engine) -> None:
    def one(**fields: Any) -> None:
        done(writer.record(call(**fields), outcome()))

    one(time=NOW - 3 * 86400, subject="ci-old")
    one(time=NOW - 60, service="s3", operation="GetObject", resources=["arn:aws:s3:::logs/a"])
    one(time=NOW - 30, decision="deny", subject="alice", groups=["humans"])
    one(time=NOW - 10, service="lambda", operation="InvokeAsync", subject="ci-7")

    def search(**filters: Any) -> list[str | None]:
        query = queries.CallQuery(**filters)
        return [row["action"] for row in queries.search_calls(engine, query)]

    assert search() == ["lambda:InvokeAsync", "lambda:Invoke", "s3:GetObject", "lambda:Invoke"]
    assert search(action="lambda:Invoke") == ["lambda:Invoke", "lambda:Invoke"]
    assert search(action="lambda:*") == ["lambda:InvokeAsync", "lambda:Invoke", "lambda:Invoke"]
    assert search(resource="arn:aws:s3:::logs/*") == ["s3:GetObject"]
    assert search(decision="deny") == ["lambda:Invoke"]
    since = datetime.fromtimestamp(NOW - 86400, UTC)
    assert len(search(since=since)) == 3
    ci = queries.PrincipalFilter.parse("sub:ci-*")
    assert search(principal=ci) == ["lambda:InvokeAsync", "lambda:Invoke"]
    assert search(principal=queries.PrincipalFilter.parse("group:humans")) == ["lambda:Invoke"]
    assert search(principal=queries.PrincipalFilter.parse("alice")) == ["lambda:Invoke"]
    limited = list(queries.search_calls(engine, queries.CallQuery(), limit=2))
    assert len(limited) == 2


# -- a cheap writer: shared commits, counts summed in memory, outcomes retried --------


def test_the_writers_hash_is_the_one_verify_computes() -> None:
    row: dict[str, Any] = {
        "request_id": "r-1",
        "time": datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "duration_ms": 12.5,
        "subject": 'ünïcode \u2028 "quoted" \\ back\tslash',
        "groups": ["b", "a"],
        "parameters": {"Z": 1, "a": {"y": [1.5, True, None, -0.0], "b": "x"}, "n": 2**70},
        "request_body": b"\x00\xff",
        "response_body": memoryview(b"abc"),
        "status": 200,
        "chain_seq": 3,
        "prev_hash": chain.GENESIS,
        "masked": [],
        "error": None,
    }
    encoded = {name: chain.canonical_json(row[name]) for name in ("groups", "parameters", "masked")}
    assert chain.prepared_hash(row, encoded) == chain.record_hash(row)
    assert chain.prepared_hash(row, {}) == chain.record_hash(row)


def test_an_outcome_waits_for_the_next_begin_and_shares_its_commit(store_url: str) -> None:
    with RecordWriter(store_url, linger=WAIT) as writer:  # only a begin (or close) ends the wait
        first, second = call(), call()
        done(writer.begin(first))
        commits: list[int] = []
        event.listen(writer._engine, "commit", lambda _connection: commits.append(1))
        finished = writer.finish(first.request_id, outcome())
        time.sleep(0.2)
        assert not finished.done()
        done(writer.begin(second))
        assert done(finished)
        assert len(commits) == 1


def test_session_counts_are_written_when_the_writer_is_idle_or_closes(
    store_url: str, engine: Engine
) -> None:
    def counts(session_id: str) -> tuple[int, int] | None:
        found = queries.get_session(engine, session_id)
        return None if found is None else (found["calls"], found["allowed"])

    # Busy (each outcome rides with the next begin): the counts wait, here until close.
    with RecordWriter(store_url, linger=WAIT, session_interval=WAIT) as writer:
        first, second = call(session_id="busy"), call(session_id="busy")
        done(writer.begin(first))
        finished = writer.finish(first.request_id, outcome())
        done(writer.begin(second))
        done(finished)
        assert counts("busy") is None
    assert counts("busy") == (2, 1)

    # Idle (no begin came while the outcome waited): written with that outcome.
    with RecordWriter(store_url, linger=0.01, session_interval=WAIT) as writer:
        write_calls(writer, 2, session_id="idle")
        assert counts("idle") == (2, 2)
        assert counts("busy") == (2, 1)


def test_an_outcome_is_written_once_the_store_is_back(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    url = f"sqlite:///{path}"
    migrate(url)
    with RecordWriter(url) as writer:
        record = call()
        done(writer.begin(record))
        aside = path.with_name("aside.sqlite")
        path.rename(aside)
        path.mkdir()
        try:
            finished = writer.finish(record.request_id, outcome())
            assert "was replaced" in str(failure(writer.begin(call())))
            assert not finished.done()
        finally:
            path.rmdir()
            aside.rename(path)
        assert done(finished)
    engine = open_engine(url)
    try:
        report = chain.verify(engine)
        assert (report.ok, report.records, report.unfinished) == (True, 1, 0)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_postgresql_connection_cut_under_the_writer_loses_nothing() -> None:
    """The server ends the writer's session: the batch that meets it fails as an outage
    (an outcome is kept and retried), and the writer goes on with a new connection."""
    with postgres_database() as url:
        engine = open_engine(url)
        try:
            with RecordWriter(url) as writer:
                first = call()
                done(writer.begin(first))
                with engine.connect() as admin:
                    cut = admin.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                assert cut >= 1
                finished = writer.finish(first.request_id, outcome())
                assert len(done(finished)) == 64  # its record hash, once written
                second = call()
                done(writer.begin(second))
                done(writer.finish(second.request_id, outcome()))
            report = chain.verify(engine)
            assert (report.ok, report.records, report.unfinished) == (True, 2, 0)
        finally:
            engine.dispose()


def test_unstorable_characters_are_replaced_and_parameters_keep_their_order(
    writer: RecordWriter, engine: Engine
) -> None:
    record = call(
        subject="agent\x00one",
        request_headers=[("X-Odd", "byte \udcff here"), ("User-Agent", "ua")],
        parameters={"Zeta": 1, "Alpha": {"b": 2, "a": "\x00"}},
    )
    done(writer.begin(record))
    done(writer.finish(record.request_id, outcome(response_headers=[("X-\udc80", "v")])))
    (row,) = rows(engine)
    assert row["subject"] == "agent\ufffdone"
    assert row["request_headers"][0] == ["X-Odd", "byte \ufffd here"]
    assert row["response_headers"] == [["X-\ufffd", "v"]]
    assert list(row["parameters"]) == ["Zeta", "Alpha"]
    assert row["parameters"]["Alpha"] == {"b": 2, "a": "\ufffd"}
    assert chain.verify(engine).ok


def test_a_second_outcome_for_a_call_fails_alone(writer: RecordWriter, engine: Engine) -> None:
    record = call()
    done(writer.begin(record))
    with writer_paused(writer) as release:
        pending = writer.begin(call())
        assert release.entered.wait(WAIT)
        first = writer.finish(record.request_id, outcome())
        again = writer.finish(record.request_id, outcome(status=500))
        other = writer.begin(call())
        release.set()
        done(pending)
        done(first)
        done(other)
        assert "no unfinished call" in str(failure(again))
    assert [row["status"] for row in rows(engine)] == [200, None, None]
    assert chain.verify(engine).ok


def test_a_begun_call_removed_behind_the_writer_fails_its_outcome_alone(
    writer: RecordWriter, engine: Engine
) -> None:
    """The database, not the writer's memory, says whether a begun call is still there."""
    gone, kept = call(), call()
    done(writer.begin(gone))
    done(writer.begin(kept))
    with engine.begin() as connection:
        connection.execute(calls.delete().where(calls.c.request_id == gone.request_id))
    assert "vanished" in str(failure(writer.finish(gone.request_id, outcome())))
    done(writer.finish(kept.request_id, outcome()))
    report = chain.verify(engine)
    assert (report.ok, report.records, report.unfinished) == (True, 1, 0)
