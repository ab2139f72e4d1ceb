"""Policy end to end: boto3 and the AWS CLI through a real mitmdump to moto.

Denied calls fail with the deciding rule in the client's error and never reach
moto (moto's own state shows it); the policy directory is edited while the
gateway runs; broken policies are refused at start and on reload, with file
and line. This module runs its own gateway so its policy can be edited.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from botocore.httpsession import URLLib3Session

from addons.auth.devidp import DevIdp, DevIdpServer
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

# Well above the gateway's one-second poll, still bounded.
RELOAD_DEADLINE = 10.0

BASE_POLICY = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions:
      - "sts:*"
      - "iam:*"
      - "dynamodb:*"
      - "lambda:*"
      - "secretsmanager:*"
      - "ec2:Describe*"
      - "ec2:RunInstances"
      - "ec2:TerminateInstances"
      - "sqs:CreateQueue"
      - "sqs:GetQueueUrl"
      - "sqs:Delete*"
  # prod-* is allowed here too: the deny below must win whatever the order.
  - name: team-buckets
    effect: allow
    principals: ["group:agents"]
    actions: ["s3:*"]
    resources: ["arn:aws:s3:::team-*", "arn:aws:s3:::team-*/*", "arn:aws:s3:::prod-*"]
  - name: no-prod-deletes
    effect: deny
    principals: ["*"]
    actions: ["s3:DeleteBucket"]
    resources: ["arn:aws:s3:::prod-*"]
  - name: no-queue-deletes
    effect: deny
    principals: ["*"]
    actions: ["sqs:Delete*"]
  - name: no-big-launches
    effect: deny
    principals: ["*"]
    actions: ["ec2:RunInstances"]
    params:
      MaxCount: {gt: 10}
  - name: no-protected-deletes
    effect: deny
    principals: ["*"]
    actions: ["s3:DeleteObject*"]
    resources: ["arn:aws:s3:::team-*/protected/*"]
  - name: secret-deletes-need-review
    effect: review
    principals: ["*"]
    actions: ["secretsmanager:DeleteSecret"]
    approvers: ["group:sre"]
  - name: key-admins-mint-keys
    effect: allow
    principals: ["group:key-admins"]
    actions: ["iam:CreateAccessKey"]
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policy-e2e") / "policies"
    directory.mkdir()
    (directory / "10-base.yaml").write_text(BASE_POLICY)
    return directory


@pytest.fixture(scope="module")
def policy_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    policy_dir: Path,
) -> Iterator[harness.Gateway]:
    settings = gateway_settings(idp.url, policy_dir)
    settings["approvals"] = {"wait": 1}  # a held call is refused after a second
    gateway = harness.Gateway.configure(tmp_path_factory.mktemp("policy-gateway"), moto, settings)
    gateway.start(moto)
    try:
        yield gateway
    finally:
        gateway.stop()


def own_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The AWS CLI caches web-identity credentials under ~/.aws/cli/cache, keyed by
    role and token, not by endpoint: with the session gateway's agent using the same
    token, a shared home would hand this gateway credentials minted by the other."""
    return str(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def agent(
    policy_gateway: harness.Gateway,
    agent_token_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    return harness.agent_env(
        policy_gateway, token_file=agent_token_file, HOME=own_home(tmp_path_factory)
    )


@pytest.fixture(scope="module")
def key_admin(
    policy_gateway: harness.Gateway, dev_idp: DevIdp, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    home = own_home(tmp_path_factory)
    token_file = Path(home) / "token"
    token_file.write_text(dev_idp.token("key-admin-1", groups=["key-admins"], aud=AUDIENCE))
    return harness.agent_env(policy_gateway, token_file=token_file, HOME=home)


def denied(done: subprocess.CompletedProcess[str], rule: str) -> bool:
    """The CLI failed and printed the gateway's reason naming ``rule``."""
    return done.returncode != 0 and f"awsgate: denied by rule '{rule}'" in done.stderr


def refusal(call: Callable[[], object]) -> dict[str, str]:
    with pytest.raises(ClientError) as refused:
        call()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return refused.value.response["Error"]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RELOAD_DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {RELOAD_DEADLINE}s: {what}")
        time.sleep(0.2)


# -- allow and deny -----------------------------------------------------------------


def test_allowed_calls_succeed(agent: dict[str, str], moto: harness.Moto) -> None:
    bucket = unique("team-data")
    s3 = harness.agent_client(agent, "s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert moto.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    done = harness.aws_cli(agent, "s3api", "list-objects-v2", "--bucket", bucket)
    assert done.returncode == 0, done.stderr
    assert [item["Key"] for item in json.loads(done.stdout)["Contents"]] == ["k"]


def test_denied_bucket_delete_names_the_rule_and_never_reaches_moto(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    bucket = unique("prod-logs")
    moto.client("s3").create_bucket(Bucket=bucket)
    done = harness.aws_cli(agent, "s3api", "delete-bucket", "--bucket", bucket)
    assert done.returncode != 0
    assert (
        f"(AccessDenied) when calling the DeleteBucket operation: awsgate: denied by rule "
        f"'no-prod-deletes' (s3:DeleteBucket on arn:aws:s3:::{bucket})"
    ) in done.stderr
    error = refusal(lambda: harness.agent_client(agent, "s3").delete_bucket(Bucket=bucket))
    assert error["Code"] == "AccessDenied"
    assert error["Message"].startswith("awsgate: denied by rule 'no-prod-deletes'")
    moto.client("s3").head_bucket(Bucket=bucket)  # still there


def test_resource_rule_allows_only_its_buckets(agent: dict[str, str], moto: harness.Moto) -> None:
    """``team-buckets`` covers team-* only: the same call elsewhere is not allowed."""
    other = unique("other")
    done = harness.aws_cli(agent, "s3api", "create-bucket", "--bucket", other)
    assert denied(done, "default-deny"), done.stderr
    assert f"s3:CreateBucket on arn:aws:s3:::{other}" in done.stderr
    assert other not in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]
    # ListBuckets acts on no bucket ("*"): a rule with resources does not allow it.
    error = refusal(harness.agent_client(agent, "s3").list_buckets)
    assert "'default-deny'" in error["Message"]


def test_wildcard_deny_covers_every_matching_action(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    """``sqs:Delete*`` denies both deletes although ``agents-work`` allows them."""
    name = unique("queue")
    sqs = harness.agent_client(agent, "sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    for call in (
        lambda: sqs.delete_queue(QueueUrl=url),
        lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle="handle"),
    ):
        error = refusal(call)
        assert error["Code"] == "AccessDeniedException"
        assert error["Message"].startswith("awsgate: denied by rule 'no-queue-deletes'")
    assert moto.client("sqs").get_queue_url(QueueName=name)["QueueUrl"].endswith(name)


def test_aws_cli_sqs_is_decided_by_policy(agent: dict[str, str], moto: harness.Moto) -> None:
    """The AWS CLI v1 sends SQS to its legacy name ({region}.)queue.amazonaws.com."""
    name = unique("queue")
    url = moto.client("sqs").create_queue(QueueName=name)["QueueUrl"]
    no_retries = {**agent, "AWS_MAX_ATTEMPTS": "1"}
    done = harness.aws_cli(no_retries, "sqs", "delete-queue", "--queue-url", url)
    assert denied(done, "no-queue-deletes"), done.stderr


def test_a_thousand_key_delete_is_decided_on_every_key(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    """``aws s3 rm --recursive`` sends 1,000 keys at a time, a body well over 64 KiB; the
    one protected key among them denies the batch (and a batch too large to read too)."""
    bucket = unique("team-data")
    s3 = harness.agent_client(agent, "s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="protected/ledger", Body=b"v")
    for length in (100, 1000):  # a body of about 120 KiB, then one streamed (over 1 MiB)
        keys = [f"scratch/{i:04}-{'k' * length}" for i in range(999)] + ["protected/ledger"]
        error = refusal(
            lambda keys=keys: s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys]}
            )
        )
        assert error["Message"].startswith("awsgate: denied by rule 'no-protected-deletes'")
    moto.client("s3").head_object(Bucket=bucket, Key="protected/ledger")  # still there


def test_an_operation_named_two_ways_is_refused(
    policy_gateway: harness.Gateway, agent: dict[str, str], moto: harness.Moto
) -> None:
    """A JSON target the policy allows on a form body whose Action it denies: moto (like
    any server) may obey either, so the gateway names neither and refuses the call."""
    name = unique("queue")
    url = moto.client("sqs").create_queue(QueueName=name)["QueueUrl"]
    request = AWSRequest(
        "POST",
        "https://sqs.us-east-1.amazonaws.com/",
        data=f"Action=DeleteQueue&Version=2012-11-05&QueueUrl={url}".encode(),
        headers={
            "X-Amz-Target": "AmazonSQS.GetQueueUrl",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    status, body = send_signed(policy_gateway, agent, "sqs", request)
    assert status == 403
    assert body["message"].startswith("awsgate: denied by rule 'default-deny' (no rule allows")
    assert "sqs:unknown" in body["message"]
    assert moto.client("sqs").get_queue_url(QueueName=name)["QueueUrl"].endswith(name)


# -- params: bounded EC2 launches ---------------------------------------------------------


@pytest.fixture(scope="module")
def image_id(moto: harness.Moto) -> str:
    return moto.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def instance_ids(moto: harness.Moto) -> set[str]:
    reservations = moto.client("ec2").describe_instances()["Reservations"]
    return {i["InstanceId"] for r in reservations for i in r["Instances"]}


def test_run_instances_is_bounded_by_a_params_rule(
    agent: dict[str, str], moto: harness.Moto, image_id: str
) -> None:
    before = instance_ids(moto)
    args = ("ec2", "run-instances", "--image-id", image_id, "--instance-type", "t3.micro")
    done = harness.aws_cli(agent, *args, "--count", "50")
    assert denied(done, "no-big-launches"), done.stderr
    assert instance_ids(moto) == before

    done = harness.aws_cli(agent, *args, "--count", "3", "--output", "json")
    assert done.returncode == 0, done.stderr
    launched = {i["InstanceId"] for i in json.loads(done.stdout)["Instances"]}
    assert len(launched) == 3 and instance_ids(moto) == before | launched
    harness.agent_client(agent, "ec2").terminate_instances(InstanceIds=sorted(launched))


def test_run_instances_through_boto3(
    agent: dict[str, str], moto: harness.Moto, image_id: str
) -> None:
    ec2 = harness.agent_client(agent, "ec2")
    before = instance_ids(moto)
    error = refusal(lambda: ec2.run_instances(ImageId=image_id, MinCount=11, MaxCount=11))
    assert error["Code"] == "AccessDenied"
    assert error["Message"].startswith("awsgate: denied by rule 'no-big-launches'")
    assert instance_ids(moto) == before
    launched = ec2.run_instances(ImageId=image_id, MinCount=10, MaxCount=10)["Instances"]
    assert len(launched) == 10
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in launched])


# -- built-in rules and review -------------------------------------------------------


def test_credential_minting_is_denied_despite_wildcards(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    """``iam:*`` and ``sts:*`` allow the agent much, but never minting credentials."""
    user = unique("user")
    moto.client("iam").create_user(UserName=user)
    done = harness.aws_cli(agent, "iam", "create-access-key", "--user-name", user)
    assert denied(done, "builtin-credential-minting"), done.stderr
    assert moto.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"] == []
    role = f"arn:aws:iam::{harness.ACCOUNT}:role/anything"
    done = harness.aws_cli(
        agent, "sts", "assume-role", "--role-arn", role, "--role-session-name", "session"
    )
    assert denied(done, "builtin-credential-minting"), done.stderr
    # the rest of iam:* still works
    done = harness.aws_cli(agent, "iam", "get-user", "--user-name", user)
    assert done.returncode == 0, done.stderr


def test_credential_minting_allowed_when_named_exactly(
    key_admin: dict[str, str], moto: harness.Moto
) -> None:
    user = unique("user")
    moto.client("iam").create_user(UserName=user)
    harness.agent_client(key_admin, "iam").create_access_key(UserName=user)
    assert len(moto.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]) == 1


def test_review_holds_the_call_and_it_never_reaches_moto(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    name = unique("secret")
    moto.client("secretsmanager").create_secret(Name=name, SecretString="not-a-real-secret")
    done = harness.aws_cli(agent, "secretsmanager", "delete-secret", "--secret-id", name)
    assert done.returncode != 0
    assert "(AccessDeniedException)" in done.stderr and "awsgate: " in done.stderr
    assert "'secret-deletes-need-review'" in done.stderr
    assert "DeletedDate" not in moto.client("secretsmanager").describe_secret(SecretId=name)


# -- unresolved operations ------------------------------------------------------------


def send_signed(
    gateway: harness.Gateway, env: dict[str, str], service: str, request: AWSRequest
) -> tuple[int, dict[str, str]]:
    """Sign ``request`` with the agent's minted credentials and send it through the gateway."""
    with harness.environment(env):
        credentials = boto3.Session().get_credentials().get_frozen_credentials()
    SigV4Auth(credentials, service, harness.REGION).add_auth(request)
    session = URLLib3Session(verify=env["AWS_CA_BUNDLE"], proxies={"https": env["HTTPS_PROXY"]})
    try:
        response = session.send(request.prepare())
        return response.status_code, json.loads(response.content)
    finally:
        session.close()


@pytest.mark.parametrize(
    ("service", "request_factory"),
    [
        pytest.param(
            "dynamodb",
            lambda: AWSRequest(
                "POST",
                "https://dynamodb.us-east-1.amazonaws.com/",
                data=b"{}",
                headers={
                    "X-Amz-Target": "DynamoDB_20120810.FrobnicateTable",
                    "Content-Type": "application/x-amz-json-1.0",
                },
            ),
            id="json-bogus-target",
        ),
        pytest.param(
            "lambda",
            lambda: AWSRequest(
                "GET", "https://lambda.us-east-1.amazonaws.com/2015-03-31/frobnicate/x/y/z"
            ),
            id="rest-json-unknown-path",
        ),
    ],
)
def test_unresolved_operation_is_denied_by_default(
    policy_gateway: harness.Gateway,
    agent: dict[str, str],
    service: str,
    request_factory: Callable[[], AWSRequest],
) -> None:
    """``dynamodb:*`` and ``lambda:*`` are allowed, yet an operation the resolver
    cannot name is not: only a rule listing ``unknown`` could allow it."""
    status, body = send_signed(policy_gateway, agent, service, request_factory())
    assert status == 403
    assert body["__type"] == "AccessDeniedException"
    assert body["message"] == (
        f"awsgate: denied by rule 'default-deny' (no rule allows {service}:unknown; "
        "unresolved operations need a rule naming 'unknown')"
    )


# -- hot reload ---------------------------------------------------------------------

RELOADED_RULE = """\
rules:
  - name: agents-list-queues
    effect: allow
    principals: ["group:agents"]
    actions: ["sqs:ListQueues"]
"""


def test_policy_edits_take_effect_while_running(
    policy_gateway: harness.Gateway, agent: dict[str, str], policy_dir: Path
) -> None:
    """A file added, edited, broken and removed under the policy directory."""
    extra = policy_dir / "20-reload.yaml"
    sqs = harness.agent_client(agent, "sqs")

    def decided_by() -> str:
        try:
            sqs.list_queues()
        except ClientError as exc:
            return exc.response["Error"]["Message"]
        return "allowed"

    assert decided_by().startswith("awsgate: denied by rule 'default-deny'")
    try:
        extra.write_text(RELOADED_RULE)
        wait_until(lambda: decided_by() == "allowed", "the new rule allows sqs:ListQueues")

        # The same rule edited into a deny.
        extra.write_text(RELOADED_RULE.replace("effect: allow", "effect: deny"))
        denied_by_edit = "awsgate: denied by rule 'agents-list-queues' (sqs:ListQueues)"
        wait_until(lambda: decided_by() == denied_by_edit, "the edit denies")

        # A broken edit: the last good policy (the deny) stays, reported with file:line.
        log_size = len(policy_gateway.log_text())
        extra.write_text(RELOADED_RULE.replace("sqs:ListQueues", "sqs:ListQueue"))
        wait_until(
            lambda: "POLICY NOT RELOADED" in policy_gateway.log_text()[log_size:],
            "the gateway log reports the broken policy",
        )
        report = policy_gateway.log_text()[log_size:]
        assert f"{extra}:5:" in report
        assert "'sqs:ListQueue'" in report and "did you mean 'sqs:ListQueues'" in report
        assert decided_by() == denied_by_edit
    finally:
        extra.unlink()
    wait_until(
        lambda: decided_by().startswith("awsgate: denied by rule 'default-deny'"),
        "the removed file's rule is gone",
    )
    # The rest of the policy was in force throughout.
    done = harness.aws_cli(agent, "s3api", "delete-bucket", "--bucket", unique("prod-x"))
    assert denied(done, "no-prod-deletes"), done.stderr


# -- refusing to start ----------------------------------------------------------------


def test_gateway_refuses_to_start_on_an_invalid_policy(
    tmp_path: Path, moto: harness.Moto, idp: DevIdpServer
) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text(
        "rules:\n"
        "  - name: invoke\n"
        "    effect: allow\n"
        '    principals: ["*"]\n'
        '    actions: ["lambda:InvokeFunction"]\n'
    )
    gateway = harness.Gateway.configure(tmp_path / "gw", moto, gateway_settings(idp.url, policy))
    gateway.start(moto, wait=False)
    assert gateway.process is not None
    try:
        code = gateway.process.wait(timeout=60)
    finally:
        gateway.stop()
    assert code != 0
    log = gateway.log_text()
    assert f"{policy}:5:" in log
    assert "'lambda:InvokeFunction' is an IAM permission name" in log
    assert "did you mean 'lambda:Invoke'" in log


def test_streamed_upload_is_denied_before_its_body_leaves(
    agent: dict[str, str], moto: harness.Moto, tmp_path: Path
) -> None:
    """A large upload is decided on its headers; the refusal still reads as AWS's."""
    bucket = unique("other")
    moto.client("s3").create_bucket(Bucket=bucket)
    s3 = harness.agent_client(agent, "s3")
    error = refusal(lambda: s3.put_object(Bucket=bucket, Key="big", Body=b"x" * (8 << 20)))
    assert error["Message"].startswith("awsgate: denied by rule 'default-deny'")
    source = tmp_path / "big.bin"
    source.write_bytes(b"y" * (12 << 20))
    done = harness.aws_cli(agent, "s3", "cp", str(source), f"s3://{bucket}/big.bin")
    assert denied(done, "default-deny"), done.stderr
    assert moto.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount") == 0
