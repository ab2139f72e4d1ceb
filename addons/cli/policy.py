"""``awsgate policy check|test|whatif|suggest``: validate, try, and write policies from traffic.

``policy test`` exits 0 when the request would be allowed, 1 when denied and
3 when it needs review, so scripts can assert on a policy; 2 means the command
itself failed (bad arguments, unreadable or invalid policy).

``policy whatif`` replays recorded calls against a candidate policy and exits
1 when any call would newly be denied, so it can gate a policy pull request.
``policy suggest`` prints the tightest policy (and, with ``--iam``, the IAM
document for the gateway's upstream role) that allows what a principal did.
Both stream the store's records and report progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from addons import rules
from addons.cli import audit, common
from addons.context import Operation, Principal
from addons.rules.actions import canonical_action
from addons.rules.check import check
from addons.rules.load import parse_selector
from addons.rules.suggest import iam_policy, suggest
from addons.rules.whatif import REPLAY_COLUMNS, Change, WhatIfReport, what_if
from addons.store import queries
from addons.store.models import calls

EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_ERROR = 2
EXIT_REVIEW = 3
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_EXIT_CODES = {"allow": EXIT_ALLOW, "deny": EXIT_DENY, "review": EXIT_REVIEW}
EXIT_NEWLY_DENIED = 1
DEFAULT_SINCE = "7d"
PROGRESS_EVERY = 10_000  # records between two progress lines on stderr


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

    whatif = commands.add_parser(
        "whatif",
        help="replay recorded calls on a candidate policy; exit 1 if any would newly be denied",
    )
    whatif.add_argument(
        "--policies", type=Path, required=True, help="the candidate policy file or directory"
    )
    _add_history_arguments(whatif, principal_required=False)
    common.add_config_argument(whatif)
    common.add_json_argument(whatif)
    whatif.set_defaults(handler=run_whatif)

    suggest_ = commands.add_parser(
        "suggest", help="print the least-privilege policy for what a principal did"
    )
    _add_history_arguments(suggest_, principal_required=True)
    suggest_.add_argument(
        "--iam",
        type=Path,
        metavar="FILE",
        help="also write the IAM policy document for the gateway's upstream role",
    )
    common.add_config_argument(suggest_)
    suggest_.set_defaults(handler=run_suggest)


def _add_history_arguments(parser: argparse.ArgumentParser, *, principal_required: bool) -> None:
    parser.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        help=f"recorded calls since: 90m, 2h, 7d or an ISO timestamp (default {DEFAULT_SINCE})",
    )
    parser.add_argument(
        "--principal",
        required=principal_required,
        help="sub:GLOB, group:NAME or a subject glob",
    )


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
    policy = _load_policy(args.policies or _configured_policies(args))
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


def _load_policy(path: Path) -> rules.Policy:
    """The policy at ``path``; its problems on stderr and a command error when it has any."""
    try:
        return rules.load_policy(path)
    except rules.PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise common.CommandError(
            f"{path}: policy has errors (see 'awsgate policy check')"
        ) from exc


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


def run_whatif(args: argparse.Namespace) -> int:
    policy = _load_policy(args.policies)
    query = _history_query(args)
    engine = audit.open_store(args)
    try:
        report = what_if(policy, _progress(recorded_calls(engine, query)))
    finally:
        engine.dispose()
    if args.json:
        for change in report.sorted_changes():
            print(json.dumps(_change_json(change)))
    else:
        _print_changes(report)
    print(_whatif_summary(report, query), file=sys.stderr if args.json else sys.stdout)
    return EXIT_NEWLY_DENIED if report.newly_denied else 0


def run_suggest(args: argparse.Namespace) -> int:
    query = _history_query(args)
    selector = _suggestion_selector(args.principal)
    engine = audit.open_store(args)
    try:
        suggestion = suggest(selector, _progress(recorded_calls(engine, query)))
    finally:
        engine.dispose()
    if not suggestion.rules:
        raise common.CommandError(
            f"no allowed calls of {selector} recorded since {audit.format_time(query.since)}"
            + _skipped_note(suggestion.skipped),
            exit_code=1,
        )
    print(suggestion.to_yaml(), end="")
    print(
        f"awsgate: {len(suggestion.rules)} rule(s) from {suggestion.calls} allowed call(s)"
        + _skipped_note(suggestion.skipped),
        file=sys.stderr,
    )
    for what, count in sorted(suggestion.left_out.items()):
        print(f"awsgate: left out {what} ({count} call(s))", file=sys.stderr)
    if args.iam is not None:
        document = iam_policy(suggestion)
        for warning in document.warnings:
            print(f"awsgate: IAM: {warning}", file=sys.stderr)
        try:
            args.iam.write_text(document.to_json())
        except OSError as exc:
            raise common.CommandError(f"cannot write {args.iam}: {exc.strerror}") from exc
        statements = len(document.document["Statement"])
        roles = ", ".join(
            f"roles.{role}" if role else "the default credentials" for role in suggestion.roles
        )
        print(
            f"awsgate: IAM policy with {statements} statement(s) in {args.iam}, "
            f"for the gateway's upstream credentials the calls used ({roles})",
            file=sys.stderr,
        )
    return 0


def recorded_calls(engine: Engine, query: queries.CallQuery) -> Iterator[Mapping[str, Any]]:
    """The columns a replay needs of the calls ``query`` selects, oldest first, streamed.

    Like ``queries.search_calls`` but without bodies and headers: a replay of
    months of records reads a small fraction of the store.
    """
    statement = select(*(calls.c[name] for name in REPLAY_COLUMNS))
    if query.since is not None:
        statement = statement.where(calls.c.time >= query.since)
    if query.principal is not None:
        statement = query.principal.narrow(statement, calls.c.subject)
    statement = statement.order_by(calls.c.time, calls.c.id)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=queries.PAGE_SIZE).execute(statement)
        for row in result:
            mapping = row._mapping
            if query.matches(mapping):
                yield mapping


def _history_query(args: argparse.Namespace) -> queries.CallQuery:
    principal = queries.PrincipalFilter.parse(args.principal) if args.principal else None
    return queries.CallQuery(principal=principal, since=audit.parse_time(args.since))


def _suggestion_selector(principal: str) -> str:
    """The policy selector for ``--principal`` (a bare subject glob is ``sub:GLOB``)."""
    parsed = queries.PrincipalFilter.parse(principal)
    text = f"group:{parsed.group}" if parsed.group is not None else f"sub:{parsed.subject_glob}"
    try:
        parse_selector(text)
    except ValueError as exc:
        raise common.CommandError(f"--principal: {exc}") from exc
    return text


def _progress(rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Pass rows through, telling stderr how many were read every ``PROGRESS_EVERY``."""
    started = time.monotonic()
    count = 0
    for count, row in enumerate(rows, 1):
        if count % PROGRESS_EVERY == 0:
            print(
                f"awsgate: {count} record(s) read ({time.monotonic() - started:.1f} s)",
                file=sys.stderr,
            )
        yield row
    print(f"awsgate: {count} record(s) read in {time.monotonic() - started:.1f} s", file=sys.stderr)


def _print_changes(report: WhatIfReport) -> None:
    principal = None
    for change in report.sorted_changes():
        if change.principal != principal:
            principal = change.principal
            print(principal)
        mark = "NEWLY DENIED" if change.newly_denied else "changed"
        print(
            f"  {change.action}  {change.before} -> {change.after}  {change.count} call(s)  "
            f"[{mark}; now {change.examples[0].rule_after}, was {change.examples[0].rule_before}]"
        )
        for example in change.examples:
            resources = ", ".join(example.resources) or "-"
            print(f"      {audit.format_time(example.time)}  {example.request_id}  {resources}")


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "principal": change.principal,
        "action": change.action,
        "before": change.before,
        "after": change.after,
        "calls": change.count,
        "newly_denied": change.newly_denied,
        "examples": [
            {
                "time": audit.format_time(example.time),
                "request_id": example.request_id,
                "resources": list(example.resources),
                "rule_before": example.rule_before,
                "rule_after": example.rule_after,
            }
            for example in change.examples
        ],
    }


def _whatif_summary(report: WhatIfReport, query: queries.CallQuery) -> str:
    changed = sum(change.count for change in report.changes.values())
    return (
        f"{report.replayed} call(s) since {audit.format_time(query.since)} replayed: "
        f"{report.unchanged} unchanged, {changed} changed, {report.newly_denied} newly denied"
        + _skipped_note(report.skipped)
    )


def _skipped_note(skipped: Counter[str]) -> str:
    if not skipped:
        return ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
    return f"; {sum(skipped.values())} skipped ({reasons})"
