"""The analysts' commands: ``awsgate audit``, ``awsgate sessions`` and ``awsgate revoke``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io
from sqlalchemy import text

from addons.cli import audit, revoke, sessions
from addons.cli.common import CommandError
from addons.store import open_engine
from addons.store.db import migrate
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

NOW = time.time()
SECRET = "FAKE-SECRET-77d2e0"  # a fake credential that must never come out
Run = Callable[..., tuple[int, str, str]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awsgate")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for group in (audit, sessions, revoke):
        group.register(subcommands)
    return parser


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "awsgate.yaml"
    path.write_text("store: sqlite:///store.sqlite\n")
    migrate(f"sqlite:///{tmp_path / 'store.sqlite'}")
    return path


@pytest.fixture
def run(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs ``awsgate ARGS --config FILE`` the way ``addons.cli.main`` does."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = build_parser().parse_args([*argv, "--config", str(config)])
        try:
            code = int(args.handler(args) or 0)
        except CommandError as exc:
            print(f"awsgate: {exc}", file=sys.stderr)
            code = exc.exit_code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def call(**overrides: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "time": NOW - 60,
        "decision": "allow",
        "method": "POST",
        "url": "https://lambda.us-east-1.amazonaws.com/2015-03-31/functions/build/invocations",
        "source": "127.0.0.1:50123",
        "session_id": "sess-ci",
        "issuer": "https://idp.test",
        "subject": "ci-runner",
        "groups": ["ci"],
        "service": "lambda",
        "operation": "Invoke",
        "region": "us-east-1",
        "resources": ["arn:aws:lambda:us-east-1:123456789012:function:build"],
        "rule": "ci-may-invoke",
        "request_headers": [
            ("Host", "lambda.us-east-1.amazonaws.com"),
            ("Authorization", f"AWS4-HMAC-SHA256 Credential=AKIDFAKE/x, Signature={SECRET}"),
            ("X-Amz-Security-Token", SECRET),
        ],
        "request_body": b'{"go": true}',
    }
    fields.update(overrides)
    return CallRecord(**fields)


def outcome(**overrides: Any) -> CallOutcome:
    fields: dict[str, Any] = {
        "duration": 0.25,
        "status": 200,
        "upstream_status": 200,
        "upstream_request_id": "req-1",
        "response_headers": [("Content-Type", "application/json")],
        "response_body": b'{"StatusCode": 200}',
    }
    fields.update(overrides)
    return CallOutcome(**fields)


@pytest.fixture
def store(config: Path) -> str:
    """A store with a CI session (3 calls), a human's denied call and a refused identity."""
    url = f"sqlite:///{config.parent / 'store.sqlite'}"
    with RecordWriter(url) as writer:
        for record, result in (
            (call(time=NOW - 3 * 86400, operation="GetFunction"), outcome()),
            (call(), outcome(response_body=b"x" * (70 * 1024))),
            (
                call(time=NOW - 30, decision="review", approval_id="appr-1"),
                outcome(decision="deny", status=403, upstream_status=None),
            ),
            (
                call(
                    time=NOW - 20,
                    session_id="sess-alice",
                    subject="alice",
                    groups=["humans"],
                    service="s3",
                    operation="DeleteBucket",
                    resources=["arn:aws:s3:::prod-logs"],
                    decision="deny",
                    rule="no-deletes",
                ),
                outcome(status=403, upstream_status=None),
            ),
            (
                call(time=NOW - 10, session_id=None, subject=None, decision="refused-identity"),
                outcome(status=403, upstream_status=None),
            ),
        ):
            writer.record(record, result).result(timeout=30)
    return url


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# -- audit search ----------------------------------------------------------------------


def test_search_prints_a_table_newest_first(run: Run, store: str) -> None:
    code, out, _ = run("audit", "search")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == [column.upper() for column in audit.SEARCH_COLUMNS]
    assert audit.SEARCH_COLUMNS[:4] == ("time", "session", "principal", "action")
    assert len(lines) == 5
    assert "refused-identity" in lines[0] and "s3:DeleteBucket" in lines[1]
    assert "lambda:GetFunction" in lines[-1]


def test_search_json_lines_have_the_documented_fields(run: Run, store: str) -> None:
    code, out, _ = run("audit", "search", "--json", "--principal", "sub:ci-*")
    assert code == 0
    records = json_lines(out)
    assert [r["action"] for r in records] == [
        "lambda:Invoke",
        "lambda:Invoke",
        "lambda:GetFunction",
    ]
    held = records[0]
    for key in ("time", "session", "principal", "action", "resources", "decision", "rule"):
        assert key in held
    assert (held["decision"], held["status"], held["approval"]) == ("deny", None, "appr-1")
    assert held["principal"] == "sub:ci-runner" and held["session"] == "sess-ci"
    assert held["time"].endswith("Z")
    assert records[1]["status"] == 200


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--action", "lambda:Invoke"], ["lambda:Invoke", "lambda:Invoke", "lambda:Invoke"]),
        (["--action", "s3:*"], ["s3:DeleteBucket"]),
        (["--resource", "arn:aws:s3:::prod-*"], ["s3:DeleteBucket"]),
        (["--decision", "deny"], ["s3:DeleteBucket", "lambda:Invoke"]),
        (["--principal", "group:humans"], ["s3:DeleteBucket"]),
        (["--principal", "alice"], ["s3:DeleteBucket"]),
        (["--since", "1d", "--action", "lambda:*"], ["lambda:Invoke"] * 3),
        (["--since", "90m", "--limit", "2"], ["lambda:Invoke", "s3:DeleteBucket"]),
    ],
)
def test_search_filters(run: Run, store: str, filters: list[str], expected: list[str]) -> None:
    code, out, _ = run("audit", "search", "--json", *filters)
    assert code == 0
    assert [record["action"] for record in json_lines(out)] == expected


def test_search_rejects_a_bad_time(run: Run, store: str) -> None:
    code, _, err = run("audit", "search", "--since", "last tuesday")
    assert code == 2 and "neither a duration" in err


def test_commands_refuse_a_missing_store(run: Run, config: Path) -> None:
    (config.parent / "store.sqlite").unlink()
    code, _, err = run("audit", "search")
    assert code == 2 and "no record store" in err
    assert not (config.parent / "store.sqlite").exists()


# -- audit verify and prune ------------------------------------------------------------


def test_verify_passes_then_fails_at_the_edited_record(run: Run, store: str) -> None:
    code, out, _ = run("audit", "verify")
    assert code == 0 and "5 record(s) verified: intact" in out

    engine = open_engine(store)
    with engine.begin() as connection:
        edited = connection.execute(text("SELECT id FROM calls WHERE decision = 'deny'")).first()
        connection.execute(
            text("UPDATE calls SET rule = 'allow-all' WHERE id = :id"), edited._asdict()
        )
    engine.dispose()

    code, out, _ = run("audit", "verify")
    assert code == 1
    assert "BROKEN chain " in out and f"record {edited.id} " in out
    assert "contents do not match its hash" in out


def test_prune_then_verify(run: Run, store: str) -> None:
    code, out, _ = run("audit", "prune", "--older-than", "2d")
    assert code == 0 and out.startswith("pruned 1 record(s)")
    code, out, _ = run("audit", "verify")
    assert code == 0 and "4 record(s) verified: intact" in out
    _, out, _ = run("audit", "search", "--json")
    assert "lambda:GetFunction" not in out


# -- sessions --------------------------------------------------------------------------


def test_sessions_list(run: Run, store: str) -> None:
    code, out, _ = run("sessions", "list")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split()[:5] == ["ID", "PRINCIPAL", "START", "END", "CALLS"]
    assert first.split()[:2] == ["sess-alice", "sub:alice"]
    assert second.split()[:2] == ["sess-ci", "sub:ci-runner"]

    code, out, _ = run("sessions", "list", "--json", "--principal", "sub:ci-*")
    (session,) = json_lines(out)
    assert (session["id"], session["calls"], session["denied"]) == ("sess-ci", 3, 1)
    assert session["start"] < session["end"]
    _, out, _ = run("sessions", "list", "--json", "--since", "1h")
    assert len(json_lines(out)) == 2
    _, out, _ = run("sessions", "list", "--json", "--since", "2000-01-01T00:00:00Z", "--limit", "1")
    assert len(json_lines(out)) == 1


def test_sessions_show(run: Run, store: str) -> None:
    code, out, _ = run("sessions", "show", "sess-ci")
    assert code == 0
    assert "principal: sub:ci-runner" in out
    actions = [line.split()[1] for line in out.splitlines() if "lambda:" in line]
    assert actions == ["lambda:GetFunction", "lambda:Invoke", "lambda:Invoke"]  # in order

    code, out, _ = run("sessions", "show", "sess-ci", "--json")
    shown = json.loads(out)
    assert shown["id"] == "sess-ci" and len(shown["calls"]) == 3

    code, _, err = run("sessions", "show", "nope")
    assert code == 1 and "no session 'nope'" in err


def test_sessions_export_writes_a_redacted_flow_file(run: Run, store: str, tmp_path: Path) -> None:
    target = tmp_path / "sess-ci.flows"
    code, _, err = run("sessions", "export", "sess-ci", "-o", str(target))
    assert code == 0 and "wrote 3 flow(s)" in err
    assert SECRET.encode() not in target.read_bytes()

    with target.open("rb") as file:
        flows = list(io.FlowReader(file).stream())
    assert len(flows) == 3
    first, big, held = flows
    assert first.request.method == "POST"
    assert first.request.pretty_url.startswith("https://lambda.us-east-1.amazonaws.com/")
    assert first.request.headers["Authorization"] == "[redacted]"
    assert first.request.headers["X-Amz-Security-Token"] == "[redacted]"
    assert first.request.content == b'{"go": true}'
    assert first.response.status_code == 200
    assert first.response.content == b'{"StatusCode": 200}'
    assert first.metadata["awsgate"]["action"] == "lambda:GetFunction"
    assert big.response.content == b"" and "response body not stored: 71680 bytes" in big.comment
    assert held.response.status_code == 403 and "approval appr-1" in held.comment
    for flow in flows:
        assert flow.response.timestamp_end >= flow.request.timestamp_start


def test_sessions_export_reports_an_unwritable_target(run: Run, store: str, tmp_path: Path) -> None:
    code, _, err = run("sessions", "export", "sess-ci", "-o", str(tmp_path / "no" / "x.flows"))
    assert code == 2 and "cannot write" in err


# -- revoke ----------------------------------------------------------------------------


def test_revoke_session_principal_list_and_lift(run: Run, store: str) -> None:
    code, out, _ = run("revoke", "--session", "sess-ci", "--reason", "token leaked", "--json")
    assert code == 0
    (revoked,) = json_lines(out)
    assert (revoked["kind"], revoked["target"], revoked["reason"]) == (
        "session",
        "sess-ci",
        "token leaked",
    )
    assert revoked["until"] is None

    code, out, _ = run("revoke", "--principal", "sub:ci-*", "--until", "2h", "--json")
    (principal,) = json_lines(out)
    assert (principal["kind"], principal["target"]) == ("principal", "sub:ci-*")
    assert principal["until"] > principal["created"]

    code, out, _ = run("revoke", "--list")
    assert code == 0 and "sess-ci" in out and "sub:ci-*" in out

    code, out, _ = run("revoke", "--lift", str(revoked["id"]))
    assert code == 0
    _, out, _ = run("revoke", "--list", "--json")
    assert [r["target"] for r in json_lines(out)] == ["sub:ci-*"]
    _, out, _ = run("revoke", "--list", "--all", "--json")
    assert len(json_lines(out)) == 2
    code, _, err = run("revoke", "--lift", str(revoked["id"]))
    assert code == 1 and "in force" in err


def test_revoke_needs_a_subject(run: Run, store: str) -> None:
    code, _, err = run("revoke", "--principal", "sub:")
    assert code == 2 and "subject glob" in err
