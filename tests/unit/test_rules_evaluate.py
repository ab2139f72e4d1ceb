"""Policy semantics: which rule decides a request, and why."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from addons.context import Decision, Operation, Principal
from addons.rules import (
    CREDENTIAL_MINTING_RULE,
    DEFAULT_DENY,
    Policy,
    evaluate,
    load_policy,
    masks_for,
    matching_rules,
)

CI = Principal(
    issuer="https://idp.example", subject="repo:acme/app:ref:main", groups=frozenset({"ci"})
)
NOBODY = Principal(issuer="https://other.example", subject="someone")


@pytest.fixture
def policy_from(tmp_path: Path):
    def load(text: str) -> Policy:
        path = tmp_path / "policy.yaml"
        path.write_text(textwrap.dedent(text))
        return load_policy(path)

    return load


def op(
    action: str,
    *resources: str,
    region: str = "eu-west-1",
    **params: Any,
) -> Operation:
    service, name = action.split(":")
    return Operation(
        service=service,
        name=name,
        region=region,
        signing_name=service,
        params=params,
        resources=list(resources),
    )


def rule(
    name: str, effect: str, actions: str, principals: str = '["group:ci"]', **extra: str
) -> str:
    lines = [
        f"  - name: {name}",
        f"    effect: {effect}",
        f"    principals: {principals}",
        f"    actions: {actions}",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    if effect == "review" and "approvers" not in extra:
        lines.append('    approvers: ["group:sre"]')
    return "\n".join(lines) + "\n"


def decide(policy_from, rules: str, operation: Operation, principal: Principal = CI) -> Decision:
    return evaluate(policy_from("rules:\n" + rules), principal, operation)


# -- combining rules -----------------------------------------------------------


def test_nothing_matching_is_denied_by_the_default_rule(policy_from) -> None:
    decision = decide(
        policy_from,
        rule("reads", "allow", '["s3:Get*"]'),
        op("s3:DeleteBucket", "arn:aws:s3:::prod-logs"),
    )
    assert decision == Decision(
        "deny",
        DEFAULT_DENY,
        "awsgate: denied by rule 'default-deny' "
        "(no rule allows s3:DeleteBucket on arn:aws:s3:::prod-logs)",
    )


def test_empty_policy_denies(policy_from) -> None:
    assert evaluate(Policy(), CI, op("sts:GetCallerIdentity")).rule == DEFAULT_DENY


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_beats_review_beats_allow_whatever_the_order(policy_from, deny_first: bool) -> None:
    allow = rule("allow-s3", "allow", '["s3:*"]')
    review = rule("review-deletes", "review", '["s3:Delete*"]')
    deny = rule("no-bucket-deletes", "deny", '["s3:DeleteBucket"]')
    rules = deny + review + allow if deny_first else allow + review + deny
    bucket = "arn:aws:s3:::prod-logs"
    denied = decide(policy_from, rules, op("s3:DeleteBucket", bucket))
    assert (denied.effect, denied.rule) == ("deny", "no-bucket-deletes")
    assert denied.message == (
        "awsgate: denied by rule 'no-bucket-deletes' (s3:DeleteBucket on arn:aws:s3:::prod-logs)"
    )
    reviewed = decide(policy_from, rules, op("s3:DeleteObject", bucket + "/k"))
    assert (reviewed.effect, reviewed.rule, reviewed.approvers) == (
        "review",
        "review-deletes",
        ("group:sre",),
    )
    assert "approvers: group:sre" in reviewed.message
    allowed = decide(policy_from, rules, op("s3:GetObject", bucket + "/k"))
    assert (allowed.effect, allowed.rule) == ("allow", "allow-s3")


def test_first_rule_of_the_winning_effect_is_named(policy_from) -> None:
    rules = rule("first", "allow", '["s3:GetObject"]') + rule("second", "allow", '["s3:*"]')
    policy = policy_from("rules:\n" + rules)
    assert evaluate(policy, CI, op("s3:GetObject")).rule == "first"
    assert [r.name for r in matching_rules(policy, CI, op("s3:GetObject"))] == ["first", "second"]


# -- principals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "principal", "matches"),
    [
        ('["*"]', NOBODY, True),
        ('["group:ci"]', CI, True),
        ('["group:ci"]', NOBODY, False),
        ('["sub:repo:acme/*"]', CI, True),
        ('["sub:repo:other/*"]', CI, False),
        ('["issuer:https://idp.example/"]', CI, True),  # trailing slash does not matter
        ('["issuer:https://idp.example"]', NOBODY, False),
        ('["role:deploy-*"]', Principal("https://idp.example", "x", role="deploy-prod"), True),
        ('["role:deploy-*"]', CI, False),  # no role at all
        ('["group:nope", "sub:someone"]', NOBODY, True),  # any selector may match
    ],
)
def test_principal_selectors(
    policy_from, selector: str, principal: Principal, matches: bool
) -> None:
    decision = decide(
        policy_from,
        rule("r", "allow", '["s3:GetObject"]', principals=selector),
        op("s3:GetObject"),
        principal,
    )
    assert (decision.effect == "allow") is matches


# -- actions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ('["s3:Get*"]', "s3:GetObject", True),
        ('["s3:get*"]', "s3:GetObject", True),  # case-insensitive
        ('["S3:GETOBJECT"]', "s3:GetObject", True),
        ('["s3:Get*"]', "s3:PutObject", False),
        ('["*:Describe*"]', "ec2:DescribeInstances", True),
        ('["*"]', "dynamodb:PutItem", True),
        ('["ec2:Describe?nstances"]', "ec2:DescribeInstances", True),
        ('["lambda:Invoke"]', "lambda:Invoke", True),
        ('["lambda:Invoke"]', "lambda:InvokeAsync", False),
    ],
)
def test_action_globs(policy_from, pattern: str, action: str, matches: bool) -> None:
    decision = decide(policy_from, rule("r", "allow", pattern), op(action))
    assert (decision.effect == "allow") is matches


# -- resources and regions -----------------------------------------------------


RESOURCE_RULES = rule(
    "demo", "allow", '["s3:*"]', resources='["arn:aws:s3:::demo-*", "arn:aws:s3:::demo-*/*"]'
) + rule(
    "no-prod", "deny", '["s3:Delete*"]', principals='["*"]', resources='["arn:aws:s3:::prod-*"]'
)


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (op("s3:GetObject", "arn:aws:s3:::demo-1/key"), "allow"),
        (op("s3:GetObject", "arn:aws:s3:::Demo-1/key"), "deny"),  # resources are case-sensitive
        (op("s3:GetObject", "arn:aws:s3:::other/key"), "deny"),
        # an allow must cover every resource of the request
        (op("s3:CopyObject", "arn:aws:s3:::demo-1/k", "arn:aws:s3:::other/k"), "deny"),
        (op("s3:CopyObject", "arn:aws:s3:::demo-1/k", "arn:aws:s3:::demo-2/k"), "allow"),
        # a deny applies when any resource matches
        (op("s3:DeleteObjects", "arn:aws:s3:::demo-1", "arn:aws:s3:::prod-1"), "deny"),
        # no derived resource means "*": a resource-bound rule does not match it
        (op("s3:ListBuckets"), "deny"),
    ],
)
def test_resources(policy_from, operation: Operation, expected: str) -> None:
    decision = decide(policy_from, RESOURCE_RULES, operation)
    assert decision.effect == expected


def test_deny_on_any_resource_names_the_rule(policy_from) -> None:
    decision = decide(
        policy_from,
        RESOURCE_RULES,
        op("s3:DeleteObjects", "arn:aws:s3:::demo-1", "arn:aws:s3:::prod-1"),
    )
    assert decision.rule == "no-prod"


def test_review_applies_when_any_resource_matches(policy_from) -> None:
    rules = rule("demo", "allow", '["s3:*"]') + rule(
        "prod-review", "review", '["s3:CopyObject"]', resources='["arn:aws:s3:::prod-*/*"]'
    )
    decision = decide(
        policy_from, rules, op("s3:CopyObject", "arn:aws:s3:::demo-1/k", "arn:aws:s3:::prod-1/k")
    )
    assert (decision.effect, decision.rule) == ("review", "prod-review")


def test_resource_star_matches_operations_without_resources(policy_from) -> None:
    rules = rule("list", "allow", '["s3:ListBuckets"]', resources='["*"]')
    assert decide(policy_from, rules, op("s3:ListBuckets")).effect == "allow"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # a deny scoped to resources may concern what the unread body names
        (RESOURCE_RULES + rule("all", "allow", '["s3:*"]'), "deny"),
        # an allow scoped to resources cannot be shown to cover it
        (rule("demo", "allow", '["s3:*"]', resources='["arn:aws:s3:::demo-*"]'), "deny"),
        # an allow with no resources or parameters still covers it
        (rule("all", "allow", '["s3:*"]'), "allow"),
        # parameter conditions: a review holds it, an allow does not cover it
        (
            rule("all", "allow", '["s3:*"]')
            + rule("quiet", "review", '["s3:DeleteObjects"]', params='{"Delete.Quiet": true}'),
            "review",
        ),
        (rule("quiet", "allow", '["s3:*"]', params='{"Delete.Quiet": false}'), "deny"),
    ],
)
def test_a_body_not_read_leans_towards_refusing(policy_from, rules: str, expected: str) -> None:
    operation = op("s3:DeleteObjects", "arn:aws:s3:::demo-1")
    operation.unread = True
    decision = decide(policy_from, rules, operation)
    assert decision.effect == expected
    if expected != "deny" or decision.rule != "default-deny":
        assert "its body was not read" in decision.message


def test_message_lists_at_most_three_resources(policy_from) -> None:
    resources = [f"arn:aws:s3:::b{i}" for i in range(5)]
    decision = decide(policy_from, "", op("s3:DeleteObjects", *resources))
    assert decision.message.endswith("arn:aws:s3:::b2 and 2 more)")


@pytest.mark.parametrize(
    ("region", "expected"),
    [("eu-west-1", "allow"), ("eu-central-1", "allow"), ("us-east-1", "deny"), ("", "deny")],
)
def test_regions(policy_from, region: str, expected: str) -> None:
    rules = rule("eu-only", "allow", '["ec2:Describe*"]', regions='["eu-*"]')
    assert decide(policy_from, rules, op("ec2:DescribeInstances", region=region)).effect == expected


# -- params --------------------------------------------------------------------


EC2_RULES = rule(
    "small-launches",
    "allow",
    '["ec2:RunInstances"]',
    params='{MaxCount: {ge: 1, le: 4}, InstanceType: ["t3.*", "t4g.*"]}',
) + rule(
    "no-big-disks",
    "deny",
    '["ec2:RunInstances"]',
    principals='["*"]',
    params="{BlockDeviceMappings.Ebs.VolumeSize: {gt: 100}}",
)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"MaxCount": 2, "InstanceType": "t3.micro"}, "small-launches"),
        ({"MaxCount": "4", "InstanceType": "t4g.nano"}, "small-launches"),  # query protocol text
        ({"MaxCount": 5, "InstanceType": "t3.micro"}, DEFAULT_DENY),
        ({"MaxCount": 0, "InstanceType": "t3.micro"}, DEFAULT_DENY),
        ({"MaxCount": 2, "InstanceType": "p5.48xlarge"}, DEFAULT_DENY),
        ({"MaxCount": 2}, DEFAULT_DENY),  # a missing parameter never matches
        ({"MaxCount": "lots", "InstanceType": "t3.micro"}, DEFAULT_DENY),
        ({"MaxCount": True, "InstanceType": "t3.micro"}, DEFAULT_DENY),  # booleans are no numbers
        (
            {
                "MaxCount": 1,
                "InstanceType": "t3.micro",
                "BlockDeviceMappings": [{"Ebs": {"VolumeSize": 8}}, {"VirtualName": "ephemeral0"}],
            },
            "small-launches",
        ),
        (
            {
                "MaxCount": 1,
                "InstanceType": "t3.micro",
                "BlockDeviceMappings": [{"Ebs": {"VolumeSize": 8}}, {"Ebs": {"VolumeSize": 500}}],
            },
            "no-big-disks",  # any element over the bound triggers the deny
        ),
    ],
)
def test_params_numeric_and_glob(policy_from, params: dict[str, Any], expected: str) -> None:
    decision = decide(policy_from, EC2_RULES, op("ec2:RunInstances", **params))
    assert decision.rule == expected


@pytest.mark.parametrize(
    ("key", "value", "matches"),
    [
        ("TagSpecifications.0.ResourceType", [{"ResourceType": "instance"}], True),
        ("TagSpecifications.0.ResourceType", [{"ResourceType": "volume"}], False),
        ("TagSpecifications.1.ResourceType", [{"ResourceType": "instance"}], False),  # no index 1
        # without an index the path spans the list: an allow needs every element to match
        ("TagSpecifications.ResourceType", [{"ResourceType": "instance"}] * 2, True),
        (
            "TagSpecifications.ResourceType",
            [{"ResourceType": "instance"}, {"ResourceType": "volume"}],
            False,
        ),
        ("TagSpecifications.ResourceType", [], False),
    ],
)
def test_params_nested_paths_and_lists(policy_from, key: str, value: Any, matches: bool) -> None:
    rules = rule("tagged", "allow", '["ec2:RunInstances"]', params=f"{{{key}: instance}}")
    decision = decide(policy_from, rules, op("ec2:RunInstances", TagSpecifications=value))
    assert (decision.effect == "allow") is matches


def test_params_list_of_strings_leaf(policy_from) -> None:
    rules = rule("ids", "allow", '["ec2:DescribeInstances"]', params='{InstanceIds: ["i-0*"]}')
    allowed = op("ec2:DescribeInstances", InstanceIds=["i-01", "i-02"])
    mixed = op("ec2:DescribeInstances", InstanceIds=["i-01", "i-9"])
    assert decide(policy_from, rules, allowed).effect == "allow"
    assert decide(policy_from, rules, mixed).effect == "deny"


def test_params_boolean(policy_from) -> None:
    rules = rule("reads", "allow", '["ssm:GetParameter"]') + rule(
        "no-decrypt", "deny", '["ssm:GetParameter"]', params="{WithDecryption: true}"
    )
    assert decide(policy_from, rules, op("ssm:GetParameter", Name="x")).effect == "allow"
    plain = op("ssm:GetParameter", Name="x", WithDecryption=False)
    assert decide(policy_from, rules, plain).effect == "allow"
    decrypted = op("ssm:GetParameter", Name="x", WithDecryption=True)
    assert decide(policy_from, rules, decrypted).rule == "no-decrypt"


# -- credential minting --------------------------------------------------------


@pytest.mark.parametrize(
    "action", ["sts:AssumeRole", "iam:CreateAccessKey", "sso:GetRoleCredentials"]
)
@pytest.mark.parametrize("wildcard", ['["*"]', '["sts:*", "iam:*", "sso:*"]', '["sts:Assume*"]'])
def test_wildcards_never_allow_credential_minting(policy_from, action: str, wildcard: str) -> None:
    decision = decide(policy_from, rule("broad", "allow", wildcard), op(action))
    assert (decision.effect, decision.rule) == ("deny", CREDENTIAL_MINTING_RULE)
    assert decision.message == (
        f"awsgate: denied by rule 'builtin-credential-minting' ({action} mints credentials; "
        "only a rule naming it exactly can allow it)"
    )


def test_review_wildcard_does_not_reach_credential_minting(policy_from) -> None:
    decision = decide(policy_from, rule("all", "review", '["sts:*"]'), op("sts:AssumeRole"))
    assert decision.rule == CREDENTIAL_MINTING_RULE


@pytest.mark.parametrize("effect", ["allow", "review"])
def test_explicit_name_allows_credential_minting(policy_from, effect: str) -> None:
    rules = rule("assume", effect, '["sts:assumerole"]')
    decision = decide(policy_from, rules, op("sts:AssumeRole"))
    assert (decision.effect, decision.rule) == (effect, "assume")


def test_explicit_deny_still_beats_an_explicit_credential_allow(policy_from) -> None:
    rules = rule("assume", "allow", '["sts:AssumeRole"]') + rule("no-sts", "deny", '["sts:*"]')
    assert decide(policy_from, rules, op("sts:AssumeRole")).rule == "no-sts"


def test_ordinary_calls_of_the_same_service_are_unaffected(policy_from) -> None:
    decision = decide(policy_from, rule("sts", "allow", '["sts:*"]'), op("sts:GetCallerIdentity"))
    assert (decision.effect, decision.rule) == ("allow", "sts")


# -- unknown operations --------------------------------------------------------


@pytest.mark.parametrize("pattern", ['["*"]', '["s3:*"]', '["*:*"]'])
def test_wildcards_never_allow_unknown_operations(policy_from, pattern: str) -> None:
    decision = decide(policy_from, rule("broad", "allow", pattern), op("s3:unknown"))
    assert decision.rule == DEFAULT_DENY
    assert "unresolved operations need a rule naming 'unknown'" in decision.message


@pytest.mark.parametrize(
    "pattern", ['["unknown"]', '["s3:unknown"]', '["*:unknown"]', '["S3:Unknown"]']
)
def test_naming_unknown_allows_unknown_operations(policy_from, pattern: str) -> None:
    decision = decide(policy_from, rule("odd", "allow", pattern), op("s3:unknown"))
    assert (decision.effect, decision.rule) == ("allow", "odd")


def test_unknown_is_per_service(policy_from) -> None:
    assert (
        decide(policy_from, rule("odd", "allow", '["s3:unknown"]'), op("ec2:unknown")).effect
        == "deny"
    )


def test_deny_wildcards_do_cover_unknown_operations(policy_from) -> None:
    rules = rule("odd", "allow", '["unknown"]') + rule("no-s3", "deny", '["s3:*"]')
    assert decide(policy_from, rules, op("s3:unknown")).rule == "no-s3"


# -- masks ---------------------------------------------------------------------


def test_masks_for_matches_principal_and_action_broadly(policy_from) -> None:
    policy = policy_from(
        """\
        rules: []
        masks:
          - name: secret-values
            principals: ["*"]
            actions: ["secretsmanager:GetSecretValue"]
            fields: ["$.SecretString"]
          - name: minted-keys
            principals: ["group:ci"]
            actions: ["*"]
            fields: ["$..SecretAccessKey"]
            scope: record
        """
    )
    names = [mask.name for mask in masks_for(policy, CI, op("secretsmanager:GetSecretValue"))]
    assert names == ["secret-values", "minted-keys"]
    assert [m.name for m in masks_for(policy, CI, op("sts:AssumeRole"))] == ["minted-keys"]
    assert [m.name for m in masks_for(policy, NOBODY, op("sts:AssumeRole"))] == []


def test_action_index_is_shared_safely_between_principals_and_requests(policy_from) -> None:
    """The per-policy index caches action matches only: principals, resources and
    params are still checked on every request."""
    policy = policy_from(
        "rules:\n"
        + rule("ci-reads", "allow", '["s3:GetObject"]', resources='["arn:aws:s3:::ci-*/*"]')
        + rule("ops-reads", "allow", '["s3:GetObject"]', principals='["group:ops"]')
    )
    ops = Principal("https://idp.example", "o", groups=frozenset({"ops"}))
    ci_object = op("s3:GetObject", "arn:aws:s3:::ci-1/k")
    other_object = op("s3:GetObject", "arn:aws:s3:::other/k")
    assert evaluate(policy, CI, ci_object).rule == "ci-reads"
    assert evaluate(policy, ops, ci_object).rule == "ops-reads"
    assert evaluate(policy, CI, other_object).rule == DEFAULT_DENY
    assert evaluate(policy, NOBODY, ci_object).rule == DEFAULT_DENY
    assert set(policy.action_index) == {("s3", "GetObject")}
