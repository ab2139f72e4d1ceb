"""``awsgate audit``: search the call records, verify their hash chains, prune old ones."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Engine

from addons.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    load_config,
    print_rows,
)
from addons.store import chain, queries
from addons.store.db import StoreUnavailable, connect
from addons.store.records import DECISIONS

SEARCH_COLUMNS = (
    "time", "session", "principal", "action", "resources", "decision", "rule", "status", "approval",
)  # fmt: skip
TABLE_LIMIT = 1000  # a table is read by people; --json streams everything


def register(subcommands: argparse._SubParsersAction) -> None:
    audit = subcommands.add_parser("audit", help="search, verify and prune the call records")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    search = actions.add_parser("search", help="find recorded calls, newest first")
    add_config_argument(search)
    add_json_argument(search)
    search.add_argument("--action", help="service:Operation, globs allowed (lambda:Invoke, s3:*)")
    search.add_argument("--resource", help="glob over the call's resources (arn:aws:s3:::logs*)")
    search.add_argument("--principal", help="sub:GLOB, group:NAME or a subject glob")
    search.add_argument("--decision", choices=DECISIONS)
    search.add_argument("--since", help="90m, 2h, 1d, 7d or an ISO timestamp")
    search.add_argument("--session", help="only the calls of this session id")
    search.add_argument(
        "--limit", type=int, help=f"at most N calls (default: all with --json, {TABLE_LIMIT} else)"
    )
    search.set_defaults(handler=search_command)

    verify = actions.add_parser("verify", help="check the hash chains; exit 1 at a broken link")
    add_config_argument(verify)
    verify.set_defaults(handler=verify_command)

    prune = actions.add_parser("prune", help="delete old records, keeping the chains verifiable")
    add_config_argument(prune)
    prune.add_argument("--older-than", required=True, metavar="AGE", help="90d, 12w, or a date")
    prune.set_defaults(handler=prune_command)


def open_store(args: argparse.Namespace) -> Engine:
    """The configured store, which must exist and be migrated (the gateway does that)."""
    try:
        return connect(load_config(args).store)
    except StoreUnavailable as exc:
        raise CommandError(str(exc)) from exc


def parse_time(value: str, *, future: bool = False) -> datetime:
    try:
        return queries.parse_time(value, future=future)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def search_command(args: argparse.Namespace) -> int:
    query = queries.CallQuery(
        action=args.action,
        resource=args.resource,
        principal=queries.PrincipalFilter.parse(args.principal) if args.principal else None,
        decision=args.decision,
        since=parse_time(args.since) if args.since else None,
        session_id=args.session,
    )
    engine = open_store(args)
    try:
        if args.json:
            rows = queries.search_calls(engine, query, limit=args.limit)
            for page in pages(call_summary(row) for row in rows):
                print_rows(page, SEARCH_COLUMNS, as_json=True)
            return 0
        limit = args.limit if args.limit is not None else TABLE_LIMIT
        rows = [call_summary(r) for r in queries.search_calls(engine, query, limit=limit + 1)]
        print_rows(rows[:limit], SEARCH_COLUMNS, as_json=False)
        if len(rows) > limit:
            print(f"(first {limit} shown: use --limit N or --json for more)", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


def pages(rows: Iterable[dict[str, Any]], size: int = queries.PAGE_SIZE) -> Iterator[list]:
    """Rows a page at a time: JSON lines go out as they are read, never all held at once."""
    iterator = iter(rows)
    while page := list(islice(iterator, size)):
        yield page


def call_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """The analyst's view of one call: ``audit search`` rows and JSON lines."""
    return {
        "time": format_time(row["time"]),
        "session": row["session_id"],
        "principal": queries.principal_name(row["subject"]),
        "action": row["action"],
        "resources": row["resources"] or [],
        "decision": row["decision"],
        "rule": row["rule"],
        "status": row["upstream_status"],
        "approval": row["approval_id"],
        "id": row["id"],
        "request_id": row["request_id"],
        "region": row["region"],
        "source": row["source"],
        "groups": row["groups"] or [],
        "duration_ms": row["duration_ms"],
        "upstream_request_id": row["upstream_request_id"],
        "error": row["error"],
    }


def format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verify_command(args: argparse.Namespace) -> int:
    engine = open_store(args)
    try:
        report = chain.verify(engine)
    finally:
        engine.dispose()
    for broken in report.broken:
        print(f"BROKEN {broken}")
    state = "intact" if report.ok else f"{len(report.broken)} broken"
    print(f"{report.chains} chain(s), {report.records} record(s) verified: {state}")
    if report.unfinished:
        print(f"{report.unfinished} call(s) not finished yet, so not chained")
    return 0 if report.ok else 1


def prune_command(args: argparse.Namespace) -> int:
    before = parse_time(args.older_than)
    engine = open_store(args)
    try:
        report = chain.prune(engine, before)
    finally:
        engine.dispose()
    print(
        f"pruned {report.records} record(s) older than {format_time(before)} "
        f"from {report.chains} chain(s), {report.unfinished} unfinished call(s) "
        f"and {report.sessions} session(s)"
    )
    return 0
