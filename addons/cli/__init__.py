"""The ``awsgate`` command: one module per command group, each with ``register``.

Conventions for every command: ``--config FILE`` (default ``awsgate.yaml`` or
``$AWSGATE_CONFIG``), listings print a table or JSON lines with ``--json``,
errors go to stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from addons.cli import (
    approvals,
    audit,
    common,
    devidp,
    policy,
    revoke,
    run,
    serve,
    sessions,
)

DESCRIPTION = "awsgate: a gateway that puts autonomous agents on a leash when they call AWS."
COMMAND_GROUPS = (run, policy, sessions, audit, revoke, approvals, serve, devidp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awsgate", description=DESCRIPTION)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except common.CommandError as exc:
        print(f"awsgate: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
