"""Redacting secret fields in AWS responses (for the agent and the record) and requests.

Which fields: the built-in catalogue (``secrets_catalogue``) plus the
policy's masks, all JSONPath over the member names of the operation's shape.
Where: ``scope: agent`` values are replaced in the body the agent receives
and in the record; ``scope: record`` values reach the agent but not the
record. A policy ``scope: record`` mask that names a field a built-in entry
hides lowers that entry to record-only for the principals it matches. The
body is rewritten in its own format (``wiredoc``) so the SDK still parses it,
and the headers that vouch for the old bytes are fixed or dropped.
"""

from __future__ import annotations

import copy
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import botocore.model
from jsonpath_ng import JSONPath
from jsonpath_ng import jsonpath as jp
from jsonpath_ng.ext import parse as parse_jsonpath

from addons.aws import models, wiredoc
from addons.aws.secrets_catalogue import REQUEST_SECRETS, RESPONSE_SECRETS, SecretField
from addons.aws.wiredoc import MARKER, Steps, WireError
from addons.rules.actions import is_credential_minting

Scope = Literal["agent", "record"]
Part = Literal["request", "response"]

BUILTIN_PREFIX = "builtin:"

# Headers that vouch for the exact bytes of a body: wrong after a rewrite.
_DIGEST_HEADERS = ("content-md5",)
_CHECKSUM_PREFIX = "x-amz-checksum-"
_DYNAMODB_CRC32 = "x-amz-crc32"


@dataclass(frozen=True)
class FieldRule:
    """A JSONPath to hide, who asked for it and where it applies."""

    path: str
    rule: str  # "builtin:<action>" or the policy mask's name
    scope: Scope
    unless: tuple[str, tuple[str, ...]] | None = None

    @property
    def builtin(self) -> bool:
        return self.rule.startswith(BUILTIN_PREFIX)


@dataclass(frozen=True)
class MaskedField:
    """What the record says about one masked value: where, by which rule; never the value."""

    part: Part
    path: str  # concrete JSONPath, e.g. $.Parameters[1].Value
    rule: str
    scope: Scope

    def __str__(self) -> str:
        return f"{self.part} {self.path} by {self.rule} ({self.scope})"


@dataclass
class ResponseMasking:
    """The outcome for one response. ``agent_body`` is None when the agent's body is unchanged."""

    agent_body: bytes | None
    header_updates: dict[str, str | None]  # None: remove the header
    record_body: bytes | None
    masked: list[MaskedField] = field(default_factory=list)


@dataclass
class RequestMasking:
    """The request as the record keeps it: body (None: not kept) and parameters."""

    record_body: bytes | None
    record_params: dict[str, Any]
    masked: list[MaskedField] = field(default_factory=list)


def builtin_rules(action: str, part: Part, scope: Scope = "agent") -> list[FieldRule]:
    """The built-in entries for ``action`` (request entries are always record-only).

    The catalogue's, then every string or blob member botocore's model marks
    ``sensitive`` that the catalogue does not name: record-only, but with
    ``scope`` for the output of a credential-minting action, like the
    catalogue's own credentials.
    """
    table = RESPONSE_SECRETS if part == "response" else REQUEST_SECRETS
    scope = scope if part == "response" else "record"
    listed = table.get(action, ())
    rules = [_rule(secret, action, scope) for secret in listed]
    service, _, operation = action.partition(":")
    if part == "request" or not is_credential_minting(service, operation):
        scope = "record"
    named = {str(compiled(secret.path)) for secret in listed}
    rules.extend(
        FieldRule(path, BUILTIN_PREFIX + action, scope)
        for path in sensitive_paths(service, operation, part)
        if str(compiled(path)) not in named
    )
    return rules


_MASKABLE = ("string", "blob")


@cache
def sensitive_paths(service: str, operation: str, part: Part) -> tuple[str, ...]:
    """JSONPaths of the string and blob members botocore marks sensitive, or that sit in a
    sensitive structure, list or map, in the operation's input or output."""
    shape = _shape(service, operation, part)
    found: list[str] = []
    if shape is not None:
        _sensitive(shape, "$", False, frozenset(), found)
    return tuple(found)


def _sensitive(
    shape: botocore.model.Shape, path: str, inside: bool, seen: frozenset[str], found: list[str]
) -> None:
    if shape.name in seen:
        return  # a recursive shape: its members were walked one level up
    inside = inside or bool(shape.metadata.get("sensitive"))
    kind, seen = shape.type_name, seen | {shape.name}
    if isinstance(shape, botocore.model.StructureShape):
        for name, member in shape.members.items():
            _sensitive(member, f"{path}.'{name}'", inside, seen, found)  # quoted: "where"
    elif isinstance(shape, botocore.model.ListShape):
        _sensitive(shape.member, f"{path}[*]", inside, seen, found)
    elif isinstance(shape, botocore.model.MapShape):
        _sensitive(shape.value, f"{path}.*", inside, seen, found)
    elif inside and kind in _MASKABLE:
        found.append(path)


def _rule(secret: SecretField, action: str, scope: Scope) -> FieldRule:
    return FieldRule(secret.path, BUILTIN_PREFIX + action, scope, secret.unless)


def _operation_model(service: str, operation: str) -> botocore.model.OperationModel | None:
    try:
        return models.service_model(service).operation_model(operation)
    except (KeyError, botocore.model.OperationNotFoundError):
        return None


def streams_output(service: str, operation: str) -> bool:
    """Whether the operation's output is a streaming payload or an event stream."""
    model = _operation_model(service, operation)
    return model is not None and bool(model.has_streaming_output or model.has_event_stream_output)


def _shape(service: str, operation: str, part: Part) -> wiredoc.Shape | None:
    model = _operation_model(service, operation)
    if model is None:
        return None
    return model.output_shape if part == "response" else model.input_shape


# -- locating values -----------------------------------------------------------


@cache
def compiled(path: str) -> JSONPath:
    """A JSONPath expression parsed once (jsonpath-ng's extended syntax, with filters)."""
    return parse_jsonpath(path)


def steps_of(path: JSONPath) -> Steps:
    """A match's ``full_path`` as member names and list indexes."""
    if isinstance(path, jp.Child):
        return steps_of(path.left) + steps_of(path.right)
    if isinstance(path, jp.Fields):
        return tuple(path.fields)
    if isinstance(path, jp.Index):
        return tuple(path.indices) if hasattr(path, "indices") else (path.index,)
    return ()


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_steps(steps: Steps) -> str:
    parts = ["$"]
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_NAME.fullmatch(step):
            parts.append(f".{step}")
        else:
            escaped = step.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"['{escaped}']")
    return "".join(parts)


@dataclass(frozen=True)
class Located:
    steps: Steps
    rule: FieldRule
    scope: Scope


def locate(view: Any, rules: Iterable[FieldRule]) -> list[Located]:
    """Every concrete value the rules name, each with the scope that wins for it.

    ``agent`` wins over ``record``, except that a built-in entry is lowered to
    record-only where a policy ``scope: record`` rule names the same value.
    """
    hits: dict[Steps, list[FieldRule]] = {}
    for rule in rules:
        for match in compiled(rule.path).find(view):
            if _exempt(rule, match.context.value if match.context else None):
                continue
            hits.setdefault(steps_of(match.full_path), []).append(rule)
    located = []
    for steps, named in hits.items():
        lowered = any(not rule.builtin and rule.scope == "record" for rule in named)
        agent = next((r for r in named if r.scope == "agent" and not (r.builtin and lowered)), None)
        if agent is not None:
            located.append(Located(steps, agent, "agent"))
        else:
            deciding = next((r for r in named if not r.builtin), named[0])
            located.append(Located(steps, deciding, "record"))
    return located


def _exempt(rule: FieldRule, parent: Any) -> bool:
    if rule.unless is None or not isinstance(parent, dict):
        return False
    sibling, harmless = rule.unless
    return parent.get(sibling) in harmless


def _effective(located: list[Located]) -> list[Located]:
    """Values under an agent-scope value are agent-scope too (the parent hides them)."""
    agent = [item.steps for item in located if item.scope == "agent"]
    return [
        Located(item.steps, item.rule, "agent")
        if item.scope == "record" and any(item.steps[: len(a)] == a for a in agent)
        else item
        for item in located
    ]


def _masked(part: Part, item: Located) -> MaskedField:
    return MaskedField(part, format_steps(item.steps), item.rule.rule, item.scope)


# -- responses -----------------------------------------------------------------


def mask_response(
    protocol: str,
    service: str,
    operation: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    rules: list[FieldRule],
) -> ResponseMasking:
    """Mask one buffered response. Raises ``WireError`` when a body the rules apply to
    does not parse: the caller must then not pass the body on."""
    unchanged = ResponseMasking(None, {}, body)
    shape = _shape(service, operation, "response")
    if not rules or shape is None or not 200 <= status < 300:
        return unchanged
    doc = wiredoc.parse_response(protocol, shape, headers, body)
    located = _effective(locate(doc.view, rules))
    masked = [
        _masked("response", item)
        for item in located
        if item.scope == "agent" and doc.mask(item.steps)
    ]
    agent_body = doc.dump() if masked else None
    record_only = [
        _masked("response", item)
        for item in located
        if item.scope == "record" and doc.mask(item.steps)
    ]
    if not masked and not record_only:
        return unchanged
    record_body = doc.dump() if record_only else agent_body
    # The record keeps the agent's headers: header-bound values are hidden from both.
    updates: dict[str, str | None] = dict(doc.header_updates)
    if agent_body is not None:
        updates.update(integrity_updates(headers, agent_body))
    return ResponseMasking(agent_body, updates, record_body, masked + record_only)


def integrity_updates(headers: Mapping[str, str], body: bytes) -> dict[str, str | None]:
    """Header changes that keep a rewritten body valid: CRC32 recomputed, digests dropped."""
    updates: dict[str, str | None] = {}
    for name in headers:
        lower = name.lower()
        if lower == _DYNAMODB_CRC32:
            updates[name] = str(zlib.crc32(body) & 0xFFFFFFFF)
        elif lower in _DIGEST_HEADERS or lower.startswith(_CHECKSUM_PREFIX):
            updates[name] = None
    return updates


# -- requests (for the record) ---------------------------------------------------


def mask_request(
    protocol: str,
    service: str,
    operation: str,
    body: bytes | None,
    params: Mapping[str, Any],
    rules: list[FieldRule],
) -> RequestMasking:
    """The record's copy of a request: the rules' values replaced in body and parameters.

    Body and parameters are searched separately (an addon may have left a
    secret out of the parameters but it is still in the body). A body the
    rules apply to that does not parse is not kept: the record loses a body
    rather than keep a secret.
    """
    record_params = copy.deepcopy(dict(params))
    if not rules:
        return RequestMasking(body, record_params)
    masked: dict[str, MaskedField] = {}
    for item in locate(record_params, rules):
        _replace(record_params, item.steps)
        masked.setdefault(format_steps(item.steps), _masked("request", item))
    if not body:
        return RequestMasking(body, record_params, list(masked.values()))
    shape = _shape(service, operation, "request")
    try:
        if shape is None:
            raise WireError(f"no input shape for {service}:{operation}")
        doc = wiredoc.parse_request(protocol, shape, body)
    except WireError:
        return RequestMasking(None, record_params, list(masked.values()))
    for item in locate(doc.view, rules):
        if doc.mask(item.steps):
            masked.setdefault(format_steps(item.steps), _masked("request", item))
    record_body = doc.dump() if doc.changed else body
    return RequestMasking(record_body, record_params, list(masked.values()))


def _replace(tree: Any, steps: Steps) -> None:
    node = tree
    for step in steps[:-1]:
        node = node[step]
    node[steps[-1]] = MARKER
