"""``awsgate sessions``: list identity sessions, show their calls, export them as flows."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping
from http.client import responses as HTTP_REASONS
from typing import Any
from urllib.parse import urlsplit

from addons.cli.audit import (
    TABLE_LIMIT,
    call_summary,
    format_time,
    open_store,
    pages,
    parse_time,
)
from addons.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    print_rows,
)
from addons.store import queries, sanitize

LIST_COLUMNS = ("id", "principal", "start", "end", "calls", "denied", "errors")
CALL_COLUMNS = ("time", "action", "resources", "decision", "rule", "status", "duration_ms")
PROGRESS_EVERY = 500


def register(subcommands: argparse._SubParsersAction) -> None:
    group = subcommands.add_parser("sessions", help="identity sessions and their calls")
    actions = group.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="sessions, most recently active first")
    add_config_argument(listing)
    add_json_argument(listing)
    listing.add_argument("--principal", help="sub:GLOB, group:NAME or a subject glob")
    listing.add_argument("--since", help="active since: 90m, 2h, 1d, 7d or an ISO timestamp")
    listing.add_argument(
        "--limit",
        type=int,
        help=f"at most N sessions (default: all with --json, {TABLE_LIMIT} else)",
    )
    listing.set_defaults(handler=list_command)

    show = actions.add_parser("show", help="one session and its calls in order")
    add_config_argument(show)
    add_json_argument(show)
    show.add_argument("id", help="session id")
    show.set_defaults(handler=show_command)

    export = actions.add_parser("export", help="write a session's calls as a mitmproxy flow file")
    add_config_argument(export)
    export.add_argument("id", help="session id")
    export.add_argument("-o", "--output", required=True, help="flow file (mitmweb --rfile FILE)")
    export.set_defaults(handler=export_command)


def session_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "principal": queries.principal_name(row["subject"]),
        "start": format_time(row["started"]),
        "end": format_time(row["last_seen"]),
        "calls": row["calls"],
        "allowed": row["allowed"],
        "denied": row["denied"],
        "reviewed": row["reviewed"],
        "errors": row["errors"],
        "issuer": row["issuer"],
        "groups": row["groups"] or [],
        "role": row["role"],
    }


def list_command(args: argparse.Namespace) -> int:
    principal = queries.PrincipalFilter.parse(args.principal) if args.principal else None
    since = parse_time(args.since) if args.since else None
    engine = open_store(args)
    try:
        if args.json:
            rows = queries.list_sessions(engine, principal=principal, since=since, limit=args.limit)
            for page in pages(session_summary(row) for row in rows):
                print_rows(page, LIST_COLUMNS, as_json=True)
            return 0
        limit = args.limit if args.limit is not None else TABLE_LIMIT
        rows = queries.list_sessions(engine, principal=principal, since=since, limit=limit + 1)
        summaries = [session_summary(row) for row in rows]
    finally:
        engine.dispose()
    print_rows(summaries[:limit], LIST_COLUMNS, as_json=False)
    if len(summaries) > limit:
        print(f"(first {limit} shown: use --limit N or --json for more)", file=sys.stderr)
    return 0


def show_command(args: argparse.Namespace) -> int:
    engine = open_store(args)
    try:
        session = queries.get_session(engine, args.id)
        if session is None:
            raise CommandError(f"no session {args.id!r}", exit_code=1)
        summary = session_summary(session)
        calls = [call_summary(row) for row in queries.session_calls(engine, args.id)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**summary, "calls": calls}, default=str))
        return 0
    for key, value in summary.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key + ':':<11}{'-' if shown in (None, '') else shown}")
    print()
    print_rows(calls, CALL_COLUMNS, as_json=False)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from mitmproxy import io  # the only command that needs mitmproxy: import it late

    engine = open_store(args)
    try:
        if queries.get_session(engine, args.id) is None:
            raise CommandError(f"no session {args.id!r}", exit_code=1)
        total = queries.count_session_calls(engine, args.id)
        written = 0
        try:
            with open(args.output, "wb") as file:
                writer = io.FlowWriter(file)
                for row in queries.session_calls(engine, args.id):
                    writer.add(call_flow(row))
                    written += 1
                    if written % PROGRESS_EVERY == 0:
                        print(f"exported {written}/{total} calls", file=sys.stderr)
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror}") from exc
    finally:
        engine.dispose()
    print(f"wrote {written} flow(s) of session {args.id} to {args.output}", file=sys.stderr)
    return 0


def call_flow(row: Mapping[str, Any]) -> Any:
    """A mitmproxy HTTPFlow rebuilt from a stored call, credentials redacted once more."""
    from mitmproxy import connection, flow, http

    url = urlsplit(sanitize.url(row["url"]) or "")
    scheme = url.scheme or "https"
    host = url.hostname or "unknown"
    port = url.port or (443 if scheme == "https" else 80)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    start = row["time"].timestamp()
    end = start + (row["duration_ms"] or 0) / 1000
    version = row["http_version"] or "HTTP/1.1"

    client = connection.Client(
        peername=_address(row["source"]), sockname=("0.0.0.0", 0), timestamp_start=start
    )
    result = http.HTTPFlow(client, connection.Server(address=(host, port)))
    result.id = _flow_id(row["request_id"])
    result.timestamp_created = start
    result.request = http.Request(
        host=host,
        port=port,
        method=(row["method"] or "GET").encode(),
        scheme=scheme.encode(),
        authority=b"",
        path=path.encode(),
        http_version=version.encode(),
        headers=_headers(row["request_headers"]),
        content=row["request_body"] or b"",
        trailers=None,
        timestamp_start=start,
        timestamp_end=start,
    )
    if row["status"] is not None:
        result.response = http.Response(
            http_version=version.encode(),
            status_code=row["status"],
            reason=HTTP_REASONS.get(row["status"], "").encode(),
            headers=_headers(row["response_headers"]),
            content=row["response_body"] or b"",
            trailers=None,
            timestamp_start=end,
            timestamp_end=end,
        )
    elif row["error"]:
        result.error = flow.Error(row["error"], timestamp=end)
    result.comment = _comment(row)
    result.metadata["awsgate"] = {
        key: value for key, value in call_summary(row).items() if value not in (None, [])
    }
    result.marked = ":no_entry:" if row["decision"] != "allow" else ""
    return result


def _headers(pairs: Any) -> Any:
    from mitmproxy import http

    return http.Headers(
        [(name.encode(), value.encode()) for name, value in sanitize.headers(pairs or [])]
    )


def _comment(row: Mapping[str, Any]) -> str:
    lines = [
        f"awsgate: {row['decision']}"
        + (f" by rule {row['rule']}" if row["rule"] else "")
        + (f", approval {row['approval_id']}" if row["approval_id"] else ""),
        f"principal: {queries.principal_name(row['subject']) or '(unknown)'}",
    ]
    if row["message"]:
        lines.append(row["message"])
    for side in ("request", "response"):
        size, digest = row[f"{side}_body_size"], row[f"{side}_body_sha256"]
        if row[f"{side}_body"] is None and size:
            lines.append(f"{side} body not stored: {size} bytes, sha256 {digest or 'unknown'}")
    if row["masked"]:
        lines.append("masked: " + ", ".join(row["masked"]))
    return "\n".join(lines)


def _address(source: str | None) -> tuple[str, int]:
    host, _, port = (source or "").rpartition(":")
    if host and port.isdigit():
        return host.strip("[]"), int(port)
    return (source or "0.0.0.0"), 0


def _flow_id(request_id: str) -> str:
    try:
        return str(uuid.UUID(request_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))
