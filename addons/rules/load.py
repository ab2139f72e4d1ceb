"""Reading policy files: YAML nodes to a validated ``Policy``, or every problem found.

The files are read with ``yaml.compose`` rather than ``safe_load`` so each
problem can name the file, line and column of the offending node. Loading
never stops at the first problem: an operator fixing a policy wants the whole
list. Any problem makes the whole policy unusable (fail closed), so a
half-understood rule can never widen or narrow access silently.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonpath_ng
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from addons.aws import models
from addons.rules import actions
from addons.rules.model import (
    NUMERIC_OPERATORS,
    ActionPattern,
    Glob,
    Location,
    Mask,
    ParamCondition,
    Policy,
    PolicyError,
    Problem,
    Rule,
    Selector,
    as_number,
    is_glob,
)

POLICY_SUFFIXES = (".yaml", ".yml")
EFFECTS = ("allow", "deny", "review")
RESERVED_RULE_NAMES = ("default-deny",)
RESERVED_RULE_PREFIX = "builtin-"
MASK_SCOPES = ("agent", "record")

_TOP_KEYS = ("rules", "masks")
_RULE_KEYS = (
    "name",
    "description",
    "effect",
    "principals",
    "actions",
    "resources",
    "regions",
    "params",
    "approvers",
)
_MASK_KEYS = ("name", "description", "principals", "actions", "fields", "scope")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_GROUP = re.compile(r"[^\s*?\[\]]+")
_REGION_CHARS = re.compile(r"[a-z0-9*?\[\]!-]+")


def policy_files(path: Path) -> list[Path]:
    """The files a policy path stands for: itself, or the directory's *.yaml/*.yml.

    Only the directory's own files count (not subdirectories, so examples kept
    below the live policy stay inert) and hidden files are skipped (editors'
    swap and lock files).
    """
    if path.is_dir():
        return sorted(
            child
            for child in path.iterdir()
            if child.suffix in POLICY_SUFFIXES
            and not child.name.startswith(".")
            and child.is_file()
        )
    return [path]


def load_policy(path: Path | str) -> Policy:
    """Load a policy file or directory; raises ``PolicyError`` listing every problem."""
    path = Path(path)
    problems: list[Problem] = []
    if not path.exists():
        raise PolicyError([Problem(path, 1, 1, "no such file or directory")])
    files = policy_files(path)
    if not files:
        raise PolicyError([Problem(path, 1, 1, "no *.yaml or *.yml policy files in directory")])
    rules: list[Rule] = []
    masks: list[Mask] = []
    for file in files:
        reader = _FileReader(file, problems)
        file_rules, file_masks = reader.read()
        rules.extend(file_rules)
        masks.extend(file_masks)
    _check_unique(rules, "rule", problems)
    _check_unique(masks, "mask", problems)
    if problems:
        raise PolicyError(problems)
    return Policy(rules=tuple(rules), masks=tuple(masks), files=tuple(files))


def parse_selector(text: str) -> Selector:
    """A principal selector; ValueError says what is wrong with it."""
    if text == "*":
        return Selector("*", "")
    kind, colon, value = text.partition(":")
    if not colon or kind not in ("group", "sub", "role", "issuer"):
        raise ValueError(
            f"principal {text!r} must be group:NAME, sub:GLOB, role:NAME, issuer:URL or '*'"
        )
    if not value:
        raise ValueError(f"principal {text!r} has an empty {kind}")
    if kind == "group" and not _GROUP.fullmatch(value):
        raise ValueError(f"group {value!r} must be an exact name (no spaces or glob characters)")
    if kind == "issuer":
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"issuer {value!r} must be an http(s) URL")
        return Selector("issuer", value.rstrip("/"))
    if kind in ("sub", "role"):
        if value.count("[") != value.count("]"):
            raise ValueError(f"principal {text!r} has an unbalanced '[' in its glob")
        return Selector(kind, value, Glob.of(value))
    return Selector(kind, value)


def parse_param_path(key: str) -> tuple[str, ...]:
    """``A.B.0.C`` -> ("A", "B", "0", "C"); ValueError for empty segments."""
    path = tuple(key.split("."))
    if not all(path):
        raise ValueError(f"parameter path {key!r} has an empty segment")
    return path


class _FileReader:
    """Walks one file's YAML nodes, recording problems with their positions."""

    def __init__(self, file: Path, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self.constructor = SafeConstructor()

    def read(self) -> tuple[list[Rule], list[Mask]]:
        root = self._compose()
        if root is None:
            return [], []
        top = self._mapping(root, _TOP_KEYS, "a policy file")
        if top is None:
            return [], []
        rules = [
            rule
            for item in self._sequence(top.get("rules"), "rules")
            if (rule := self._rule(item)) is not None
        ]
        masks = [
            mask
            for item in self._sequence(top.get("masks"), "masks")
            if (mask := self._mask(item)) is not None
        ]
        return rules, masks

    # -- YAML plumbing ----------------------------------------------------------

    def _compose(self) -> Node | None:
        try:
            text = self.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(Problem(self.file, 1, 1, f"cannot read policy file: {exc}"))
            return None
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = f"not valid YAML: {exc.problem or exc.context}"
            self.problems.append(Problem(self.file, line, column, message))
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.file, 1, 1, f"not valid YAML: {exc}"))
        return None

    def error(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, message))

    def location(self, node: Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def value(self, node: Node) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node, f"cannot read value: {exc}")
            return None

    def _mapping(
        self, node: Node, allowed: tuple[str, ...], what: str
    ) -> dict[str, tuple[Node, Node]] | None:
        """Key -> (key node, value node), flagging unknown and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping with keys {', '.join(allowed)}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, f"keys of {what} must be strings")
            elif key in entries:
                self.error(key_node, f"duplicate key {key!r} in {what}")
            elif key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suffix = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(
                    key_node, f"unknown key {key!r} in {what} (known: {', '.join(allowed)}){suffix}"
                )
            else:
                entries[key] = (key_node, value_node)
        return entries

    def _sequence(self, entry: tuple[Node, Node] | None, what: str) -> list[Node]:
        if entry is None:
            return []
        node = entry[1]
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list")
            return []
        return list(node.value)

    def _strings(self, node: Node, what: str) -> Iterator[tuple[str, Node]]:
        """A string or a non-empty list of strings, each with its node."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if isinstance(node, SequenceNode) and not items:
            self.error(node, f"{what} must not be empty")
        for item in items:
            value = self.value(item) if isinstance(item, ScalarNode) else None
            if not isinstance(value, str) or not value:
                self.error(item, f"{what} must be a non-empty string or a list of them")
            else:
                yield value, item

    # -- rules and masks --------------------------------------------------------

    def _name(self, entries: dict[str, tuple[Node, Node]], node: Node, what: str) -> str | None:
        if "name" not in entries:
            self.error(node, f"{what} has no name")
            return None
        name_node = entries["name"][1]
        name = self.value(name_node)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.error(
                name_node,
                f"{what} name must be a string of letters, digits and . _ - : "
                "(at most 128, starting with a letter or digit)",
            )
            return None
        if what == "rule" and (
            name in RESERVED_RULE_NAMES or name.startswith(RESERVED_RULE_PREFIX)
        ):
            self.error(name_node, f"rule name {name!r} is reserved for awsgate's built-in rules")
            return None
        return name

    def _rule(self, node: Node) -> Rule | None:
        entries = self._mapping(node, _RULE_KEYS, "a rule")
        if entries is None:
            return None
        errors_before = len(self.problems)
        name = self._name(entries, node, "rule")
        effect = self._effect(entries, node)
        principals = self._selectors(entries, node, "principals", required=True)
        patterns = self._actions(entries, node)
        resources = self._resources(entries.get("resources"))
        regions = self._regions(entries.get("regions"))
        params = self._params(entries.get("params"), patterns)
        approvers = self._selectors(entries, node, "approvers", required=False)
        if effect == "review" and not approvers:
            self.error(
                entries["effect"][1], "a review rule needs approvers (e.g. approvers: [group:sre])"
            )
        if effect in ("allow", "deny") and "approvers" in entries:
            self.error(
                entries["approvers"][0], f"approvers only apply to review rules, not {effect}"
            )
        description = self._description(entries)
        if len(self.problems) > errors_before or name is None or effect is None:
            return None
        return Rule(
            name=name,
            effect=effect,
            principals=principals,
            actions=patterns,
            location=self.location(node),
            resources=resources,
            regions=regions,
            params=params,
            approvers=approvers,
            description=description,
        )

    def _mask(self, node: Node) -> Mask | None:
        entries = self._mapping(node, _MASK_KEYS, "a mask")
        if entries is None:
            return None
        errors_before = len(self.problems)
        name = self._name(entries, node, "mask")
        principals = self._selectors(entries, node, "principals", required=True)
        patterns = self._actions(entries, node)
        fields = self._fields(entries, node)
        scope = "agent"
        if "scope" in entries:
            scope = self.value(entries["scope"][1])
            if scope not in MASK_SCOPES:
                self.error(entries["scope"][1], f"scope must be one of {', '.join(MASK_SCOPES)}")
        self._description(entries)
        if len(self.problems) > errors_before or name is None:
            return None
        return Mask(name, principals, patterns, fields, scope, self.location(node))

    def _description(self, entries: dict[str, tuple[Node, Node]]) -> str:
        if "description" not in entries:
            return ""
        node = entries["description"][1]
        value = self.value(node)
        if not isinstance(value, str):
            self.error(node, "description must be a string")
            return ""
        return value

    def _effect(self, entries: dict[str, tuple[Node, Node]], node: Node) -> Any:
        if "effect" not in entries:
            self.error(node, f"rule has no effect (one of {', '.join(EFFECTS)})")
            return None
        value_node = entries["effect"][1]
        effect = self.value(value_node)
        if effect not in EFFECTS:
            self.error(value_node, f"unknown effect {effect!r} (one of {', '.join(EFFECTS)})")
            return None
        return effect

    def _selectors(
        self, entries: dict[str, tuple[Node, Node]], node: Node, key: str, *, required: bool
    ) -> tuple[Selector, ...]:
        if key not in entries:
            if required:
                self.error(node, f"missing {key} (use '*' for everyone)")
            return ()
        selectors = []
        for text, item in self._strings(entries[key][1], key):
            try:
                selectors.append(parse_selector(text))
            except ValueError as exc:
                self.error(item, str(exc))
        return tuple(selectors)

    def _actions(
        self, entries: dict[str, tuple[Node, Node]], node: Node
    ) -> tuple[ActionPattern, ...]:
        if "actions" not in entries:
            self.error(node, "missing actions (e.g. actions: ['s3:Get*'])")
            return ()
        patterns = []
        for text, item in self._strings(entries["actions"][1], "actions"):
            problem = actions.check_pattern(text)
            if problem:
                self.error(item, problem)
            else:
                patterns.append(actions.parse_pattern(text))
        return tuple(patterns)

    def _resources(self, entry: tuple[Node, Node] | None) -> tuple[Glob, ...] | None:
        if entry is None:
            return None
        globs = []
        for text, item in self._strings(entry[1], "resources"):
            if text != "*" and not text.startswith("arn:"):
                self.error(item, f"resource {text!r} must be an ARN pattern (arn:...) or '*'")
            elif text.count("[") != text.count("]"):
                self.error(item, f"resource {text!r} has an unbalanced '[' in its glob")
            else:
                globs.append(Glob.of(text))
        return tuple(globs)

    def _regions(self, entry: tuple[Node, Node] | None) -> tuple[Glob, ...] | None:
        if entry is None:
            return None
        globs = []
        for text, item in self._strings(entry[1], "regions"):
            problem = _region_problem(text)
            if problem:
                self.error(item, problem)
            else:
                globs.append(Glob.of(text))
        return tuple(globs)

    def _params(
        self, entry: tuple[Node, Node] | None, patterns: tuple[ActionPattern, ...]
    ) -> tuple[ParamCondition, ...]:
        if entry is None:
            return ()
        node = entry[1]
        if not isinstance(node, MappingNode):
            self.error(node, "params must be a mapping of parameter name to condition")
            return ()
        conditions = []
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                self.error(key_node, "parameter names must be strings")
                continue
            try:
                path = parse_param_path(key)
            except ValueError as exc:
                self.error(key_node, str(exc))
                continue
            if patterns and not _any_operation_has_parameter(patterns, path[0]):
                self.error(
                    key_node,
                    f"no operation matched by this rule's actions has parameter {path[0]!r}",
                )
                continue
            condition = self._condition(key, path, value_node)
            if condition is not None:
                conditions.append(condition)
        return tuple(conditions)

    def _condition(self, key: str, path: tuple[str, ...], node: Node) -> ParamCondition | None:
        value = self.value(node)
        if isinstance(value, bool):
            return ParamCondition(key, path, equals=value)
        if isinstance(value, dict):
            bounds = []
            for op, limit in value.items():
                if op not in NUMERIC_OPERATORS:
                    self.error(
                        node,
                        f"unknown operator {op!r} for {key} "
                        f"(numeric: {', '.join(NUMERIC_OPERATORS)})",
                    )
                    return None
                number = as_number(limit) if not isinstance(limit, str) else None
                if number is None:
                    self.error(node, f"{key}: {op} needs a number, got {limit!r}")
                    return None
                bounds.append((op, number))
            if not bounds:
                self.error(node, f"{key}: empty condition")
                return None
            return ParamCondition(key, path, bounds=tuple(bounds))
        texts = list(self._strings(node, f"params.{key}"))
        if not texts:
            return None
        return ParamCondition(key, path, globs=tuple(Glob.of(text) for text, _ in texts))

    def _fields(self, entries: dict[str, tuple[Node, Node]], node: Node) -> tuple[str, ...]:
        if "fields" not in entries:
            self.error(node, "missing fields (JSONPath expressions, e.g. '$.SecretString')")
            return ()
        fields = []
        for text, item in self._strings(entries["fields"][1], "fields"):
            try:
                jsonpath_ng.parse(text)
            except Exception as exc:  # jsonpath_ng raises several unrelated types
                self.error(item, f"field {text!r} is not a JSONPath expression: {exc}")
            else:
                fields.append(text)
        return tuple(fields)


def _check_unique(items: list[Rule] | list[Mask], what: str, problems: list[Problem]) -> None:
    seen: dict[str, Location] = {}
    for item in items:
        first = seen.setdefault(item.name, item.location)
        if first is not item.location:
            where = item.location
            problems.append(
                Problem(
                    where.file,
                    where.line,
                    where.column,
                    f"duplicate {what} name {item.name!r} (first defined at {first})",
                )
            )


def _region_problem(text: str) -> str | None:
    if not _REGION_CHARS.fullmatch(text) or text.count("[") != text.count("]"):
        return f"region {text!r} must be a region name or glob such as eu-west-1 or eu-*"
    if is_glob(text):
        glob = Glob.of(text)
        if not any(glob.matches(region) for region in _known_regions()):
            return f"region pattern {text!r} matches no AWS region"
        return None
    if text in _known_regions():
        return None
    close = difflib.get_close_matches(text, sorted(_known_regions()), n=1)
    return f"unknown region {text!r}" + (f"; did you mean {close[0]!r}?" if close else "")


@cache
def _known_regions() -> frozenset[str]:
    """Every region botocore's endpoint data lists, in all partitions."""
    partitions = models.loader().load_data("endpoints")["partitions"]
    return frozenset({"aws-global"}).union(*(partition["regions"] for partition in partitions))


def _any_operation_has_parameter(patterns: tuple[ActionPattern, ...], name: str) -> bool:
    """Typo protection for params keys: some matched operation's input has the member.

    Unresolved operations have no model, so a rule naming ``unknown`` accepts any key.
    """
    for pattern in patterns:
        if pattern.names_unknown:
            return True
        for service, operation in _matched_operations(pattern):
            input_shape = models.service_model(service).operation_model(operation).input_shape
            if input_shape is not None and name in input_shape.members:
                return True
    return False


def _matched_operations(pattern: ActionPattern) -> Iterator[tuple[str, str]]:
    for service in models.service_names():
        if pattern.service.matches(service):
            for operation in models.operation_names(service):
                if pattern.operation.matches(operation):
                    yield service, operation
