"""Token claims -> the groups policies are written against.

Human IdPs put groups in a claim; CI and Kubernetes tokens do not, and say who
they are in ``sub`` and a few other claims instead, so an issuer can also have
claim rules: "if claim X matches glob G, add these groups".

Claim names may be dotted paths into nested claims. A claim whose own name
contains dots wins over a nested lookup, and nested lookups try the longest
existing key first, so Kubernetes' ``kubernetes.io`` claim is reachable as
``kubernetes.io.namespace`` or ``kubernetes.io.serviceaccount.name``.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from addons.config import IssuerConfig

_SEPARATORS = re.compile(r"[\s,]+")


def groups_for(issuer: IssuerConfig, claims: dict[str, Any]) -> frozenset[str]:
    """The groups claim's values plus the groups of every matching claim rule."""
    groups: set[str] = set()
    if issuer.groups_claim:
        groups.update(_group_names(claim_value(claims, issuer.groups_claim)))
    for rule in issuer.claim_rules:
        values = _strings(claim_value(claims, rule.claim))
        if any(fnmatchcase(value, rule.match) for value in values):
            groups.update(rule.groups)
    return frozenset(groups)


def claim_value(claims: dict[str, Any], path: str) -> Any:
    """The claim named ``path``, following dots into nested objects; None if absent."""
    if path in claims:
        return claims[path]
    dot = path.rfind(".")
    while dot > 0:
        head = claims.get(path[:dot])
        if isinstance(head, dict):
            return claim_value(head, path[dot + 1 :])
        dot = path.rfind(".", 0, dot)
    return None


def _group_names(value: Any) -> list[str]:
    """A list of names, or one string of names separated by commas or spaces."""
    if isinstance(value, str):
        return [name for name in _SEPARATORS.split(value) if name]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return []


def _strings(value: Any) -> list[str]:
    """What a glob is matched against: a scalar as text, or each scalar of a list."""
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str | int | float):
        return [str(value)]
    return []
