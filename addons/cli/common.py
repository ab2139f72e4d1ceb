"""Shared pieces of the ``awsgate`` commands: config option, errors, output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from addons import config


class CommandError(Exception):
    """A user-facing failure: printed to stderr as ``awsgate: ...``, exit code non-zero."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help=f"config file (default: ${config.CONFIG_ENV} or ./{config.DEFAULT_CONFIG_NAME})",
    )


def load_config(args: argparse.Namespace) -> config.GatewayConfig:
    try:
        return config.load(args.config or config.default_path())
    except config.ConfigError as exc:
        raise CommandError(str(exc)) from exc


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")


def print_rows(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], as_json: bool) -> int:
    """Print rows as JSON lines or as an aligned table; returns the row count."""
    rows = list(rows)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str, sort_keys=False))
        return len(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)
    ]
    print("  ".join(column.upper().ljust(widths[i]) for i, column in enumerate(columns)).rstrip())
    for line in cells:
        print("  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip())
    if not rows:
        print("(none)", file=sys.stderr)
    return len(rows)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) or "-"
    return str(value)
