"""``awsgate policy suggest``: the tightest policy, and IAM document, for what a principal did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_whatif import (
    BUCKET,
    Run,
    call,
    cli_runner,
    config_for,
    store_url,  # noqa: F401 (a fixture)
    stored_rows,
    write,
)

from addons.aws.iam_actions import iam_resources, permissions_for
from addons.rules import evaluate, load_policy
from addons.rules.check import check
from addons.rules.suggest import iam_policy, suggest
from addons.rules.whatif import recorded_call
from addons.store.records import CallRecord

FUNCTION = "arn:aws:lambda:us-east-1:*:function"


def agent_traffic() -> list[CallRecord]:
    """What agent-1 did: S3 under two folders of one bucket, Lambda, STS; one denied delete."""
    return [
        *(
            call("agent-1", "s3:GetObject", (f"{BUCKET}/reports/2025/{day}/out.json",))
            for day in ("06-01", "06-02", "07-15")
        ),
        call("agent-1", "s3:PutObject", (f"{BUCKET}/reports/2025/06-01/in.json",)),
        call("agent-1", "s3:PutObject", (f"{BUCKET}/reports/2024/12-31/in.json",)),
        call("agent-1", "s3:ListObjectsV2", (BUCKET,)),
        call("agent-1", "s3:ListBuckets"),
        call("agent-1", "sts:GetCallerIdentity"),
        call("agent-1", "lambda:Invoke", (f"{FUNCTION}:build",)),
        call("agent-1", "s3:DeleteBucket", (BUCKET,), "deny", "no-bucket-deletes"),
    ]


def suggested_policy(tmp_path: Path, records: list[CallRecord], selector: str = "sub:agent-1"):
    suggestion = suggest(selector, stored_rows(records))
    path = tmp_path / "suggested.yaml"
    path.write_text(suggestion.to_yaml())
    return suggestion, path


def decide(policy_path: Path, record: CallRecord) -> str:
    rebuilt = recorded_call(stored_rows([record])[0])
    return evaluate(load_policy(policy_path), rebuilt.principal, rebuilt.operation).effect


# -- the awsgate policy -----------------------------------------------------------------------


def test_the_suggestion_loads_checks_clean_and_allows_every_allowed_call(tmp_path: Path) -> None:
    suggestion, path = suggested_policy(tmp_path, agent_traffic())
    policy, problems = check(path)
    assert policy is not None and problems == []
    for record in agent_traffic():
        expected = "allow" if record.decision == "allow" else "deny"
        assert decide(path, record) == expected, record.action
    assert suggestion.calls == 9
    assert dict(suggestion.left_out) == {"denied s3:DeleteBucket": 1}
    assert "#   denied s3:DeleteBucket: 1 call(s)" in path.read_text()


def test_resources_are_generalised_to_a_stable_prefix_not_one_rule_per_key(
    tmp_path: Path,
) -> None:
    suggestion, _ = suggested_policy(tmp_path, agent_traffic())
    rules = {rule.actions: rule for rule in suggestion.rules}
    globs = {actions: [r.glob() for r in rule.resources or ()] for actions, rule in rules.items()}
    assert globs == {
        ("s3:GetObject",): [f"{BUCKET}/reports/2025/*"],
        ("s3:PutObject",): [f"{BUCKET}/reports/*"],
        ("s3:ListObjectsV2",): [BUCKET],
        ("s3:ListBuckets",): [],
        ("lambda:Invoke",): [f"{FUNCTION}:build"],
        ("sts:GetCallerIdentity",): [],
    }
    assert rules[("s3:ListBuckets",)].resources is None  # acted on no ARN: any resource
    assert {rule.regions for rule in suggestion.rules} == {("us-east-1",)}
    assert [rule.name for rule in suggestion.rules] == [
        "agent-1-lambda",
        "agent-1-s3",
        "agent-1-s3-2",
        "agent-1-s3-3",
        "agent-1-s3-4",
        "agent-1-sts",
    ]


def test_calls_outside_what_was_done_are_denied(tmp_path: Path) -> None:
    _, path = suggested_policy(tmp_path, agent_traffic())
    outside = [
        call("agent-1", "s3:GetObject", (f"{BUCKET}/secrets/key.pem",)),
        call("agent-1", "s3:GetObject", ("arn:aws:s3:::other-bucket/reports/2025/x",)),
        call("agent-1", "s3:DeleteObject", (f"{BUCKET}/reports/2025/06-01/out.json",)),
        call("agent-1", "lambda:Invoke", (f"{FUNCTION}:deploy",)),
        call("agent-1", "s3:GetObject", (f"{BUCKET}/reports/2025/x",), region="eu-west-1"),
        call("agent-2", "s3:GetObject", (f"{BUCKET}/reports/2025/06-01/out.json",)),
    ]
    assert [decide(path, record) for record in outside] == ["deny"] * len(outside)


def test_many_names_of_one_kind_become_their_common_prefix(tmp_path: Path) -> None:
    records = [call("ci", "lambda:Invoke", (f"{FUNCTION}:ci-step-{n}",)) for n in range(8)]
    records += [call("ci", "dynamodb:GetItem", (f"{t}",)) for t in ("not-an-arn",)]
    suggestion, path = suggested_policy(tmp_path, records, "sub:ci")
    lambda_rule = next(rule for rule in suggestion.rules if rule.service == "lambda")
    assert [r.glob() for r in lambda_rule.resources or ()] == [f"{FUNCTION}:ci-step-*"]
    dynamodb_rule = next(rule for rule in suggestion.rules if rule.service == "dynamodb")
    assert dynamodb_rule.resources is None  # a resource that is no ARN: cannot be narrowed
    assert decide(path, call("ci", "lambda:Invoke", (f"{FUNCTION}:ci-step-99",))) == "allow"
    assert decide(path, call("ci", "lambda:Invoke", (f"{FUNCTION}:prod-deploy",))) == "deny"


def test_glob_characters_in_names_match_only_themselves(tmp_path: Path) -> None:
    odd = f"{BUCKET}/a*b?/[x]/file"
    _, path = suggested_policy(tmp_path, [call("agent-1", "s3:GetObject", (odd,))])
    assert "a[*]b[?]/?x?/*" in path.read_text()
    assert decide(path, call("agent-1", "s3:GetObject", (odd,))) == "allow"
    assert decide(path, call("agent-1", "s3:GetObject", (f"{BUCKET}/aXXb!/x/f",))) == "deny"


def test_groups_and_glob_principals(tmp_path: Path) -> None:
    records = [call("agent-1", "sts:GetCallerIdentity")]
    suggestion, path = suggested_policy(tmp_path, records, "group:agents")
    assert suggestion.rules[0].name == "agents-sts"
    assert 'principals: ["group:agents"]' in path.read_text()
    suggestion, _ = suggested_policy(tmp_path, records, "sub:repo:acme/*")
    assert suggestion.rules[0].name == "repo:acme-sts"


# -- IAM ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "permissions"),
    [
        ("s3:ListObjectsV2", ("s3:ListBucket",)),
        ("s3:ListBuckets", ("s3:ListAllMyBuckets",)),
        ("s3:PutObject", ("s3:PutObject",)),
        ("s3:UploadPart", ("s3:PutObject",)),
        ("s3:HeadObject", ("s3:GetObject",)),
        ("s3:CopyObject", ("s3:GetObject", "s3:PutObject")),  # from botocore's documentation
        ("s3:DeleteBucketCors", ("s3:PutBucketCORS",)),
        ("lambda:Invoke", ("lambda:InvokeFunction",)),
        ("sqs:SendMessageBatch", ("sqs:SendMessage",)),
        ("elbv2:CreateLoadBalancer", ("elasticloadbalancing:CreateLoadBalancer",)),
        ("dynamodb:GetItem", ("dynamodb:GetItem",)),
    ],
)
def test_iam_permission_names(action: str, permissions: tuple[str, ...]) -> None:
    service, _, operation = action.partition(":")
    found = permissions_for(service, operation)
    assert found.actions == permissions and found.verified


def test_unlisted_operations_are_guesses() -> None:
    found = permissions_for("apigateway", "GetRestApis")
    assert found.actions == ("apigateway:GetRestApis",) and not found.verified


def test_iam_resources_add_the_forms_iam_needs() -> None:
    assert iam_resources(f"{FUNCTION}:build") == [f"{FUNCTION}:build", f"{FUNCTION}:build:*"]
    secret = "arn:aws:secretsmanager:us-east-1:*:secret:db"
    assert iam_resources(secret) == [secret, f"{secret}-*"]
    assert iam_resources(f"{BUCKET}/reports/*") == [f"{BUCKET}/reports/*"]


def test_the_iam_document_grants_the_permissions_of_the_suggested_rules(tmp_path: Path) -> None:
    suggestion, _ = suggested_policy(tmp_path, agent_traffic())
    document = json.loads(iam_policy(suggestion).to_json())
    assert document["Version"] == "2012-10-17"
    grants = {
        action: statement["Resource"]
        for statement in document["Statement"]
        for action in statement["Action"]
    }
    assert grants == {
        "s3:GetObject": [f"{BUCKET}/reports/2025/*"],
        "s3:PutObject": [f"{BUCKET}/reports/*"],
        "s3:ListBucket": [BUCKET],
        "s3:ListAllMyBuckets": "*",
        "sts:GetCallerIdentity": "*",
        "lambda:InvokeFunction": [f"{FUNCTION}:build", f"{FUNCTION}:build:*"],
    }
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
    sids = [statement["Sid"] for statement in document["Statement"]]
    assert len(set(sids)) == len(sids) and all(sid.isalnum() for sid in sids)


def test_the_iam_document_escapes_literal_wildcards_and_warns_about_guesses(
    tmp_path: Path,
) -> None:
    records = [
        call("agent-1", "s3:GetObject", (f"{BUCKET}/a*b/c",)),
        call("agent-1", "apigateway:GetRestApis"),
    ]
    suggestion, _ = suggested_policy(tmp_path, records)
    result = iam_policy(suggestion)
    resources = [s["Resource"] for s in result.document["Statement"]]
    assert [f"{BUCKET}/a${{*}}b/*"] in resources
    assert result.warnings == [
        "apigateway:GetRestApis: IAM permission apigateway:GetRestApis is a guess "
        "(not in the IAM catalogue); check it"
    ]


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def run(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:  # noqa: F811
    write(store_url, [*agent_traffic(), call("agent-2", "s3:GetObject", (f"{BUCKET}/x",))])
    return cli_runner(config_for(tmp_path, store_url), capsys)


def test_suggest_command_prints_a_loadable_policy_and_writes_the_iam_document(
    run: Run, tmp_path: Path
) -> None:
    iam = tmp_path / "iam.json"
    code, out, err = run("suggest", "--principal", "sub:agent-1", "--iam", str(iam))
    assert code == 0, err
    path = tmp_path / "from-cli.yaml"
    path.write_text(out)
    assert check(path)[1] == []
    rules = yaml.safe_load(out)["rules"]
    assert {rule["principals"][0] for rule in rules} == {"sub:agent-1"}
    assert "s3:GetObject" in {action for rule in rules for action in rule["actions"]}
    assert "6 rule(s) from 9 allowed call(s)" in err
    assert "left out denied s3:DeleteBucket (1 call(s))" in err
    document = json.loads(iam.read_text())
    assert document["Version"] == "2012-10-17"
    assert f"IAM policy with {len(document['Statement'])} statement(s) in {iam}" in err
    assert "for the gateway's upstream credentials the calls used (the default credentials)" in err


def test_suggest_command_with_nothing_recorded_fails(run: Run) -> None:
    code, out, err = run("suggest", "--principal", "sub:nobody")
    assert code == 1 and out == ""
    assert "no allowed calls of sub:nobody recorded since" in err


def test_suggest_needs_a_principal(run: Run) -> None:
    with pytest.raises(SystemExit):
        run("suggest")


def test_minting_and_unresolved_calls_that_were_allowed_are_named_exactly(
    tmp_path: Path,
) -> None:
    records = [
        call("agent-1", "sts:AssumeRole", ("arn:aws:iam::123456789012:role/deployer",)),
        call("agent-1", "s3:unknown", (BUCKET,)),
    ]
    suggestion, path = suggested_policy(tmp_path, records)
    assert {rule.actions for rule in suggestion.rules} == {("s3:unknown",), ("sts:AssumeRole",)}
    assert [decide(path, record) for record in records] == ["allow", "allow"]
    result = iam_policy(suggestion)
    assert [s["Action"] for s in result.document["Statement"]] == [["sts:AssumeRole"]]
    assert result.warnings == ["s3:unknown has no IAM permission; grant it by hand"]


def test_regions_a_policy_would_not_accept_leave_regions_open(tmp_path: Path) -> None:
    records = [call("agent-1", "sts:GetCallerIdentity", region="mars-north-1")]
    suggestion, path = suggested_policy(tmp_path, records)
    assert suggestion.rules[0].regions is None
    assert check(path)[1] == []
