"""The tightest policy that lets a principal do what it did, suggested from its recorded calls.

Every action the principal was allowed becomes part of an allow rule, with the
resources it touched and the regions it called, generalised just enough to
keep working tomorrow: S3 object keys become their common directory under the
bucket (``arn:aws:s3:::logs/ci/*``, not one entry per key), a handful of
names of one kind stay exact, more become their common prefix
(``function:ci-build-*``). Actions sharing resources and regions share a rule.

The same rules spelt for IAM give the policy document of the role the gateway
uses upstream for this principal, so the gateway's own credentials are least
privilege too (``addons.aws.iam_actions`` names the IAM permissions).

Calls that were denied or held for review at the time are left out and
listed: a suggestion never widens what the policy in force refused.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from addons.aws import iam_actions, models
from addons.rules.load import _known_regions
from addons.rules.whatif import RecordedCall, replayable

MAX_EXACT_NAMES = 5  # distinct names of one kind kept exact; more become a prefix
IAM_POLICY_VERSION = "2012-10-17"
IAM_MANAGED_POLICY_LIMIT = 6144  # characters, whitespace excluded
_KIND_END = re.compile(r"[/:]")  # "function:", "table/", "secret:": the kind of resource
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_MAX_SLUG = 48


@dataclass(frozen=True, order=True)
class ResourcePattern:
    """Literal pieces of an ARN with a wildcard between each two (``("arn:...:", "")`` ends in one).

    The only wildcards are the ones suggest puts there: a generalised name and
    an account the gateway did not know (awsgate spells it ``*`` in ARNs).
    """

    pieces: tuple[str, ...]

    def glob(self) -> str:
        """As an awsgate (fnmatch) resource glob: glob characters in names match themselves."""
        return "*".join(piece.translate(_FNMATCH_ESCAPES) for piece in self.pieces)

    def iam(self) -> str:
        """As an IAM resource pattern, where ``${*}``, ``${?}`` and ``${$}`` are literals."""
        return "*".join(piece.translate(_IAM_ESCAPES) for piece in self.pieces)


# fnmatch cannot escape a bracket in a way policy files accept: it matches any one character.
_FNMATCH_ESCAPES = str.maketrans({"*": "[*]", "?": "[?]", "[": "?", "]": "?"})
_IAM_ESCAPES = str.maketrans({"*": "${*}", "?": "${?}", "$": "${$}"})
_ANY_ACCOUNT = "*"


def _arn_head(parts: list[str]) -> tuple[str, ...]:
    """``arn:partition:service:region:account:`` as pattern pieces (an unknown account is open)."""
    if parts[4] == _ANY_ACCOUNT:
        return (":".join(parts[:4]) + ":", ":")
    return (":".join(parts[:5]) + ":",)


def _pattern(head: tuple[str, ...], literal: str, wildcard: bool = False) -> ResourcePattern:
    pieces = (*head[:-1], head[-1] + literal)
    return ResourcePattern((*pieces, "") if wildcard else pieces)


class _Names:
    """Names of one kind of resource: exact while few, then their common prefix."""

    def __init__(self, head: tuple[str, ...]) -> None:
        self.head = head  # pieces of "arn:aws:lambda:us-east-1:*:function:"
        self.names: set[str] = set()
        self.prefix: str | None = None  # set once there are too many names

    def add(self, name: str) -> None:
        if self.prefix is not None:
            self.prefix = _common_prefix(self.prefix, name)
            return
        self.names.add(name)
        if len(self.names) > MAX_EXACT_NAMES:
            self.prefix = functools.reduce(_common_prefix, sorted(self.names))
            self.names.clear()

    def patterns(self) -> list[ResourcePattern]:
        if self.prefix is not None:
            return [_pattern(self.head, self.prefix, wildcard=True)]
        return [_pattern(self.head, name) for name in self.names]


class _ObjectKeys:
    """S3 object keys in one bucket: their common directory."""

    def __init__(self, bucket_arn: tuple[str, ...]) -> None:
        self.bucket_arn = bucket_arn
        self.directory: list[str] | None = None

    def add(self, key: str) -> None:
        folders = key.split("/")[:-1]
        if self.directory is None:
            self.directory = folders
            return
        common = 0
        for mine, theirs in zip(self.directory, folders, strict=False):
            if mine != theirs:
                break
            common += 1
        del self.directory[common:]

    def patterns(self) -> list[ResourcePattern]:
        folders = "".join(f"{folder}/" for folder in self.directory or ())
        return [_pattern(self.bucket_arn, f"/{folders}", wildcard=True)]


@dataclass
class _ActionUse:
    """What the principal did with one action."""

    calls: int = 0
    regions: set[str] = field(default_factory=set)
    unrestricted: bool = False  # some call named no ARN: only "any resource" covers it
    kinds: dict[tuple[str, ...], _Names | _ObjectKeys] = field(default_factory=dict)

    def add(self, call: RecordedCall) -> None:
        self.calls += 1
        self.regions.add(call.operation.region)
        if not call.operation.resources:
            self.unrestricted = True
        for resource in call.operation.resources:
            if not self._add_resource(resource):
                self.unrestricted = True

    def _add_resource(self, arn: str) -> bool:
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or not parts[5]:
            return False
        head, resource = _arn_head(parts), parts[5]
        if parts[2] == "s3" and not parts[3] and not parts[4] and "/" in resource:
            bucket, _, key = resource.partition("/")
            where = ("s3-object", *head, bucket)
            kind: _Names | _ObjectKeys | None = self.kinds.get(where)
            if kind is None:
                kind = self.kinds[where] = _ObjectKeys((*head[:-1], head[-1] + bucket))
            kind.add(key)
            return True
        match = _KIND_END.search(resource)
        split = match.end() if match else 0
        where = ("name", *head, resource[:split])
        kind = self.kinds.get(where)
        if kind is None:
            kind = self.kinds[where] = _Names((*head[:-1], head[-1] + resource[:split]))
        kind.add(resource[split:])
        return True

    def resources(self) -> tuple[ResourcePattern, ...] | None:
        """None: any resource (some call acted on none, or on something that is not an ARN)."""
        if self.unrestricted:
            return None
        return tuple(
            sorted({pattern for kind in self.kinds.values() for pattern in kind.patterns()})
        )

    def region_list(self) -> tuple[str, ...] | None:
        if not self.regions <= _known_regions():
            return None  # a region policy files would not accept: leave regions open
        return tuple(sorted(self.regions))


@dataclass(frozen=True)
class SuggestedRule:
    name: str
    service: str
    operations: tuple[str, ...]
    resources: tuple[ResourcePattern, ...] | None  # None: any resource
    regions: tuple[str, ...] | None  # None: any region
    calls: int

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(f"{self.service}:{operation}" for operation in self.operations)


@dataclass
class Suggestion:
    selector: str  # "sub:agent-1", "group:deployers"
    rules: list[SuggestedRule]
    calls: int  # allowed calls the rules are built from
    first: datetime | None
    last: datetime | None
    left_out: Counter[str]  # "denied s3:DeleteBucket" -> calls not allowed at the time
    skipped: Counter[str]  # reason -> records that could not be replayed
    roles: Counter[str | None]  # the upstream role names (config ``roles``) the calls used

    def to_yaml(self) -> str:
        """A policy file ``load_policy`` accepts as it is, with where it came from as comments."""
        lines = [
            f"# Suggested by 'awsgate policy suggest' for {self.selector} from {self.calls}",
            f"# allowed call(s) recorded {_when(self.first)} to {_when(self.last)}.",
        ]
        if self.left_out:
            lines.append("# Left out, as they were not allowed at the time:")
            lines += [
                f"#   {what}: {count} call(s)" for what, count in sorted(self.left_out.items())
            ]
        lines.append("rules:")
        for rule in self.rules:
            lines += [
                f"  - name: {rule.name}",
                f"    description: {_flow(f'{rule.calls} call(s) seen')}",
                "    effect: allow",
                f"    principals: {_flow([self.selector])}",
                f"    actions: {_flow(list(rule.actions))}",
            ]
            if rule.resources is not None:
                lines.append(f"    resources: {_flow([r.glob() for r in rule.resources])}")
            if rule.regions is not None:
                lines.append(f"    regions: {_flow(list(rule.regions))}")
        return "\n".join(lines) + "\n"


def suggest(selector: str, rows: Iterable[Mapping[str, Any]]) -> Suggestion:
    """Rules for ``selector`` allowing what its recorded calls (``rows``, streamed) were allowed."""
    uses: dict[tuple[str, str], _ActionUse] = {}
    left_out: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    roles: Counter[str | None] = Counter()
    first = last = None
    count = 0
    for call in replayable(rows, skipped):
        operation = call.operation
        if call.effect != "allow":
            left_out[f"{_past(call.effect)} {operation.action}"] += 1
            continue
        if operation.service not in models.service_names():
            left_out[f"unknown service {operation.action}"] += 1
            continue
        uses.setdefault((operation.service, operation.name), _ActionUse()).add(call)
        roles[call.principal.role] += 1
        count += 1
        if call.time is not None:
            first = call.time if first is None else min(first, call.time)
            last = call.time if last is None else max(last, call.time)
    rules = _rules(selector, uses)
    return Suggestion(selector, rules, count, first, last, left_out, skipped, roles)


def _rules(selector: str, uses: dict[tuple[str, str], _ActionUse]) -> list[SuggestedRule]:
    """One rule per service, resources and regions; its actions are those that share them."""
    grouped: dict[tuple[Any, ...], list[tuple[str, _ActionUse]]] = {}
    for (service, operation), use in sorted(uses.items()):
        key = (service, use.resources(), use.region_list())
        grouped.setdefault(key, []).append((operation, use))
    slug = _slug(selector)
    per_service: Counter[str] = Counter()
    rules = []
    for (service, resources, regions), members in grouped.items():
        per_service[service] += 1
        number = per_service[service]
        rules.append(
            SuggestedRule(
                name=f"{slug}-{service}" + (f"-{number}" if number > 1 else ""),
                service=service,
                operations=tuple(operation for operation, _ in members),
                resources=resources,
                regions=regions,
                calls=sum(use.calls for _, use in members),
            )
        )
    return rules


@dataclass
class IamDocument:
    document: dict[str, Any]
    warnings: list[str]

    def to_json(self) -> str:
        return json.dumps(self.document, indent=2) + "\n"


def iam_policy(suggestion: Suggestion) -> IamDocument:
    """The IAM policy document granting the upstream role what the suggested rules allow."""
    by_resources: dict[tuple[str, ...], set[str]] = {}
    names: dict[tuple[str, ...], str] = {}
    warnings = []
    for rule in suggestion.rules:
        actions = set()
        for operation in rule.operations:
            if operation == "unknown":
                warnings.append(f"{rule.service}:unknown has no IAM permission; grant it by hand")
                continue
            permissions = iam_actions.permissions_for(rule.service, operation)
            if not permissions.verified:
                warnings.append(
                    f"{rule.service}:{operation}: IAM permission {permissions.actions[0]} "
                    "is a guess (not in the IAM catalogue); check it"
                )
            actions.update(permissions.actions)
        if not actions:
            continue
        resources = _iam_resources(rule.resources)
        by_resources.setdefault(resources, set()).update(actions)
        names.setdefault(resources, rule.name)
    statements = [
        {
            "Sid": sid,
            "Effect": "Allow",
            "Action": sorted(actions),
            "Resource": list(resources) if resources != ("*",) else "*",
        }
        for (resources, actions), sid in zip(
            by_resources.items(), _sids(list(names.values())), strict=True
        )
    ]
    document = {"Version": IAM_POLICY_VERSION, "Statement": statements}
    size = len(re.sub(r"\s", "", json.dumps(document)))
    if size > IAM_MANAGED_POLICY_LIMIT:
        warnings.append(
            f"the document has {size} characters, over IAM's {IAM_MANAGED_POLICY_LIMIT} "
            "for a managed policy: split it or generalise resources"
        )
    return IamDocument(document, warnings)


def _iam_resources(patterns: tuple[ResourcePattern, ...] | None) -> tuple[str, ...]:
    if patterns is None:
        return ("*",)
    found = (arn for pattern in patterns for arn in iam_actions.iam_resources(pattern.iam()))
    return tuple(dict.fromkeys(found))


def _sids(rule_names: list[str]) -> list[str]:
    """Statement ids from rule names: IAM allows letters and digits only, unique."""
    seen: set[str] = set()
    sids = []
    for name in rule_names:
        base = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name)) or "Rule"
        sid, number = base, 1
        while sid in seen:
            number += 1
            sid = f"{base}{number}"
        seen.add(sid)
        sids.append(sid)
    return sids


def _common_prefix(first: str, second: str) -> str:
    size = min(len(first), len(second))
    return first[: next((i for i in range(size) if first[i] != second[i]), size)]


def _slug(selector: str) -> str:
    """A rule-name-safe form of the principal (``sub:repo:org/x`` -> ``repo:org-x``)."""
    value = selector.partition(":")[2] or selector
    slug = _NAME_UNSAFE.sub("-", value).strip("-.:_")[:_MAX_SLUG].rstrip("-.:_")
    return slug or "suggested"


def _past(effect: str) -> str:
    return {"deny": "denied", "review": "reviewed"}.get(effect, effect)


def _flow(value: Any) -> str:
    """A YAML flow scalar or sequence: JSON is valid YAML and quotes every string."""
    return json.dumps(value, ensure_ascii=False)


def _when(value: datetime | None) -> str:
    if value is None:
        return "(unknown)"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
