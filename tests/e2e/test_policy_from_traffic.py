"""Policy from real traffic: ``awsgate policy whatif`` and ``suggest`` on recorded gateway runs.

One agent works through a gateway with a permissive policy (boto3, S3, SQS,
STS, moto with signature checking on). From what the store recorded:

* ``whatif`` with a policy that drops a permission names exactly the calls
  that would break, and exits non-zero;
* ``suggest`` prints a policy that allows every recorded call and nothing
  outside it, checked with ``addons.rules.evaluate`` and on a second gateway
  running that policy;
* its IAM document is accepted by moto's ``iam create-policy`` and, as the only
  policy of the second gateway's upstream IAM user, lets the same calls
  succeed while moto refuses a call outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from addons import cli
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.context import Operation
from addons.devstack import BIN
from addons.rules import evaluate, load_policy
from addons.rules.whatif import NotReplayable, recorded_call
from addons.store import db
from addons.store.models import calls
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

AGENT = "traffic-agent"
PERMISSIVE = """\
rules:
  - name: agents-anything
    effect: allow
    principals: ["group:agents"]
    actions: ["*"]
"""
# The permissive policy without s3:PutObject.
NO_WRITES = """\
rules:
  - name: agents-read
    effect: allow
    principals: ["group:agents"]
    actions: ["sts:GetCallerIdentity", "s3:List*", "s3:GetObject", "sqs:SendMessage"]
"""
# On the second gateway: anything for a probe principal, so that only IAM stands in its way.
PROBE = """\
rules:
  - name: probes-anything
    effect: allow
    principals: ["group:probes"]
    actions: ["*"]
"""


@dataclasses.dataclass(frozen=True)
class Resources:
    bucket: str
    queue_url: str  # as AWS spells it: the agent's SDK never sees moto's address


@pytest.fixture(scope="module")
def resources(moto: harness.Moto) -> Resources:
    name = f"traffic-{uuid.uuid4().hex[:10]}"
    moto.client("s3").create_bucket(Bucket=name)
    moto.client("sqs").create_queue(QueueName=name)
    return Resources(name, f"https://sqs.{harness.REGION}.amazonaws.com/{harness.ACCOUNT}/{name}")


def start_gateway(
    workdir: Path, moto: harness.Moto, idp: DevIdpServer, policies: Path
) -> harness.Gateway:
    gateway = harness.Gateway.configure(workdir, moto, gateway_settings(idp.url, policies))
    gateway.start(moto)
    return gateway


def agent_env(
    gateway: harness.Gateway, dev_idp: DevIdp, subject: str, group: str
) -> dict[str, str]:
    token_file = gateway.workdir / f"{subject}.token"
    token_file.write_text(dev_idp.token(subject, groups=[group], aud=AUDIENCE, ttl=3600))
    return harness.agent_env(gateway, token_file=token_file)


def do_the_job(env: dict[str, str], resources: Resources, keys: list[str]) -> None:
    """The agent's work: who am I, write and read reports, list, notify."""
    s3 = harness.agent_client(env, "s3")
    harness.agent_client(env, "sts").get_caller_identity()
    for key in keys:
        s3.put_object(Bucket=resources.bucket, Key=key, Body=f"report {key}".encode())
    listed = s3.list_objects_v2(Bucket=resources.bucket, Prefix="reports/")
    assert {item["Key"] for item in listed["Contents"]} >= set(keys)
    assert s3.get_object(Bucket=resources.bucket, Key=keys[0])["Body"].read()
    assert resources.bucket in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    harness.agent_client(env, "sqs").send_message(
        QueueUrl=resources.queue_url, MessageBody="reports ready"
    )


@pytest.fixture(scope="module")
def recorder(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    dev_idp: DevIdp,
    resources: Resources,
) -> Iterator[harness.Gateway]:
    """A permissive gateway through which the agent did its job once."""
    workdir = tmp_path_factory.mktemp("traffic-recorder")
    policy = workdir / "permissive.yaml"
    policy.write_text(PERMISSIVE)
    gateway = start_gateway(workdir, moto, idp, policy)
    try:
        keys = ["reports/2025/06-01.json", "reports/2025/06-02.json"]
        do_the_job(agent_env(gateway, dev_idp, AGENT, "agents"), resources, keys)
        yield gateway
    finally:
        gateway.stop()


def awsgate(gateway: harness.Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``awsgate policy`` command on the gateway's config and store."""
    return subprocess.run(
        [str(BIN / "awsgate"), "policy", *args, "--config", str(gateway.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=harness.base_env(),
    )


def awsgate_in_process(gateway: harness.Gateway, *args: str) -> tuple[int, str]:
    """The same command without a process start (the CLI imports take seconds): code, stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["policy", *args, "--config", str(gateway.config_path)])
    return code, out.getvalue() + err.getvalue()


def recorded_rows(gateway: harness.Gateway) -> list[Any]:
    engine = db.open_engine(f"sqlite:///{gateway.workdir / 'awsgate.sqlite'}")
    try:
        with engine.connect() as connection:
            statement = select(calls).where(calls.c.subject == AGENT).order_by(calls.c.id)
            return [row._mapping for row in connection.execute(statement)]
    finally:
        engine.dispose()


def test_whatif_names_exactly_the_calls_a_narrower_policy_would_break(
    recorder: harness.Gateway, resources: Resources
) -> None:
    candidate = recorder.workdir / "no-writes.yaml"
    candidate.write_text(NO_WRITES)
    done = awsgate(recorder, "whatif", "--policies", str(candidate), "--json")
    assert done.returncode == 1, done.stderr
    changes = [json.loads(line) for line in done.stdout.splitlines()]
    assert [
        (c["principal"], c["action"], c["before"], c["after"], c["calls"]) for c in changes
    ] == [(f"sub:{AGENT}", "s3:PutObject", "allow", "deny", 2)]
    assert [example["resources"] for example in changes[0]["examples"]] == [
        [f"arn:aws:s3:::{resources.bucket}/reports/2025/06-01.json"],
        [f"arn:aws:s3:::{resources.bucket}/reports/2025/06-02.json"],
    ]
    assert "7 call(s) since" in done.stderr and "2 newly denied" in done.stderr
    # one web identity exchange per client (s3, sts, sqs): the gateway answers those itself
    assert "3 skipped (3 answered by the gateway itself)" in done.stderr

    permissive = str(recorder.workdir / "permissive.yaml")
    code, output = awsgate_in_process(recorder, "whatif", "--policies", permissive)
    assert code == 0, output
    assert "7 unchanged, 0 changed, 0 newly denied" in output


@pytest.fixture(scope="module")
def suggested(recorder: harness.Gateway) -> tuple[Path, Path]:
    """``awsgate policy suggest`` for the agent: the policy file and the IAM document."""
    iam = recorder.workdir / "iam.json"
    done = awsgate(recorder, "suggest", "--principal", f"sub:{AGENT}", "--iam", str(iam))
    assert done.returncode == 0, done.stderr
    policy = recorder.workdir / "suggested" / "agent.yaml"
    policy.parent.mkdir()
    policy.write_text(done.stdout)
    return policy, iam


def test_the_suggested_policy_checks_clean_and_allows_exactly_what_was_done(
    recorder: harness.Gateway, suggested: tuple[Path, Path], resources: Resources
) -> None:
    policy_path, _ = suggested
    code, output = awsgate_in_process(recorder, "check", str(policy_path))
    assert code == 0 and "error" not in output and "0 warning(s)" in output, output
    policy = load_policy(policy_path)
    replayed = []
    for row in recorded_rows(recorder):
        try:
            call = recorded_call(row)
        except NotReplayable:
            continue
        replayed.append(call.operation.action)
        assert evaluate(policy, call.principal, call.operation).effect == "allow", row["action"]
    assert sorted(replayed) == sorted(
        [
            "sts:GetCallerIdentity",
            "s3:PutObject",
            "s3:PutObject",
            "s3:ListObjectsV2",
            "s3:GetObject",
            "s3:ListBuckets",
            "sqs:SendMessage",
        ]
    )
    principal = call.principal
    bucket = f"arn:aws:s3:::{resources.bucket}"
    outside = [
        Operation("s3", "DeleteObject", "us-east-1", "s3", resources=[f"{bucket}/reports/x"]),
        Operation("s3", "GetObject", "us-east-1", "s3", resources=[f"{bucket}/secrets/key"]),
        Operation("s3", "PutObject", "us-east-1", "s3", resources=["arn:aws:s3:::other/reports/x"]),
        Operation("sqs", "DeleteQueue", "us-east-1", "sqs", resources=["arn:aws:sqs:*"]),
    ]
    for operation in outside:
        assert evaluate(policy, principal, operation).effect == "deny", operation.action


@pytest.fixture(scope="module")
def least_privilege_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    suggested: tuple[Path, Path],
) -> Iterator[harness.Gateway]:
    """A gateway running the suggested policy, whose upstream IAM user has only the IAM document."""
    policy_path, iam_path = suggested
    iam = moto.client("iam")
    user = f"traffic-gateway-{uuid.uuid4().hex[:8]}"
    created = iam.create_policy(PolicyName=user, PolicyDocument=iam_path.read_text())
    iam.create_user(UserName=user)
    iam.attach_user_policy(UserName=user, PolicyArn=created["Policy"]["Arn"])
    key = iam.create_access_key(UserName=user)["AccessKey"]
    upstream = dataclasses.replace(
        moto, access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"]
    )
    (policy_path.parent / "probe.yaml").write_text(PROBE)
    workdir = tmp_path_factory.mktemp("least-privilege-gateway")
    gateway = start_gateway(workdir, upstream, idp, policy_path.parent)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_the_suggested_policy_and_iam_document_let_the_job_run_again(
    least_privilege_gateway: harness.Gateway, dev_idp: DevIdp, resources: Resources
) -> None:
    env = agent_env(least_privilege_gateway, dev_idp, AGENT, "agents")
    do_the_job(env, resources, ["reports/2025/07-01.json"])  # a new report, same folder

    with pytest.raises(ClientError) as refused:
        harness.agent_client(env, "s3").delete_object(
            Bucket=resources.bucket, Key="reports/2025/06-01.json"
        )
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert error["Message"].startswith("awsgate: denied by rule 'default-deny'")


def test_the_iam_document_refuses_upstream_what_was_never_done(
    least_privilege_gateway: harness.Gateway, dev_idp: DevIdp, resources: Resources
) -> None:
    probe = agent_env(least_privilege_gateway, dev_idp, "traffic-probe", "probes")
    s3 = harness.agent_client(probe, "s3")
    assert s3.get_object(Bucket=resources.bucket, Key="reports/2025/06-01.json")["Body"].read()
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=resources.bucket, Key="reports/2025/06-01.json")
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert not error["Message"].startswith("awsgate:")  # moto said no, not the gateway
    with pytest.raises(ClientError) as refused:
        harness.agent_client(probe, "sqs").delete_queue(QueueUrl=resources.queue_url)
    # moto answers SQS's JSON protocol with a bare 403 rather than AccessDenied's shape
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert not refused.value.response["Error"].get("Message", "").startswith("awsgate:")
