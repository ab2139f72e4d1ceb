"""Deciding one request: which rules match, and which of them wins.

Every matching rule counts, whatever its position: an explicit deny wins over
review, review over allow, and nothing matching means deny. Within one
effect, the first matching rule (files in name order, rules in file order)
is the one the decision names.

Matching is IAM-like and leans towards refusing:

* Allow rules must cover the whole request: every resource of the operation
  must match one of the rule's ``resources``, and a parameter condition on a
  list must hold for every element. Deny and review rules restrict, so they
  apply as soon as any resource or any element matches.
* An operation the gateway derives no resource ARN for acts on ``*`` (as in
  IAM): only a rule without ``resources`` or with ``resources: ["*"]``
  matches it.
* A ``params`` condition on a parameter the request does not carry does not
  match (so an allow bounded by ``MaxCount`` never allows a request without
  one; bound with allow rules rather than with denies on optional parameters).
* When the request's body carries parameters the gateway could not read
  (streamed, too large, malformed), its resources and parameters may be
  incomplete: every ``resources`` or ``params`` condition then holds for a
  deny or review rule and fails for an allow rule.
* Credential-minting actions and unresolved (``unknown``) operations can only
  be allowed or reviewed by a rule that names them exactly; ``*`` or
  ``sts:*`` never does. Deny rules match them through wildcards as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from addons.context import Decision, Operation, Principal
from addons.rules.actions import is_credential_minting
from addons.rules.model import ActionPattern, Mask, ParamCondition, Policy, Rule, Selector

DEFAULT_DENY = "default-deny"
CREDENTIAL_MINTING_RULE = "builtin-credential-minting"

_MAX_RESOURCES_SHOWN = 3
_MAX_INDEXED_ACTIONS = 4096


def evaluate(policy: Policy, principal: Principal, operation: Operation) -> Decision:
    """The decision for one request, naming the rule that made it."""
    matched = matching_rules(policy, principal, operation)
    for effect in ("deny", "review", "allow"):
        rule = next((rule for rule in matched if rule.effect == effect), None)
        if rule is not None:
            return _decision(rule, operation)
    subject = _subject(operation)
    if operation.known and is_credential_minting(operation.service, operation.name):
        return Decision(
            "deny",
            CREDENTIAL_MINTING_RULE,
            f"awsgate: denied by rule {CREDENTIAL_MINTING_RULE!r} ({subject} mints credentials; "
            "only a rule naming it exactly can allow it)",
        )
    hint = "" if operation.known else "; unresolved operations need a rule naming 'unknown'"
    return Decision(
        "deny",
        DEFAULT_DENY,
        f"awsgate: denied by rule {DEFAULT_DENY!r} (no rule allows {subject}{hint})",
    )


def matching_rules(policy: Policy, principal: Principal, operation: Operation) -> list[Rule]:
    """Every rule that applies to the request, in policy order."""
    return [
        rule
        for rule in _rules_for_action(policy, operation)
        if _rest_matches(rule, principal, operation)
    ]


def masks_for(policy: Policy, principal: Principal, operation: Operation) -> list[Mask]:
    """The masks that apply to the request's response.

    Masks only ever hide data, so their action patterns match broadly, like a
    deny: ``*`` covers unresolved and credential-minting operations too.
    """
    return [
        mask
        for mask in policy.masks
        if _principal_matches(mask.principals, principal)
        and any(_action_matches(pattern, operation, broad=True) for pattern in mask.actions)
    ]


def _rules_for_action(policy: Policy, operation: Operation) -> tuple[Rule, ...]:
    """The rules whose actions match, from the policy's index (bounded: services
    an agent names in its signature need not exist)."""
    key = (operation.service, operation.name)
    rules = policy.action_index.get(key)
    if rules is None:
        rules = tuple(rule for rule in policy.rules if _actions_match(rule, operation))
        if len(policy.action_index) < _MAX_INDEXED_ACTIONS:
            policy.action_index[key] = rules
    return rules


def _actions_match(rule: Rule, operation: Operation) -> bool:
    broad = rule.effect == "deny"
    return any(_action_matches(pattern, operation, broad=broad) for pattern in rule.actions)


def _rest_matches(rule: Rule, principal: Principal, operation: Operation) -> bool:
    restricting = rule.effect != "allow"
    return (
        _principal_matches(rule.principals, principal)
        and (rule.regions is None or any(glob.matches(operation.region) for glob in rule.regions))
        and _resources_match(rule, operation, restricting)
        and all(
            restricting if operation.unread else _param_matches(c, operation.params, restricting)
            for c in rule.params
        )
    )


def _principal_matches(selectors: Iterable[Selector], principal: Principal) -> bool:
    return any(selector.matches(principal) for selector in selectors)


def _action_matches(pattern: ActionPattern, operation: Operation, *, broad: bool) -> bool:
    if not pattern.matches(operation.service, operation.name):
        return False
    if broad:
        return True
    if not operation.known:
        return pattern.names_unknown
    if is_credential_minting(operation.service, operation.name):
        return pattern.explicit
    return True


def _resources_match(rule: Rule, operation: Operation, restricting: bool) -> bool:
    if rule.resources is None:
        return True
    if operation.unread:
        return restricting
    resources = operation.resources or ["*"]
    covered = (any(glob.matches(arn) for glob in rule.resources) for arn in resources)
    return any(covered) if restricting else all(covered)


def _param_matches(condition: ParamCondition, params: dict[str, Any], restricting: bool) -> bool:
    values = list(_lookup(params, condition.path))
    if not values:
        return False
    accepted = (condition.accepts(value) for value in values)
    return any(accepted) if restricting else all(accepted)


def _lookup(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Leaf values at a dot path; a list is indexed by a number or spans all its elements."""
    if isinstance(value, list):
        if path and path[0].isdigit():
            index = int(path[0])
            if index < len(value):
                yield from _lookup(value[index], path[1:])
            return
        for item in value:
            yield from _lookup(item, path)
        return
    if not path:
        yield value
    elif isinstance(value, dict) and path[0] in value:
        yield from _lookup(value[path[0]], path[1:])


def _decision(rule: Rule, operation: Operation) -> Decision:
    subject = _subject(operation)
    verb = {"allow": "allowed", "deny": "denied", "review": "review required"}[rule.effect]
    approvers = tuple(selector.text for selector in rule.approvers)
    detail = subject + ("; its body was not read" if operation.unread else "")
    if approvers:
        detail += f"; approvers: {', '.join(approvers)}"
    return Decision(
        rule.effect, rule.name, f"awsgate: {verb} by rule {rule.name!r} ({detail})", approvers
    )


def _subject(operation: Operation) -> str:
    """``s3:DeleteBucket on arn:...``: what the message says the request was."""
    resources = operation.resources
    if not resources:
        return operation.action
    shown = ", ".join(resources[:_MAX_RESOURCES_SHOWN])
    more = len(resources) - _MAX_RESOURCES_SHOWN
    return f"{operation.action} on {shown}" + (f" and {more} more" if more > 0 else "")
