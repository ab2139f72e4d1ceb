"""``awsgate dev-idp``: a local OIDC issuer for tests and demos (development only)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from addons.auth import devidp
from addons.cli.common import CommandError

KEYS_ENV = "AWSGATE_DEV_IDP_KEYS"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
NOTICE = "Development tool: a local OIDC issuer for tests and demos. Never use it in production."


def default_keys_dir() -> Path:
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".cache" / "awsgate" / "dev-idp")


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "dev-idp",
        help="local OIDC issuer for tests and demos (development only)",
        description=NOTICE,
    )
    commands = parser.add_subparsers(dest="dev_idp_command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve discovery and JWKS over HTTP", description=NOTICE
    )
    _add_keys_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port to bind (default: any free one)")
    serve.add_argument("--public-url", help="issuer URL if clients reach it by another name")
    serve.add_argument("--ec", action="store_true", help="also publish an EC P-256 (ES256) key")
    serve.set_defaults(handler=serve_command)

    token = commands.add_parser("token", help="print a signed token", description=NOTICE)
    _add_keys_argument(token)
    token.add_argument("--sub", required=True, help="subject claim")
    token.add_argument("--groups", default="", help="comma-separated groups claim")
    token.add_argument("--aud", default="awsgate", help="audience (default: awsgate)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    token.add_argument("--issuer", help="issuer URL (default: the one last served from --keys)")
    token.add_argument("--alg", default="RS256", choices=sorted(devidp.KEY_TYPES))
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is parsed as JSON if it can be, else taken as text (repeatable)",
    )
    token.set_defaults(handler=token_command)

    rotate = commands.add_parser(
        "rotate", help="add a new signing key and make it current", description=NOTICE
    )
    _add_keys_argument(rotate)
    rotate.set_defaults(handler=rotate_command)


def _add_keys_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        type=Path,
        default=None,
        help=f"key directory (default: ${KEYS_ENV} or ~/.cache/awsgate/dev-idp)",
    )


def _idp(args: argparse.Namespace) -> devidp.DevIdp:
    try:
        return devidp.DevIdp(args.keys or default_keys_dir())
    except OSError as exc:
        raise CommandError(f"dev-idp: cannot use key directory: {exc}") from exc


def serve_command(args: argparse.Namespace) -> int:
    idp = _idp(args)
    if args.ec:
        idp.current("ES256")
    print(f"awsgate: {NOTICE}", file=sys.stderr)
    # Blocked before the server's thread starts (it inherits the mask) and taken by
    # sigwait: the kernel may hand a process signal to any thread that does not block
    # it, and a main thread asleep in a lock is not woken by one sent to another thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        server = idp.serve(args.host, args.port, args.public_url)
    except OSError as exc:
        raise CommandError(f"dev-idp: cannot listen on {args.host}:{args.port}: {exc}") from exc
    print(server.url, flush=True)
    try:
        signal.sigwait(STOP_SIGNALS)
    finally:
        server.stop()
    return 0


def token_command(args: argparse.Namespace) -> int:
    try:
        token = _idp(args).token(
            sub=args.sub,
            groups=[name for name in args.groups.split(",") if name],
            aud=args.aud,
            ttl=args.ttl,
            extra_claims=dict(_claim(item) for item in args.claim),
            alg=args.alg,
            issuer=args.issuer,
        )
    except devidp.DevIdpError as exc:
        raise CommandError(f"dev-idp: {exc}") from exc
    print(token)
    return 0


def rotate_command(args: argparse.Namespace) -> int:
    for entry in _idp(args).rotate():
        print(f"{entry.alg} {entry.kid}")
    return 0


def _claim(item: str) -> tuple[str, Any]:
    name, equals, text = item.partition("=")
    if not name or not equals:
        raise CommandError(f"dev-idp: --claim needs NAME=VALUE, got {item!r}")
    try:
        return name, json.loads(text)
    except ValueError:
        return name, text
