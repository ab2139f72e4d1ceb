"""``policy check``: every load error, plus warnings about rules that cannot work.

The analysis is conservative and sound: it warns that a rule can never decide
only when it can prove it, from the patterns alone, that another rule without
``params`` applies to every request this one applies to (a deny shadows
allow and review rules, a review shadows allow rules, whatever their order).
It never claims a rule is dead when some request could reach it; it may miss
shadowing that only holds through the catalogue (``s3:Get*`` vs ``s3:GetObject*``
plus ``s3:GetBucket*`` ...).
"""

from __future__ import annotations

from pathlib import Path

from addons.rules.actions import CREDENTIAL_MINTING
from addons.rules.load import load_policy, policy_files
from addons.rules.model import (
    ActionPattern,
    Glob,
    Location,
    Policy,
    PolicyError,
    Problem,
    Rule,
    Selector,
    is_glob,
)


def check_policy(path: Path | str) -> list[Problem]:
    """Errors (the policy cannot be loaded) or warnings (it loads but has dead parts)."""
    return check(path)[1]


def check(path: Path | str) -> tuple[Policy | None, list[Problem]]:
    """The policy (None when it has errors) and every problem found, in file order."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        return None, sorted(exc.problems, key=_position)
    return policy, sorted(_warnings(policy, Path(path)), key=_position)


def _warnings(policy: Policy, path: Path) -> list[Problem]:
    problems = [_warning(rule.location, message) for rule, message in _shadowed(policy.rules)]
    problems += [
        _warning(rule.location, message) for rule, message in _credential_wildcards(policy.rules)
    ]
    files_with_rules = {rule.location.file for rule in policy.rules}
    files_with_rules |= {mask.location.file for mask in policy.masks}
    for file in policy_files(path):
        if file not in files_with_rules:
            problems.append(Problem(file, 1, 1, "no rules or masks in this file", "warning"))
    return problems


def _shadowed(rules: tuple[Rule, ...]) -> list[tuple[Rule, str]]:
    found = []
    rank = {"deny": 0, "review": 1, "allow": 2}
    for rule in rules:
        for other in rules:
            if rank[other.effect] < rank[rule.effect] and covers(other, rule):
                found.append(
                    (
                        rule,
                        f"rule {rule.name!r} can never decide: {other.effect} rule {other.name!r} "
                        f"({other.location}) applies to every request it applies to",
                    )
                )
                break
    return found


def _credential_wildcards(rules: tuple[Rule, ...]) -> list[tuple[Rule, str]]:
    """Family wildcards (``sts:Assume*``, ``iam:Create*``) that look like they allow
    credential minting, but do not. ``*`` and ``s3:*`` are taken as meaning "the
    ordinary calls" and left alone: warning on them would be noise."""
    found = []
    for rule in rules:
        if rule.effect == "deny":
            continue
        for pattern in rule.actions:
            if pattern.explicit or is_glob(pattern.service.text):
                continue
            if pattern.operation.text == "*":
                continue
            minting = sorted(
                action for action in CREDENTIAL_MINTING if pattern.matches(*action.split(":"))
            )
            if minting:
                found.append(
                    (
                        rule,
                        f"{pattern.text!r} does not {rule.effect} credential-minting "
                        f"{', '.join(minting)}: list them by name to {rule.effect} them",
                    )
                )
    return found


def covers(wider: Rule, rule: Rule) -> bool:
    """Whether ``wider`` applies to every request ``rule`` applies to (sound, not complete)."""
    if wider.params:
        return False
    broad_actions = wider.effect == "deny"
    return (
        all(any(_selector_covers(w, s) for w in wider.principals) for s in rule.principals)
        and all(
            any(_action_covers(w, a, broad_actions) for w in wider.actions) for a in rule.actions
        )
        and _globs_cover(wider.regions, rule.regions)
        and _globs_cover(wider.resources, rule.resources)
    )


def _selector_covers(wider: Selector, selector: Selector) -> bool:
    if wider.kind == "*":
        return True
    if wider.kind != selector.kind:
        return False
    if wider.glob is None or selector.glob is None:
        return wider.value == selector.value
    return glob_covers(wider.glob, selector.glob)


def _action_covers(wider: ActionPattern, pattern: ActionPattern, broad: bool) -> bool:
    if not (
        glob_covers(wider.service, pattern.service, ignore_case=True)
        and glob_covers(wider.operation, pattern.operation, ignore_case=True)
    ):
        return False
    if broad or wider.explicit:
        return True
    # A non-deny wildcard skips what only exact names reach: make sure ``pattern``
    # reaches none of it.
    if pattern.names_unknown:
        return wider.names_unknown
    return not any(pattern.matches(*action.split(":")) for action in CREDENTIAL_MINTING)


def _globs_cover(wider: tuple[Glob, ...] | None, narrower: tuple[Glob, ...] | None) -> bool:
    if wider is None:
        return True
    if narrower is None:
        return False
    return all(any(glob_covers(w, n) for w in wider) for n in narrower)


def glob_covers(wider: Glob, narrower: Glob, *, ignore_case: bool = False) -> bool:
    """Whether every string ``narrower`` matches is matched by ``wider`` (sound, not complete)."""
    big, small = wider.text, narrower.text
    if ignore_case:
        big, small = big.lower(), small.lower()
    if big in (small, "*"):
        return True
    if not is_glob(small):
        return wider.matches(narrower.text)
    prefix = big[:-1]
    return big.endswith("*") and not is_glob(prefix) and small.startswith(prefix)


def _warning(location: Location, message: str) -> Problem:
    return Problem(location.file, location.line, location.column, message, "warning")


def _position(problem: Problem) -> tuple[str, int, int]:
    return str(problem.file), problem.line, problem.column
