"""The parsed form of a policy: rules, masks and the pieces they are made of.

Every glob is compiled once when the policy is loaded, so evaluating a request
is a loop over precompiled regular expressions and never touches YAML again.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from addons.context import Effect, Principal

Severity = Literal["error", "warning"]
SelectorKind = Literal["group", "sub", "role", "issuer", "*"]
MaskScope = Literal["agent", "record"]

GLOB_CHARS = frozenset("*?[")


def is_glob(text: str) -> bool:
    return not GLOB_CHARS.isdisjoint(text)


def compile_glob(text: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """fnmatch semantics (``*`` also crosses ``/`` and ``:``), compiled once."""
    return re.compile(fnmatch.translate(text), re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True)
class Location:
    file: Path
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One finding in a policy file, printed like a compiler diagnostic."""

    file: Path
    line: int
    column: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        summary = str(problems[0]) if problems else "invalid policy"
        if len(problems) > 1:
            summary += f" (and {len(problems) - 1} more)"
        super().__init__(summary)


@dataclass(frozen=True)
class Glob:
    """A pattern as written plus its compiled form."""

    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def of(cls, text: str, *, ignore_case: bool = False) -> Glob:
        return cls(text, compile_glob(text, ignore_case=ignore_case))

    def matches(self, value: str) -> bool:
        return self.regex.match(value) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Selector:
    """``group:NAME``, ``sub:GLOB``, ``role:GLOB``, ``issuer:URL`` or ``*``."""

    kind: SelectorKind
    value: str
    glob: Glob | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return "*" if self.kind == "*" else f"{self.kind}:{self.value}"

    def matches(self, principal: Principal) -> bool:
        match self.kind:
            case "*":
                return True
            case "group":
                return self.value in principal.groups
            case "issuer":
                return principal.issuer.rstrip("/") == self.value
            case "sub":
                return self.glob is not None and self.glob.matches(principal.subject)
            case "role":
                role = principal.role
                return role is not None and self.glob is not None and self.glob.matches(role)
        return False

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ActionPattern:
    """``service:Operation`` with fnmatch globs on both sides, case-insensitive."""

    text: str
    service: Glob
    operation: Glob

    @property
    def explicit(self) -> bool:
        """Names one action exactly: the only form that may allow credential minting."""
        return not is_glob(self.service.text) and not is_glob(self.operation.text)

    @property
    def names_unknown(self) -> bool:
        """Lists ``unknown`` itself: the only form that may allow unresolved operations."""
        return self.operation.text.lower() == "unknown"

    def matches(self, service: str, operation: str) -> bool:
        return self.service.matches(service) and self.operation.matches(operation)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ParamCondition:
    """A condition on one request parameter, reached by a dot path.

    Exactly one of ``globs`` (strings), ``bounds`` (numbers) or ``equals``
    (booleans) is set.
    """

    key: str  # as written, e.g. "TagSpecifications.ResourceType"
    path: tuple[str, ...]
    globs: tuple[Glob, ...] = ()
    bounds: tuple[tuple[str, float], ...] = ()
    equals: bool | None = None

    def accepts(self, value: Any) -> bool:
        """Whether one leaf value satisfies the condition."""
        if self.bounds:
            number = as_number(value)
            return number is not None and all(
                _COMPARE[op](number, limit) for op, limit in self.bounds
            )
        if self.equals is not None:
            return isinstance(value, bool) and value is self.equals
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            return False
        return any(glob.matches(str(value)) for glob in self.globs)


NUMERIC_OPERATORS = ("lt", "le", "gt", "ge")

_COMPARE = {
    "lt": lambda value, limit: value < limit,
    "le": lambda value, limit: value <= limit,
    "gt": lambda value, limit: value > limit,
    "ge": lambda value, limit: value >= limit,
}


def as_number(value: Any) -> float | None:
    """Numbers and numeric strings (query-protocol parameters arrive as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Rule:
    name: str
    effect: Effect
    principals: tuple[Selector, ...]
    actions: tuple[ActionPattern, ...]
    location: Location
    resources: tuple[Glob, ...] | None = None  # None: any resource
    regions: tuple[Glob, ...] | None = None  # None: any region
    params: tuple[ParamCondition, ...] = ()
    approvers: tuple[Selector, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Mask:
    """Which response fields to redact for whom (evaluated by the masking addon)."""

    name: str
    principals: tuple[Selector, ...]
    actions: tuple[ActionPattern, ...]
    fields: tuple[str, ...]  # JSONPath expressions, validated with jsonpath_ng
    scope: MaskScope
    location: Location


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    masks: tuple[Mask, ...] = ()
    files: tuple[Path, ...] = ()
    # (service, operation) -> the rules whose actions match it; filled by
    # addons.rules.evaluate so each action's globs are tried once per policy.
    action_index: dict[tuple[str, str], tuple[Rule, ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)
