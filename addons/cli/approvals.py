"""``awsgate approvals``: list, show, approve and deny calls held for review.

Deciding needs the approver's own OIDC token (``--token-file``, or
``$AWSGATE_TOKEN_FILE`` / ``$AWSGATE_TOKEN``), validated against the config's
issuers: approvers are who their token says, never a name typed here. The
store is shared, so a decision made here reaches every gateway replica.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from pathlib import Path

from addons import config
from addons.auth import oidc
from addons.cli.audit import open_store
from addons.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    load_config,
    print_rows,
)
from addons.context import Principal
from addons.notify import FLUSH_TIMEOUT, Notifier
from addons.store import approvals

TOKEN_ENV = "AWSGATE_TOKEN"
TOKEN_FILE_ENV = "AWSGATE_TOKEN_FILE"
LIST_COLUMNS = ("id", "status", "principal", "action", "resources", "rule", "created")


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "approvals",
        help="list and decide calls held for review",
        description="Calls a rule sends for review wait here for an approver's decision.",
    )
    actions = parser.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="approval requests, newest first")
    add_config_argument(listing)
    add_json_argument(listing)
    listing.add_argument("--status", choices=approvals.STATUSES, help="only requests in this state")
    listing.set_defaults(handler=list_command)

    show = actions.add_parser("show", help="one request in full (parameters redacted)")
    add_config_argument(show)
    add_json_argument(show)
    show.add_argument("id")
    show.set_defaults(handler=show_command)

    for name, verb in (
        ("approve", "let the held call (or its retry) through"),
        ("deny", "refuse the held call"),
    ):
        decide = actions.add_parser(name, help=verb)
        add_config_argument(decide)
        add_json_argument(decide)
        decide.add_argument("id")
        decide.add_argument("--reason", required=True, help="why (recorded, shown to the agent)")
        decide.add_argument(
            "--token-file",
            type=Path,
            help=f"your OIDC token (default: ${TOKEN_FILE_ENV}, or the token in ${TOKEN_ENV})",
        )
        if name == "approve":
            decide.add_argument(
                "--window",
                metavar="DURATION",
                help="also allow this principal the action on these resources for 30m, 8h, ...",
            )
        decide.set_defaults(handler=decide_command, approve=name == "approve")


def list_command(args: argparse.Namespace) -> int:
    engine = open_store(args)
    try:
        approvals.sweep(engine)
        requests = approvals.list_requests(engine, status=args.status)
    finally:
        engine.dispose()
    rows = [request.as_dict() for request in requests]
    if not args.json:
        rows = [{**row, "created": row["created"].replace("+00:00", "Z")} for row in rows]
    print_rows(rows, LIST_COLUMNS, args.json)
    return 0


def show_command(args: argparse.Namespace) -> int:
    engine = open_store(args)
    try:
        approvals.sweep(engine)
        request = approvals.get(engine, args.id)
    finally:
        engine.dispose()
    if request is None:
        raise CommandError(f"no approval request {args.id}", exit_code=1)
    details = request.as_dict()
    if args.json:
        print(json.dumps(details, default=str))
        return 0
    for name, value in details.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str) if value else "-"
        print(f"{name + ':':<13} {'-' if value is None else value}")
    return 0


def decide_command(args: argparse.Namespace) -> int:
    gateway_config = load_config(args)
    settings = gateway_config.approvals
    window = parse_window(args.window, settings.max_window) if args.approve else None
    approver = authenticate(gateway_config, read_token(args.token_file))
    engine = open_store(args)
    try:
        request = approvals.decide(
            engine,
            args.id,
            approver,
            approve=args.approve,
            reason=args.reason,
            via="cli",
            grant_window=timedelta(seconds=settings.grant_window),
            window=window,
        )
    except approvals.DecisionRefused as exc:
        raise CommandError(str(exc), exit_code=1) from exc
    finally:
        engine.dispose()
    notifier = Notifier(settings.webhooks, settings.public_url)
    notifier.decided(request)
    notifier.close(timeout=FLUSH_TIMEOUT)
    if args.json:
        print(json.dumps(request.as_dict(), default=str))
    elif args.approve:
        extra = f"; {request.action} allowed for {args.window}" if window else ""
        print(
            f"{request.id} approved by {request.decided_by}: the held call goes on, "
            f"or its retry passes once until {request.as_dict()['grant_until']}{extra}"
        )
    else:
        print(f"{request.id} denied by {request.decided_by}")
    return 0


def read_token(path: Path | None) -> str:
    """The approver's token: from the file given, else the environment."""
    path = path or (Path(os.environ[TOKEN_FILE_ENV]) if os.environ.get(TOKEN_FILE_ENV) else None)
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the token file {path}: {exc.strerror}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CommandError(
            f"deciding needs your OIDC token: --token-file FILE, ${TOKEN_FILE_ENV} or ${TOKEN_ENV}"
        )
    return token


def authenticate(gateway_config: config.GatewayConfig, token: str) -> Principal:
    """Who the token proves the approver is (groups mapped as for agents)."""
    identity = gateway_config.identity
    validator = oidc.TokenValidator(identity.issuers, clock_skew=identity.clock_skew)
    try:
        return validator.validate(token).principal()
    except oidc.TokenError as exc:
        raise CommandError(f"your token was refused: {exc.reason}", exit_code=1) from exc


def parse_window(text: str | None, limit: int) -> timedelta | None:
    if text is None:
        return None
    try:
        return approvals.parse_window(text, limit)
    except ValueError as exc:
        raise CommandError(f"--window: {exc}") from exc
