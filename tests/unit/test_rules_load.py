"""Loading, validating and checking policy files, and reloading them when they change."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from addons.aws import models
from addons.rules import PolicyError, PolicyWatcher, Problem, check_policy, load_policy
from addons.rules.actions import CREDENTIAL_MINTING, IAM_TO_API, canonical_action, check_pattern

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
rules:
  - name: read-all
    effect: allow
    principals: ["group:ci"]
    actions: ["s3:Get*", "s3:ListObjectsV2"]
"""


def write(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def only_problem(path: Path) -> Problem:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def rule_text(**fields: str) -> str:
    """One rule; ``fields`` replace or add keys (value None removes)."""
    base = {
        "name": "r1",
        "effect": "allow",
        "principals": '["group:ci"]',
        "actions": '["s3:GetObject"]',
    }
    base.update(fields)
    lines = ["rules:"]
    for index, (key, value) in enumerate((k, v) for k, v in base.items() if v is not None):
        prefix = "  - " if index == 0 else "    "
        lines.append(f"{prefix}{key}: {value}")
    return "\n".join(lines) + "\n"


# -- loading -------------------------------------------------------------------


def test_loads_rules_with_their_location(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    policy = load_policy(path)
    assert [rule.name for rule in policy.rules] == ["read-all"]
    rule = policy.rules[0]
    assert (rule.location.file, rule.location.line, rule.location.column) == (path, 2, 5)
    assert rule.resources is None and rule.regions is None
    assert [pattern.text for pattern in rule.actions] == ["s3:Get*", "s3:ListObjectsV2"]


def test_directory_loads_yaml_files_sorted_and_skips_subdirectories(tmp_path: Path) -> None:
    write(tmp_path, rule_text(name="second"), "b.yml")
    write(tmp_path, rule_text(name="first"), "a.yaml")
    write(tmp_path, "not: [valid", ".a.yaml.swp.yaml")
    write(tmp_path, "ignored", "notes.txt")
    (tmp_path / "examples").mkdir()
    write(tmp_path / "examples", rule_text(name="example"), "x.yaml")
    policy = load_policy(tmp_path)
    assert [rule.name for rule in policy.rules] == ["first", "second"]
    assert [path.name for path in policy.files] == ["a.yaml", "b.yml"]


def test_rule_names_are_unique_across_files(tmp_path: Path) -> None:
    write(tmp_path, rule_text(name="same"), "a.yaml")
    second = write(tmp_path, rule_text(name="same"), "b.yaml")
    problem = only_problem(tmp_path)
    assert (problem.file, problem.line) == (second, 2)
    assert "duplicate rule name 'same'" in problem.message
    assert "a.yaml:2:5" in problem.message


def test_empty_file_is_an_empty_policy_but_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "")).rules == ()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.yaml" in only_problem(empty).message
    assert "no such file" in only_problem(tmp_path / "missing.yaml").message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: x\n    actions: [s3:GetObject\n")
    problem = only_problem(path)
    assert problem.file == path and problem.line >= 3
    assert problem.message.startswith("not valid YAML")


@pytest.mark.parametrize(
    ("fields", "needle", "message"),
    [
        ({"effect": "alow"}, "effect:", "unknown effect 'alow'"),
        ({"name": None}, "- effect", "rule has no name"),
        ({"name": "'bad name'"}, "name:", "name must be"),
        ({"name": "default-deny"}, "name:", "reserved"),
        ({"name": "builtin-x"}, "name:", "reserved"),
        ({"effect": None}, "- name", "rule has no effect"),
        ({"principals": None}, "- name", "missing principals"),
        ({"actions": None}, "- name", "missing actions"),
        ({"actions": "[]"}, "actions:", "actions must not be empty"),
        ({"principal": '["group:x"]'}, "principal:", "did you mean 'principals'"),
        ({"approvers": '["group:sre"]'}, "approvers:", "approvers only apply to review rules"),
        ({"effect": "review"}, "effect:", "a review rule needs approvers"),
        ({"principals": '["team:x"]'}, "principals:", "must be group:NAME"),
        ({"principals": '["group:"]'}, "principals:", "empty group"),
        ({"principals": '["group:dev*"]'}, "principals:", "exact name"),
        ({"principals": '["issuer:not-a-url"]'}, "principals:", "http(s) URL"),
        ({"principals": '["sub:repo[x"]'}, "principals:", "unbalanced"),
        ({"principals": "[1]"}, "principals:", "non-empty string"),
        ({"actions": '["s3"]'}, "actions:", "SERVICE:Operation"),
        ({"actions": '["nosuchservice:Get"]'}, "actions:", "unknown service 'nosuchservice'"),
        ({"actions": '["s3:NoSuchCall"]'}, "actions:", "s3 has no operation 'NoSuchCall'"),
        ({"actions": '["s3:Frob*"]'}, "actions:", "matches no operation"),
        ({"actions": '["zz*:Get*"]'}, "actions:", "matches no AWS service"),
        ({"actions": '["s3:Get[Obj"]'}, "actions:", "unbalanced"),
        ({"resources": '["bucket-name"]'}, "resources:", "must be an ARN pattern"),
        ({"resources": '["arn:aws:s3:::[x"]'}, "resources:", "unbalanced"),
        ({"regions": '["eu-wst-1"]'}, "regions:", "did you mean 'eu-west-1'"),
        ({"regions": '["mars-*"]'}, "regions:", "matches no AWS region"),
        ({"regions": '["EU West"]'}, "regions:", "must be a region name"),
        ({"params": "{Bucket: {approx: 5}}"}, "params:", "unknown operator 'approx'"),
        ({"params": "{Bucket: {gt: five}}"}, "params:", "needs a number"),
        ({"params": "{Buckett: demo-*}"}, "params:", "has parameter 'Buckett'"),
        ({"params": "[Bucket]"}, "params:", "params must be a mapping"),
        ({"params": "{Bucket..Name: x}"}, "params:", "empty segment"),
        ({"description": "[1]"}, "description:", "description must be a string"),
    ],
)
def test_validation_errors_name_file_and_line(
    tmp_path: Path, fields: dict[str, str | None], needle: str, message: str
) -> None:
    path = write(tmp_path, "# a comment first\n" + rule_text(**fields))
    problem = only_problem(path)
    assert problem.file == path
    assert problem.line == line_of(path, needle), problem
    assert message in problem.message, problem.message
    assert problem.severity == "error"


def test_every_problem_in_a_file_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: one
            effect: maybe
            principals: ["*"]
            actions: ["s3:GetObject"]
          - name: two
            effect: allow
            principals: ["*"]
            actions: ["lambda:InvokeFunction"]
        """,
    )
    lines = sorted(problem.line for problem in problems_of(path))
    assert lines == [line_of(path, "maybe"), line_of(path, "InvokeFunction")]


def test_unknown_top_level_key_and_duplicate_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "rule:\n  - name: x\n")
    assert "did you mean 'rules'" in only_problem(path).message
    path = write(tmp_path, rule_text(effect="allow") + "    effect: deny\n")
    problem = only_problem(path)
    assert "duplicate key 'effect'" in problem.message
    assert problem.line == 6


@pytest.mark.parametrize(
    ("action", "suggestion"),
    [
        ("lambda:InvokeFunction", "'lambda:Invoke'"),
        ("s3:ListBucket", "'s3:ListObjects' or 's3:ListObjectsV2'"),
        ("s3:ListAllMyBuckets", "'s3:ListBuckets'"),
        ("s3:GetObjectVersion", "'s3:GetObject'"),
        ("s3:ListObjectV2", "'s3:ListObjectsV2'"),
        ("dynamodb:PutItems", "'dynamodb:PutItem'"),
        ("elbv2:CreateLoadBalancers", "'elbv2:CreateLoadBalancer'"),
        ("states:StartExecution", "'stepfunctions:StartExecution'"),
        ("lamda:Invoke", "'lambda:Invoke'"),
    ],
)
def test_misspelt_and_iam_style_actions_get_a_suggestion(action: str, suggestion: str) -> None:
    problem = check_pattern(action)
    assert problem is not None and f"did you mean {suggestion}" in problem


def test_iam_permission_without_an_api_call_says_so() -> None:
    problem = check_pattern("iam:PassRole")
    assert problem is not None and "IAM permission name" in problem


@pytest.mark.parametrize(
    "action",
    [
        "s3:listobjectsv2",
        "S3:ListObjectsV2",
        "*",
        "unknown",
        "s3:unknown",
        "*:unknown",
        "*:Describe*",
    ],
)
def test_case_insensitive_and_special_actions_are_accepted(action: str) -> None:
    assert check_pattern(action) is None


def test_canonical_action_spells_like_botocore() -> None:
    assert canonical_action("s3:listobjectsv2") == ("s3", "ListObjectsV2")
    assert canonical_action("LAMBDA:invoke") == ("lambda", "Invoke")
    assert canonical_action("s3:unknown") == ("s3", "unknown")
    with pytest.raises(ValueError, match="did you mean 'lambda:Invoke'"):
        canonical_action("lambda:InvokeFunction")
    with pytest.raises(ValueError, match="not a pattern"):
        canonical_action("s3:Get*")


def test_built_in_tables_name_real_botocore_operations() -> None:
    """The lists go stale when botocore renames something: fail loudly then."""
    for action in CREDENTIAL_MINTING:
        service, operation = action.split(":")
        assert operation in models.operation_names(service), action
    for action, targets in IAM_TO_API.items():
        service, operation = action.split(":")
        assert operation not in models.operation_names(service), action
        assert set(targets) <= models.operation_names(service), action


def test_params_and_conditions_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        rule_text(
            actions='["ec2:RunInstances"]',
            params="{MaxCount: {gt: 5, le: 10}, InstanceType: [p4d.*, p5.*], DryRun: false, "
            "TagSpecifications.0.ResourceType: instance}",
        ),
    )
    params = {condition.key: condition for condition in load_policy(path).rules[0].params}
    assert params["MaxCount"].bounds == (("gt", 5.0), ("le", 10.0))
    assert [glob.text for glob in params["InstanceType"].globs] == ["p4d.*", "p5.*"]
    assert params["DryRun"].equals is False
    assert params["TagSpecifications.0.ResourceType"].path == (
        "TagSpecifications",
        "0",
        "ResourceType",
    )


# -- masks ---------------------------------------------------------------------


MASK = """\
masks:
  - name: hide-secrets
    principals: ["*"]
    actions: ["secretsmanager:GetSecretValue"]
    fields: ["$.SecretString", "$.SecretBinary"]
    scope: record
"""


def test_masks_are_parsed_next_to_rules(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD + MASK))
    (mask,) = policy.masks
    assert (mask.name, mask.scope, mask.fields) == (
        "hide-secrets",
        "record",
        ("$.SecretString", "$.SecretBinary"),
    )
    assert mask.location.line == line_of(tmp_path / "policy.yaml", "hide-secrets")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("scope: record", "scope: everywhere", "scope must be one of agent, record"),
        ('"$.SecretBinary"', '"$..["', "is not a JSONPath expression"),
        ('["*"]', '["everyone"]', "must be group:NAME"),
        ('["secretsmanager:GetSecretValue"]', '["secretsmanager:GetSecret"]', "no operation"),
        ("scope: record", "scope: record\n    filter: x", "unknown key 'filter'"),
    ],
)
def test_mask_validation(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write(tmp_path, MASK.replace(old, new))
    problem = only_problem(path)
    assert message in problem.message
    assert problem.line == line_of(path, new.splitlines()[-1].strip())


def test_mask_names_are_unique(tmp_path: Path) -> None:
    path = write(tmp_path, MASK + MASK.replace("masks:\n", ""))
    assert "duplicate mask name 'hide-secrets'" in only_problem(path).message


# -- check ---------------------------------------------------------------------


def test_check_reports_shadowed_rules_as_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: allow-prod-deletes
            effect: allow
            principals: ["group:ci"]
            actions: ["s3:DeleteObject"]
            resources: ["arn:aws:s3:::prod-logs/*"]
          - name: allow-dev-deletes
            effect: allow
            principals: ["group:ci"]
            actions: ["s3:DeleteObject"]
            resources: ["arn:aws:s3:::dev-*/*"]
          - name: no-prod-deletes
            effect: deny
            principals: ["*"]
            actions: ["s3:Delete*"]
            resources: ["arn:aws:s3:::prod-*"]
        """,
    )
    problems = check_policy(path)
    assert [(p.severity, p.line) for p in problems] == [("warning", 2)]
    assert "'allow-prod-deletes' can never decide" in problems[0].message
    assert "no-prod-deletes" in problems[0].message


@pytest.mark.parametrize(
    ("deny_extra", "shadowed"),
    [
        ("", True),
        ("    params: {Bucket: prod-*}\n", False),  # conditional deny: allow still reachable
        ('    regions: ["eu-west-1"]\n', False),  # the allow also covers other regions
        ('    principals: ["group:other"]\n', False),
    ],
)
def test_shadowing_is_only_claimed_when_provable(
    tmp_path: Path, deny_extra: str, shadowed: bool
) -> None:
    deny = '  - name: deny-all\n    effect: deny\n    actions: ["s3:*"]\n' + deny_extra
    if "principals" not in deny_extra:
        deny += '    principals: ["*"]\n'
    path = write(tmp_path, rule_text(actions='["s3:GetObject"]') + deny)
    warnings = [p for p in check_policy(path) if "never decide" in p.message]
    assert bool(warnings) is shadowed


def test_review_wildcard_does_not_shadow_an_explicit_credential_allow(tmp_path: Path) -> None:
    text = (
        rule_text(actions='["sts:AssumeRole"]')
        + '  - name: review-sts\n    effect: review\n    principals: ["*"]\n'
        + '    actions: ["sts:*"]\n    approvers: ["group:sre"]\n'
    )
    assert check_policy(write(tmp_path, text)) == []


def test_check_warns_that_family_wildcards_skip_credential_minting(tmp_path: Path) -> None:
    path = write(tmp_path, rule_text(actions='["sts:Assume*"]'))
    (problem,) = check_policy(path)
    assert problem.severity == "warning"
    assert "sts:AssumeRole" in problem.message and "list them by name" in problem.message


def test_check_returns_load_errors(tmp_path: Path) -> None:
    path = write(tmp_path, rule_text(effect="permit"))
    assert [p.severity for p in check_policy(path)] == ["error"]


@pytest.mark.parametrize(
    "path",
    [
        "policies/default.yaml",
        *sorted(str(p.relative_to(REPO)) for p in (REPO / "policies/examples").glob("*.yaml")),
    ],
)
def test_shipped_policies_pass_check_without_warnings(path: str) -> None:
    assert check_policy(REPO / path) == []


def test_examples_directory_exists_with_the_documented_files() -> None:
    names = {path.name for path in (REPO / "policies/examples").glob("*.yaml")}
    assert {"readonly-ci.yaml", "deployer.yaml", "ec2-agent.yaml"} <= names


# -- watcher -------------------------------------------------------------------


def bump(path: Path, text: str) -> None:
    """Rewrite ``path`` and move its mtime forward so the change is seen at any timer resolution."""
    stat = path.stat() if path.exists() else None
    path.write_text(textwrap.dedent(text))
    if stat is not None:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_watcher_reloads_on_change_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = write(tmp_path, rule_text(name="v1"))
    watcher = PolicyWatcher(path)
    assert watcher.current().rules[0].name == "v1"
    assert watcher.reload_if_changed().status == "unchanged"

    bump(path, rule_text(name="v2"))
    result = watcher.reload_if_changed()
    assert (result.status, result.ok) == ("reloaded", True)
    assert watcher.current().rules[0].name == "v2"

    bump(path, rule_text(name="v3", effect="alow"))
    result = watcher.reload_if_changed()
    assert (result.status, result.ok) == ("failed", False)
    assert "unknown effect" in result.problems[0].message
    assert watcher.current().rules[0].name == "v2"
    assert watcher.problems == result.problems
    # reported once; no reparse (or log line) per poll until the file changes again
    assert watcher.reload_if_changed().status == "unchanged"

    bump(path, rule_text(name="v4"))
    assert watcher.reload_if_changed().status == "reloaded"
    assert watcher.current().rules[0].name == "v4"
    assert watcher.problems == ()


def test_watcher_sees_files_added_and_removed_in_a_directory(tmp_path: Path) -> None:
    write(tmp_path, rule_text(name="a"), "a.yaml")
    watcher = PolicyWatcher(tmp_path)
    extra = write(tmp_path, rule_text(name="b"), "b.yaml")
    assert watcher.reload_if_changed().status == "reloaded"
    assert [rule.name for rule in watcher.current().rules] == ["a", "b"]
    extra.unlink()
    assert watcher.reload_if_changed().status == "reloaded"
    assert [rule.name for rule in watcher.current().rules] == ["a"]


def test_watcher_refuses_to_start_on_a_broken_policy(tmp_path: Path) -> None:
    path = write(tmp_path, rule_text(effect="alow"))
    with pytest.raises(PolicyError):
        PolicyWatcher(path)
