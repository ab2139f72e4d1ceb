"""``awsgate policy whatif``: recorded calls re-decided by a candidate policy.

The store tests run on SQLite and, when ``AWSGATE_TEST_PG_URL`` names a
PostgreSQL server, on a fresh database there. One test builds a 100,000-record
store and times ``whatif`` and ``suggest`` on it (printed, not asserted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, select
from test_store import postgres_database

from addons.cli import policy as policy_cli
from addons.cli.common import CommandError
from addons.rules import load_policy
from addons.rules.whatif import NotReplayable, recorded_call, what_if
from addons.store.db import migrate, open_engine
from addons.store.models import calls
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

NOW = time.time()
BUCKET = "arn:aws:s3:::team-data"
ISSUER = "https://idp.test"
WAIT = 30  # seconds a write may take before the test gives up (never reached when healthy)

CURRENT = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions: ["s3:GetObject", "s3:PutObject", "s3:ListObjectsV2", "sts:GetCallerIdentity",
              "lambda:Invoke"]
  - name: no-bucket-deletes
    effect: deny
    principals: ["*"]
    actions: ["s3:DeleteBucket"]
"""
# PutObject removed, DeleteBucket allowed on one bucket, Invoke held for review.
CANDIDATE = """\
rules:
  - name: agents-read
    effect: allow
    principals: ["group:agents"]
    actions: ["s3:GetObject", "s3:ListObjectsV2", "sts:GetCallerIdentity", "lambda:Invoke"]
  - name: scratch-deletes
    effect: allow
    principals: ["group:agents"]
    actions: ["s3:DeleteBucket"]
    resources: ["arn:aws:s3:::scratch-*"]
  - name: invokes-need-review
    effect: review
    principals: ["sub:agent-2"]
    actions: ["lambda:Invoke"]
    approvers: ["group:sre"]
"""
Run = Callable[..., tuple[int, str, str]]


# -- records and stores ------------------------------------------------------------------


def call(
    subject: str | None,
    action: str,
    resources: tuple[str, ...] = (),
    decision: str = "allow",
    rule: str | None = "agents-work",
    **overrides: Any,
) -> CallRecord:
    """A recorded call of ``subject`` (group ``agents``) as the gateway writes it."""
    service, _, operation = action.partition(":")
    fields: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "time": NOW,
        "decision": decision,
        "session_id": f"session-{subject}" if subject else None,
        "issuer": ISSUER if subject else None,
        "subject": subject,
        "groups": ["agents"] if subject else [],
        "service": service,
        "operation": operation,
        "region": "us-east-1",
        "resources": list(resources),
        "parameters": {},
        "rule": rule,
    }
    fields.update(overrides)
    return CallRecord(**fields)


def traffic() -> list[CallRecord]:
    """Two agents' calls under ``CURRENT``, plus records the policy never decided."""
    reports = [f"{BUCKET}/reports/{day}.json" for day in ("mon", "tue", "wed")]
    return [
        *(call("agent-1", "s3:GetObject", (arn,)) for arn in reports),
        *(call("agent-1", "s3:PutObject", (arn,)) for arn in reports[:2]),
        call("agent-1", "s3:ListObjectsV2", (BUCKET,), parameters={"Bucket": "team-data"}),
        call("agent-1", "sts:GetCallerIdentity"),
        call(
            "agent-1", "s3:DeleteBucket", ("arn:aws:s3:::scratch-1",), "deny", "no-bucket-deletes"
        ),
        *(
            call("agent-2", "lambda:Invoke", ("arn:aws:lambda:us-east-1:*:function:build",))
            for _ in range(2)
        ),
        call(None, "s3:GetObject", (reports[0],), "refused-identity", "AccessDenied"),
        call("agent-1", "s3:GetObject", (reports[0],), "error", "InternalFailure"),
        call("agent-1", "sts:AssumeRoleWithWebIdentity", rule=None),
    ]


def write(url: str, records: list[CallRecord]) -> None:
    with RecordWriter(url, chain_id="test-chain") as writer:
        futures = [
            writer.record(record, CallOutcome(duration=0.01, status=200)) for record in records
        ]
        for future in futures:
            future.result(WAIT)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        with postgres_database() as url:
            yield url
        return
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    yield url


def policy_file(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def cli_runner(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs ``awsgate policy ARGS --config FILE`` the way ``addons.cli.main`` does."""
    parser = argparse.ArgumentParser(prog="awsgate")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = parser.parse_args(["policy", *argv, "--config", str(config)])
        try:
            code = int(args.handler(args) or 0)
        except CommandError as exc:
            print(f"awsgate: {exc}", file=sys.stderr)
            code = exc.exit_code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def config_for(directory: Path, store_url: str) -> Path:
    path = directory / "awsgate.yaml"
    path.write_text(yaml.safe_dump({"store": store_url}))
    return path


@pytest.fixture
def run(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    write(store_url, traffic())
    return cli_runner(config_for(tmp_path, store_url), capsys)


def stored_rows(records: list[CallRecord]) -> list[dict[str, Any]]:
    """Rows as the store gives them back, without a database."""
    return [
        {
            **{name: getattr(record, name) for name in ("request_id", "decision", "rule")},
            **{name: getattr(record, name) for name in ("issuer", "subject", "groups", "role")},
            **{name: getattr(record, name) for name in ("service", "operation", "region")},
            "session_id": record.session_id,
            "resources": record.resources,
            "parameters": record.parameters,
            "approval_id": record.approval_id,
            "time": datetime.fromtimestamp(record.time, UTC),
        }
        for record in records
    ]


# -- rebuilding calls ----------------------------------------------------------------------


def test_a_record_is_rebuilt_as_the_policy_engine_saw_it() -> None:
    record = call(
        "agent-1",
        "s3:ListObjectsV2",
        (BUCKET,),
        role="reader",
        parameters={"Bucket": "team-data", "MaxKeys": 10},
        region="eu-west-1",
    )
    rebuilt = recorded_call(stored_rows([record])[0])
    assert rebuilt.principal.issuer == ISSUER
    assert rebuilt.principal.subject == "agent-1"
    assert rebuilt.principal.groups == frozenset({"agents"})
    assert rebuilt.principal.role == "reader"
    assert rebuilt.operation.action == "s3:ListObjectsV2"
    assert rebuilt.operation.region == "eu-west-1"
    assert rebuilt.operation.resources == [BUCKET]
    assert rebuilt.operation.params == {"Bucket": "team-data", "MaxKeys": 10}
    assert (rebuilt.effect, rebuilt.rule) == ("allow", "agents-work")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (call(None, "s3:GetObject", decision="refused-identity"), "refused-identity"),
        (call("agent-1", "s3:GetObject", decision="error"), "error"),
        (call("agent-1", "sts:AssumeRoleWithWebIdentity", rule=None), "answered by the gateway"),
        (call("agent-1", "", rule="x"), "no principal or operation"),
        (call("agent-1", "s3:GetObject", decision="approved-later"), "decision 'approved-later'"),
    ],
)
def test_records_the_policy_never_decided_are_not_replayable(
    record: CallRecord, reason: str
) -> None:
    with pytest.raises(NotReplayable, match=reason):
        recorded_call(stored_rows([record])[0])


def test_a_call_held_for_approval_was_a_review_whatever_the_approver_said() -> None:
    record = call("agent-1", "s3:GetObject", decision="allow", approval_id="ap-1")
    assert recorded_call(stored_rows([record])[0]).effect == "review"


# -- the report --------------------------------------------------------------------------


def test_whatif_reports_exactly_the_calls_whose_decision_changes(tmp_path: Path) -> None:
    report = what_if(load_policy(policy_file(tmp_path, CANDIDATE)), stored_rows(traffic()))
    changes = {(c.principal, c.action, c.before, c.after): c.count for c in report.changes.values()}
    assert changes == {
        ("sub:agent-1", "s3:PutObject", "allow", "deny"): 2,
        ("sub:agent-1", "s3:DeleteBucket", "deny", "allow"): 1,
        ("sub:agent-2", "lambda:Invoke", "allow", "review"): 2,
    }
    assert report.newly_denied == 2
    assert report.replayed == 10 and report.unchanged == 5
    assert report.skipped == Counter(
        {"refused-identity": 1, "error": 1, "answered by the gateway itself": 1}
    )
    first = report.sorted_changes()[0]
    assert first.action == "s3:PutObject" and first.newly_denied
    assert [example.resources for example in first.examples] == [
        (f"{BUCKET}/reports/mon.json",),
        (f"{BUCKET}/reports/tue.json",),
    ]
    assert {(e.rule_before, e.rule_after) for e in first.examples} == {
        ("agents-work", "default-deny")
    }


def test_the_policy_in_force_changes_nothing(tmp_path: Path) -> None:
    report = what_if(load_policy(policy_file(tmp_path, CURRENT)), stored_rows(traffic()))
    assert report.changes == {} and report.newly_denied == 0
    assert report.unchanged == report.replayed == 10


def test_examples_are_capped_but_counts_are_not(tmp_path: Path) -> None:
    records = [call("agent-1", "s3:PutObject", (f"{BUCKET}/k{i}",)) for i in range(50)]
    report = what_if(load_policy(policy_file(tmp_path, CANDIDATE)), stored_rows(records))
    (change,) = report.changes.values()
    assert change.count == 50 and len(change.examples) == 3


# -- the command, on SQLite and PostgreSQL ---------------------------------------------------


def test_whatif_command_lists_changes_and_fails_on_newly_denied_calls(
    run: Run, tmp_path: Path
) -> None:
    code, out, err = run("whatif", "--policies", str(policy_file(tmp_path, CANDIDATE)))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "sub:agent-1"
    assert lines[1].split()[:6] == ["s3:PutObject", "allow", "->", "deny", "2", "call(s)"]
    assert "NEWLY DENIED; now default-deny, was agents-work" in lines[1]
    assert f"{BUCKET}/reports/mon.json" in lines[2]
    assert any("s3:DeleteBucket  deny -> allow  1 call(s)" in line for line in lines)
    assert "sub:agent-2" in lines
    assert any("lambda:Invoke  allow -> review  2 call(s)" in line for line in lines)
    assert lines[-1].startswith("10 call(s) since ")
    assert lines[-1].endswith(
        "replayed: 5 unchanged, 5 changed, 2 newly denied; 3 skipped "
        "(1 answered by the gateway itself, 1 error, 1 refused-identity)"
    )
    assert "record(s) read" in err  # progress goes to stderr


def test_whatif_command_passes_when_nothing_is_newly_denied(run: Run, tmp_path: Path) -> None:
    candidate = policy_file(tmp_path, CANDIDATE)
    assert run("whatif", "--policies", str(policy_file(tmp_path, CURRENT, "same.yaml")))[0] == 0
    code, out, _ = run("whatif", "--policies", str(candidate), "--principal", "sub:agent-2")
    assert code == 0  # a review is a change, not a denial
    assert out.splitlines()[0] == "sub:agent-2"
    assert "2 call(s)" in out and "agent-1" not in out
    code, out, _ = run("whatif", "--policies", str(candidate), "--since", "2999-01-01")
    assert code == 0 and out.startswith("0 call(s) since 2999-01-01")


def test_whatif_command_json_lines(run: Run, tmp_path: Path) -> None:
    code, out, err = run("whatif", "--policies", str(policy_file(tmp_path, CANDIDATE)), "--json")
    assert code == 1
    changes = [json.loads(line) for line in out.splitlines()]
    assert [(c["action"], c["before"], c["after"], c["calls"]) for c in changes] == [
        ("s3:PutObject", "allow", "deny", 2),
        ("s3:DeleteBucket", "deny", "allow", 1),
        ("lambda:Invoke", "allow", "review", 2),
    ]
    assert changes[0]["newly_denied"] and not changes[1]["newly_denied"]
    assert changes[0]["examples"][0]["rule_after"] == "default-deny"
    assert "2 newly denied" in err  # the summary stays off the JSON stream


def test_whatif_command_refuses_a_broken_candidate(run: Run, tmp_path: Path) -> None:
    broken = policy_file(tmp_path, "rules:\n  - name: x\n    effect: allow\n")
    code, _, err = run("whatif", "--policies", str(broken))
    assert code == 2
    assert "missing principals" in err and "policy has errors" in err


# -- a large history ------------------------------------------------------------------------

LARGE = 100_000
DISTINCT = 1_000  # records written one by one; the others are copies of them
AGENTS = 10


def large_rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows as the writer stores them (no hash chain), for a bulk insert."""
    start = datetime.now(UTC) - timedelta(days=1)
    for i in range(count):
        agent = f"agent-{i % AGENTS}"
        kind = (i // AGENTS) % 4
        if kind == 0:
            service, operation = "s3", "GetObject"
            resources = [f"arn:aws:s3:::data-{agent}/runs/{i // 100}/out-{i}.json"]
        elif kind == 1:
            service, operation = "s3", "PutObject"
            resources = [f"arn:aws:s3:::data-{agent}/runs/{i // 100}/in-{i}.json"]
        elif kind == 2:
            service, operation = "lambda", "Invoke"
            resources = [f"arn:aws:lambda:us-east-1:*:function:ci-step-{i // 40 % 20}"]
        else:
            service, operation = "dynamodb", "GetItem"
            resources = [f"arn:aws:dynamodb:us-east-1:*:table/{agent}-state"]
        yield {
            "request_id": f"r{i:08d}",
            "time": start + timedelta(milliseconds=i),
            "session_id": f"session-{agent}",
            "issuer": ISSUER,
            "subject": agent,
            "groups": ["agents"],
            "service": service,
            "operation": operation,
            "action": f"{service}:{operation}",
            "region": "us-east-1",
            "resources": resources,
            "parameters": {"Key": f"k{i}"} if service == "s3" else {},
            "decision": "allow",
            "rule": "agents",
            "status": 200,
            "chain_id": "bulk",
            "chain_seq": i + 1,
        }


def bulk_store(url: str) -> None:
    """``LARGE`` records: ``DISTINCT`` built in Python, the rest copied by the database."""
    engine = open_engine(url)
    copied = [column for column in calls.c if column.name not in ("id", "request_id", "chain_seq")]
    try:
        with engine.begin() as connection:
            connection.execute(insert(calls), list(large_rows(DISTINCT)))
            for copy in range(1, LARGE // DISTINCT):
                originals = select(
                    *copied, (calls.c.request_id + f"-{copy}").label("request_id")
                ).where(calls.c.id <= DISTINCT)
                names = [column.name for column in copied] + ["request_id"]
                connection.execute(insert(calls).from_select(names, originals))
    finally:
        engine.dispose()


def test_whatif_and_suggest_on_100000_records(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    bulk_store(store_url)
    built = time.monotonic() - started
    run = cli_runner(config_for(tmp_path, store_url), capsys)
    candidate = policy_file(
        tmp_path,
        'rules:\n  - {name: no-writes, effect: allow, principals: ["group:agents"],\n'
        '     actions: ["s3:GetObject", "lambda:Invoke", "dynamodb:GetItem"]}\n',
    )

    started, cpu = time.monotonic(), time.process_time()
    code, out, err = run("whatif", "--policies", str(candidate), "--since", "2d")
    whatif_seconds, whatif_cpu = time.monotonic() - started, time.process_time() - cpu
    assert code == 1
    assert out.splitlines()[-1].startswith(f"{LARGE} call(s) since")
    assert f"{LARGE // 4} newly denied" in out
    assert err.count("record(s) read (") == LARGE // policy_cli.PROGRESS_EVERY

    started, cpu = time.monotonic(), time.process_time()
    code, out, err = run("suggest", "--principal", "sub:agent-3", "--since", "2d")
    suggest_seconds, suggest_cpu = time.monotonic() - started, time.process_time() - cpu
    assert code == 0, err
    suggested = yaml.safe_load(out)["rules"]
    assert {action for rule in suggested for action in rule["actions"]} == {
        "s3:GetObject",
        "s3:PutObject",
        "lambda:Invoke",
        "dynamodb:GetItem",
    }
    resources = {resource for rule in suggested for resource in rule.get("resources", [])}
    assert "arn:aws:s3:::data-agent-3/runs/*" in resources
    assert "arn:aws:lambda:us-east-1:*:function:ci-step-*" in resources
    with capsys.disabled():
        print(
            f"\n{LARGE} records on {store_url.partition(':')[0]}: store built in {built:.1f} s, "
            f"whatif {whatif_seconds:.1f} s ({whatif_cpu:.1f} s CPU), "
            f"suggest {suggest_seconds:.1f} s ({suggest_cpu:.1f} s CPU)"
        )
    assert whatif_seconds < 120 and suggest_seconds < 120  # a sanity bound, not a benchmark
