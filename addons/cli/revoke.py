"""``awsgate revoke``: stop a session or a principal at every gateway sharing the store."""

from __future__ import annotations

import argparse
import getpass

from addons.cli.audit import format_time, open_store, parse_time
from addons.cli.common import CommandError, add_config_argument, add_json_argument, print_rows
from addons.store import revocations

LIST_COLUMNS = ("id", "kind", "target", "reason", "created", "until", "by")


def register(subcommands: argparse._SubParsersAction) -> None:
    revoke = subcommands.add_parser(
        "revoke",
        help="revoke a session or a principal",
        description="Gateways sharing the store refuse the revoked calls within seconds.",
    )
    add_config_argument(revoke)
    add_json_argument(revoke)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--session", metavar="ID", help="one session (credential or proxy token)")
    target.add_argument("--principal", metavar="sub:GLOB", help="every session of the subjects")
    target.add_argument("--list", action="store_true", help="show the revocations in force")
    target.add_argument("--lift", type=int, metavar="N", help="end revocation N now")
    revoke.add_argument("--reason", default="", help="why (recorded and shown to the agent)")
    revoke.add_argument("--until", metavar="T", help="expires: 2h, 1d, or an ISO timestamp")
    revoke.add_argument("--all", action="store_true", help="with --list: expired ones too")
    revoke.set_defaults(handler=revoke_command)


def revoke_command(args: argparse.Namespace) -> int:
    until = parse_time(args.until, future=True) if args.until else None
    if args.principal and not args.principal.removeprefix("sub:"):
        raise CommandError("--principal needs a subject glob, as in sub:ci-*")
    engine = open_store(args)
    try:
        if args.list:
            rows = revocations.list_revocations(engine, include_expired=args.all)
            print_rows([_row(revocation) for revocation in rows], LIST_COLUMNS, args.json)
            return 0
        if args.lift is not None:
            if not revocations.lift(engine, args.lift):
                raise CommandError(f"no revocation {args.lift} is in force", exit_code=1)
            print(f"lifted revocation {args.lift}")
            return 0
        reason = args.reason or "revoked by an operator"
        if args.session:
            done = revocations.revoke_session(engine, args.session, reason, until, _operator())
        else:
            done = revocations.revoke_principal(engine, args.principal, reason, until, _operator())
    finally:
        engine.dispose()
    print_rows([_row(done)], LIST_COLUMNS, args.json)
    return 0


def _row(revocation: revocations.Revocation) -> dict[str, object]:
    target = revocation.target
    return {
        "id": revocation.id,
        "kind": revocation.kind,
        "target": f"sub:{target}" if revocation.kind == revocations.PRINCIPAL else target,
        "reason": revocation.reason,
        "created": format_time(revocation.created),
        "until": format_time(revocation.until),
        "by": revocation.created_by,
    }


def _operator() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
