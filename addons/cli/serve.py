"""``awsgate serve``: the approval page and its HTTP API, on the shared store."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from addons import web
from addons.cli.audit import open_store
from addons.cli.common import CommandError, add_config_argument, load_config
from addons.notify import FLUSH_TIMEOUT


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve the approval page and API",
        description="Approvers log in through approvals.oidc and decide held calls.",
    )
    add_config_argument(parser)
    parser.add_argument("--port", type=int, default=8081, help="port (default 8081; 0: any)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    gateway_config = load_config(args)
    engine = open_store(args)
    try:
        server, site = web.make_site_server(gateway_config, engine, args.host, args.port)
    except OSError as exc:
        engine.dispose()
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from exc
    if site.login is None:
        print(
            "awsgate: approvals.oidc is not set: only the HTTP API (bearer tokens) works",
            file=sys.stderr,
        )
    print(site.base_url, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        site.notifier.close(timeout=FLUSH_TIMEOUT)
        engine.dispose()
    return 0


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
