"""``awsgate policy check|test``: validate policy files, try a request against them.

``policy test`` exits 0 when the request would be allowed, 1 when denied and
3 when it needs review, so scripts can assert on a policy; 2 means the command
itself failed (bad arguments, unreadable or invalid policy).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from addons import rules
from addons.cli import common
from addons.context import Operation, Principal
from addons.rules.actions import canonical_action
from addons.rules.check import check
from addons.rules.load import parse_selector

EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_ERROR = 2
EXIT_REVIEW = 3
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_EXIT_CODES = {"allow": EXIT_ALLOW, "deny": EXIT_DENY, "review": EXIT_REVIEW}


def register(subcommands: argparse._SubParsersAction) -> None:
    group = subcommands.add_parser("policy", help="check policy files and test requests")
    commands = group.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate policy files, report errors and warnings")
    check.add_argument(
        "path", nargs="?", type=Path, help="policy file or directory (default: config's policies)"
    )
    common.add_config_argument(check)
    check.set_defaults(handler=run_check)

    test = commands.add_parser(
        "test", help="decide one request: exit 0 allow, 1 deny, 3 review, 2 error"
    )
    test.add_argument("--policies", type=Path, help="policy file or directory (default: config's)")
    test.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="group:NAME (repeatable), sub:SUBJECT, role:NAME or issuer:URL",
    )
    test.add_argument("--action", required=True, help="SERVICE:Operation, e.g. s3:DeleteBucket")
    test.add_argument("--resource", action="append", default=[], metavar="ARN")
    test.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="request parameter; numbers, true/false and JSON lists/objects are parsed",
    )
    test.add_argument("--region", default="us-east-1")
    common.add_config_argument(test)
    common.add_json_argument(test)
    test.set_defaults(handler=run_test)


def run_check(args: argparse.Namespace) -> int:
    path = args.path or _configured_policies(args)
    if not path.exists():
        raise common.CommandError(f"{path}: no such file or directory")
    policy, problems = check(path)
    for problem in problems:
        print(problem)
    errors = sum(problem.severity == "error" for problem in problems)
    warnings = len(problems) - errors
    if policy is None:
        print(f"{path}: {errors} error(s), {warnings} warning(s)")
        return 1
    print(
        f"{path}: ok, {len(policy.rules)} rule(s) and {len(policy.masks)} mask(s) "
        f"in {len(policy.files)} file(s), {warnings} warning(s)"
    )
    return 0


def run_test(args: argparse.Namespace) -> int:
    path = args.policies or _configured_policies(args)
    try:
        policy = rules.load_policy(path)
    except rules.PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise common.CommandError(
            f"{path}: policy has errors (see 'awsgate policy check')"
        ) from exc
    principal = principal_from_selectors(args.principal)
    try:
        service, name = canonical_action(args.action)
    except ValueError as exc:
        raise common.CommandError(str(exc)) from exc
    operation = Operation(
        service=service,
        name=name,
        region=args.region,
        signing_name=service,
        params=dict(parse_param(text) for text in args.param),
        resources=list(args.resource),
    )
    decision = rules.evaluate(policy, principal, operation)
    matched = [rule.name for rule in rules.matching_rules(policy, principal, operation)]
    if args.json:
        print(
            json.dumps(
                {
                    "effect": decision.effect,
                    "rule": decision.rule,
                    "message": decision.message,
                    "approvers": list(decision.approvers),
                    "matched": matched,
                    "action": operation.action,
                    "resources": operation.resources,
                    "region": operation.region,
                }
            )
        )
    else:
        print(f"decision:  {decision.effect}")
        print(f"rule:      {decision.rule}")
        print(f"message:   {decision.message}")
        if decision.approvers:
            print(f"approvers: {', '.join(decision.approvers)}")
        print(f"matched:   {', '.join(matched) or '(none)'}")
    return _EXIT_CODES[decision.effect]


def principal_from_selectors(selectors: list[str]) -> Principal:
    """A principal from ``--principal`` options; unset parts stay empty."""
    fields: dict[str, str] = {}
    groups = []
    for text in selectors:
        try:
            selector = parse_selector(text)
        except ValueError as exc:
            raise common.CommandError(str(exc)) from exc
        if selector.kind == "group":
            groups.append(selector.value)
        elif selector.kind == "*":
            raise common.CommandError("--principal needs a concrete selector, not '*'")
        elif selector.kind in fields:
            raise common.CommandError(f"--principal {selector.kind}: given more than once")
        else:
            fields[selector.kind] = selector.value
    return Principal(
        issuer=fields.get("issuer", ""),
        subject=fields.get("sub", ""),
        groups=frozenset(groups),
        role=fields.get("role"),
    )


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE as int, float, bool, JSON list/object or string."""
    name, equals, raw = text.partition("=")
    if not equals or not name:
        raise common.CommandError(f"--param {text!r} must look like NAME=VALUE")
    if raw in ("true", "false"):
        return name, raw == "true"
    if _NUMBER.fullmatch(raw):
        return name, float(raw) if any(c in raw for c in ".eE") else int(raw)
    if raw[:1] in ("[", "{"):
        try:
            return name, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise common.CommandError(f"--param {name}: not valid JSON: {exc}") from exc
    return name, raw


def _configured_policies(args: argparse.Namespace) -> Path:
    config = common.load_config(args)
    if config.policies is None:
        raise common.CommandError(f"{config.path}: no 'policies' set; give a policy path")
    return config.policies
