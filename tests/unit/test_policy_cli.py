"""``awsgate policy check`` and ``awsgate policy test``: output and exit codes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from addons.cli import main

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


BROKEN = """\
rules:
  - name: typo
    effect: alow
    principals: ["*"]
    actions: ["lambda:InvokeFunction"]
"""


# -- check ---------------------------------------------------------------------


def test_check_ok_prints_a_summary_and_exits_0(capsys) -> None:
    code, out, _ = run(capsys, "policy", "check", str(DEFAULT_POLICY))
    assert code == 0
    assert out.splitlines() == [
        f"{DEFAULT_POLICY}: ok, 7 rule(s) and 0 mask(s) in 1 file(s), 0 warning(s)"
    ]


def test_check_errors_print_file_line_column_and_exit_1(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "p.yaml", BROKEN)
    code, out, _ = run(capsys, "policy", "check", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}:3:13: error: unknown effect 'alow' (one of allow, deny, review)"
    assert lines[1].startswith(f"{path}:5:15: error: action 'lambda:InvokeFunction' is an IAM")
    assert "did you mean 'lambda:Invoke'?" in lines[1]
    assert lines[2] == f"{path}: 2 error(s), 0 warning(s)"


def test_check_warnings_exit_0(tmp_path: Path, capsys) -> None:
    path = write(
        tmp_path / "p.yaml",
        """\
        rules:
          - name: assume
            effect: allow
            principals: ["*"]
            actions: ["sts:Assume*"]
        """,
    )
    code, out, _ = run(capsys, "policy", "check", str(path))
    assert code == 0
    assert out.splitlines()[0].startswith(f"{path}:2:5: warning: 'sts:Assume*' does not allow")
    assert out.splitlines()[-1].endswith("1 warning(s)")


def test_check_missing_path_is_a_command_error(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such file or directory" in err


def test_check_defaults_to_the_configs_policies(tmp_path: Path, capsys) -> None:
    write(tmp_path / "rules.yaml", BROKEN)
    config = write(tmp_path / "awsgate.yaml", "policies: rules.yaml\n")
    code, out, _ = run(capsys, "policy", "check", "--config", str(config))
    assert code == 1
    assert str(tmp_path / "rules.yaml") in out


# -- test ----------------------------------------------------------------------


def policy_test(capsys, *argv: str) -> tuple[int, str, str]:
    return run(
        capsys,
        "policy",
        "test",
        "--policies",
        str(DEFAULT_POLICY),
        "--principal",
        "group:demo-agents",
        *argv,
    )


def test_allow_exits_0(capsys) -> None:
    code, out, _ = policy_test(
        capsys, "--action", "s3:PutObject", "--resource", "arn:aws:s3:::demo-x/k"
    )
    assert code == 0
    assert out.splitlines() == [
        "decision:  allow",
        "rule:      demo-buckets",
        "message:   awsgate: allowed by rule 'demo-buckets' "
        "(s3:PutObject on arn:aws:s3:::demo-x/k)",
        "matched:   demo-buckets",
    ]


def test_deny_exits_1_and_names_the_rule(capsys) -> None:
    code, out, _ = policy_test(
        capsys, "--action", "s3:DeleteBucket", "--resource", "arn:aws:s3:::prod-logs"
    )
    assert code == 1
    assert "decision:  deny" in out
    assert (
        "message:   awsgate: denied by rule 'no-prod-bucket-deletes' "
        "(s3:DeleteBucket on arn:aws:s3:::prod-logs)"
    ) in out


def test_review_exits_3_with_approvers(capsys) -> None:
    code, out, _ = policy_test(capsys, "--action", "secretsmanager:DeleteSecret")
    assert code == 3
    assert "decision:  review" in out
    assert "approvers: group:sre" in out


def test_default_deny_and_credential_minting(capsys) -> None:
    code, out, _ = policy_test(capsys, "--action", "s3:GetObject", "--resource", "arn:aws:s3:::x/y")
    assert code == 1 and "rule:      default-deny" in out
    code, out, _ = policy_test(capsys, "--action", "sts:AssumeRole")
    assert code == 1 and "rule:      builtin-credential-minting" in out


def test_json_output(capsys) -> None:
    code, out, _ = policy_test(
        capsys, "--json", "--action", "secretsmanager:deletesecret", "--region", "eu-west-1"
    )
    assert code == 3
    assert json.loads(out) == {
        "effect": "review",
        "rule": "secret-deletes-need-review",
        "message": "awsgate: review required by rule 'secret-deletes-need-review' "
        "(secretsmanager:DeleteSecret; approvers: group:sre)",
        "approvers": ["group:sre"],
        "matched": ["demo-data-services", "secret-deletes-need-review"],
        "action": "secretsmanager:DeleteSecret",
        "resources": [],
        "region": "eu-west-1",
    }


def test_principals_and_params(tmp_path: Path, capsys) -> None:
    policy = write(
        tmp_path / "p.yaml",
        """\
        rules:
          - name: launch
            effect: allow
            principals: ["sub:agent-*"]
            actions: ["ec2:RunInstances"]
            params:
              MaxCount: {le: 4}
              InstanceType: "t3.*"
              TagSpecifications.ResourceType: instance
              DryRun: true
          - name: team
            effect: allow
            principals: ["group:b"]
            actions: ["ec2:DescribeInstances"]
        """,
    )

    def launch(*params: str) -> int:
        argv = ["policy", "test", "--policies", str(policy), "--principal", "sub:agent-1"]
        argv += ["--action", "ec2:RunInstances"]
        for param in params:
            argv += ["--param", param]
        return run(capsys, *argv)[0]

    tags = 'TagSpecifications=[{"ResourceType": "instance"}]'
    assert launch("MaxCount=4", "InstanceType=t3.micro", tags, "DryRun=true") == 0
    assert launch("MaxCount=5", "InstanceType=t3.micro", tags, "DryRun=true") == 1
    assert launch("MaxCount=4.5", "InstanceType=t3.micro", tags, "DryRun=true") == 1
    assert launch("MaxCount=4", "InstanceType=t3.micro", tags, "DryRun=false") == 1
    assert launch("MaxCount=4", "InstanceType=t3.micro", "DryRun=true") == 1

    code, _, _ = run(
        capsys,
        *["policy", "test", "--policies", str(policy), "--action", "ec2:DescribeInstances"],
        *["--principal", "group:a", "--principal", "group:b"],
    )
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--action", "lambda:InvokeFunction"], "did you mean 'lambda:Invoke'?"),
        (["--action", "s3:Get*"], "not a pattern"),
        (["--action", "s3:GetObject", "--principal", "team:x"], "must be group:NAME"),
        (
            ["--action", "s3:GetObject", "--principal", "sub:a", "--principal", "sub:b"],
            "more than once",
        ),
        (["--action", "s3:GetObject", "--param", "novalue"], "NAME=VALUE"),
        (["--action", "s3:GetObject", "--param", "X=[1,"], "not valid JSON"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv: list[str], message: str) -> None:
    code, _, err = policy_test(capsys, *argv)
    assert code == 2
    assert message in err


def test_broken_policy_exits_2_with_its_problems(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "p.yaml", BROKEN)
    code, _, err = run(
        capsys, "policy", "test", "--policies", str(path), "--action", "s3:GetObject"
    )
    assert code == 2
    assert f"{path}:3:13: error: unknown effect" in err
    assert "policy has errors" in err


def test_policies_default_to_the_config(tmp_path: Path, capsys) -> None:
    write(
        tmp_path / "p.yaml",
        "rules:\n  - {name: all, effect: allow, principals: ['*'], actions: ['s3:*']}\n",
    )
    config = write(tmp_path / "awsgate.yaml", "policies: p.yaml\n")
    code, out, _ = run(
        capsys, "policy", "test", "--config", str(config), "--action", "s3:GetObject"
    )
    assert code == 0 and "rule:      all" in out
    empty = write(tmp_path / "empty.yaml", "store: sqlite:///x.db\n")
    code, _, err = run(capsys, "policy", "test", "--config", str(empty), "--action", "s3:GetObject")
    assert code == 2 and "no 'policies' set" in err
