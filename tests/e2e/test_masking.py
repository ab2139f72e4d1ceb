"""Masking end to end: boto3 and the AWS CLI through a real mitmdump to moto.

Secrets are distinctive canaries (``canary-<uuid>``) put into moto directly
with the gateway's own key. Agents read them through the gateway and get the
marker, and the SDKs parse the masked answers (DynamoDB's CRC32 included); a
``scope: record`` mask lets its principals see the value. Afterwards no
canary is anywhere the gateway writes: the SQLite files (WAL included), the
exported flows, or the log of a gateway running with headers shown
(``flow_detail=2``). Options that would print or save bodies stop the
gateway from starting.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from addons import cli
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.aws.wiredoc import MARKER, MARKER_BYTES
from addons.store import db
from addons.store.models import calls
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

POLICY = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions: ["secretsmanager:*", "ssm:*", "kms:*", "dynamodb:*", "sts:GetCallerIdentity"]
  - name: agents-assume-role
    effect: allow
    principals: ["group:agents"]
    actions: ["sts:AssumeRole"]
masks:
  - name: table-passwords
    principals: ["*"]
    actions: ["dynamodb:GetItem"]
    fields: ["$.Item.password.S"]
    scope: agent
  - name: migration-reads-secrets
    principals: ["group:migrators"]
    actions: ["secretsmanager:GetSecretValue"]
    fields: ["$.SecretString"]
    scope: record
"""
TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)
CHAINED_DEADLINE = (
    30.0  # seconds for finished calls to reach the store (never reached when healthy)
)


def canary() -> str:
    return f"canary-{uuid.uuid4()}"


@pytest.fixture(scope="module")
def canaries() -> list[str]:
    """Every secret value a test hands to moto or to the gateway; checked for at the end."""
    return []


@pytest.fixture(scope="module")
def masking_gateway(
    tmp_path_factory: pytest.TempPathFactory, moto: harness.Moto, idp: DevIdpServer
) -> Iterator[harness.Gateway]:
    workdir = tmp_path_factory.mktemp("masking-gateway")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    gateway = harness.Gateway.configure(workdir, moto, gateway_settings(idp.url, policy))
    gateway.start(moto, extra_args=("--set", "flow_detail=2"))
    try:
        yield gateway
    finally:
        gateway.stop()


def token_env(
    gateway: harness.Gateway, dev_idp: DevIdp, directory: Path, subject: str, groups: list[str]
) -> dict[str, str]:
    token_file = directory / f"{subject}.token"
    token_file.write_text(dev_idp.token(subject, groups=groups, aud=AUDIENCE))
    return harness.agent_env(gateway, token_file=token_file)


@pytest.fixture(scope="module")
def agent(
    masking_gateway: harness.Gateway, dev_idp: DevIdp, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return token_env(
        masking_gateway, dev_idp, tmp_path_factory.mktemp("agent"), "masked-agent", ["agents"]
    )


@pytest.fixture(scope="module")
def migrator(
    masking_gateway: harness.Gateway, dev_idp: DevIdp, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return token_env(
        masking_gateway,
        dev_idp,
        tmp_path_factory.mktemp("migrator"),
        "migration-job",
        ["agents", "migrators"],
    )


def cli_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = harness.aws_cli(env, *args, "--output", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def secret_with(moto: harness.Moto, **value: Any) -> str:
    name = f"masked-{uuid.uuid4().hex[:10]}"
    moto.client("secretsmanager").create_secret(Name=name, **value)
    return name


# -- what the agent receives ---------------------------------------------------------


def test_secret_values_are_masked_for_the_agent(
    agent: dict[str, str], moto: harness.Moto, canaries: list[str]
) -> None:
    text, binary = canary(), canary()
    canaries.extend([text, binary])
    by_text = secret_with(moto, SecretString=text)
    by_binary = secret_with(moto, SecretBinary=binary.encode())

    shown = cli_json(agent, "secretsmanager", "get-secret-value", "--secret-id", by_text)
    assert shown["SecretString"] == MARKER
    assert shown["Name"] == by_text  # the rest of the answer is intact

    client = harness.agent_client(agent, "secretsmanager")
    assert client.get_secret_value(SecretId=by_text)["SecretString"] == MARKER
    assert client.get_secret_value(SecretId=by_binary)["SecretBinary"] == MARKER_BYTES
    # moto still holds the real values: only the answers were masked
    admin = moto.client("secretsmanager")
    assert admin.get_secret_value(SecretId=by_text)["SecretString"] == text


def test_secure_string_parameters_are_masked_and_plain_ones_are_not(
    agent: dict[str, str], moto: harness.Moto, canaries: list[str]
) -> None:
    secret, plain = canary(), f"plain-{uuid.uuid4()}"
    canaries.append(secret)
    prefix = f"/masked/{uuid.uuid4().hex[:8]}"
    ssm = moto.client("ssm")
    ssm.put_parameter(Name=f"{prefix}/password", Value=secret, Type="SecureString")
    ssm.put_parameter(Name=f"{prefix}/region", Value=plain, Type="String")

    shown = cli_json(
        agent, "ssm", "get-parameter", "--name", f"{prefix}/password", "--with-decryption"
    )
    assert shown["Parameter"]["Value"] == MARKER
    assert shown["Parameter"]["Type"] == "SecureString"

    client = harness.agent_client(agent, "ssm")
    found = client.get_parameters_by_path(Path=prefix, WithDecryption=True)["Parameters"]
    assert {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in found} == {
        "password": MARKER,
        "region": plain,
    }


def test_kms_plaintext_is_masked(
    agent: dict[str, str], moto: harness.Moto, canaries: list[str], tmp_path: Path
) -> None:
    secret = canary()
    canaries.append(secret)
    kms = moto.client("kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=secret.encode())["CiphertextBlob"]
    (tmp_path / "blob").write_bytes(blob)

    shown = cli_json(agent, "kms", "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}")
    assert base64.b64decode(shown["Plaintext"]) == MARKER_BYTES
    client = harness.agent_client(agent, "kms")
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == MARKER_BYTES


def test_allowed_assume_role_returns_masked_credentials(
    agent: dict[str, str], moto: harness.Moto
) -> None:
    role = moto.client("iam").create_role(
        RoleName=f"masked-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument=TRUST_POLICY
    )["Role"]["Arn"]
    shown = cli_json(
        agent, "sts", "assume-role", "--role-arn", role, "--role-session-name", "masking"
    )
    credentials = shown["Credentials"]
    assert credentials["SecretAccessKey"] == MARKER
    assert credentials["SessionToken"] == MARKER
    assert credentials["AccessKeyId"].startswith("ASIA")
    client = harness.agent_client(agent, "sts")
    answer = client.assume_role(RoleArn=role, RoleSessionName="masking-sdk")["Credentials"]
    assert (answer["SecretAccessKey"], answer["SessionToken"]) == (MARKER, MARKER)


def test_record_scope_mask_lets_its_principals_see_the_value(
    migrator: dict[str, str], agent: dict[str, str], moto: harness.Moto, canaries: list[str]
) -> None:
    secret = canary()
    canaries.append(secret)
    name = secret_with(moto, SecretString=secret)
    migration = harness.agent_client(migrator, "secretsmanager")
    assert migration.get_secret_value(SecretId=name)["SecretString"] == secret
    # the mask names its principals: everyone else still gets the marker
    client = harness.agent_client(agent, "secretsmanager")
    assert client.get_secret_value(SecretId=name)["SecretString"] == MARKER


def test_masked_dynamodb_item_passes_the_sdk_crc32_check(
    agent: dict[str, str], moto: harness.Moto, canaries: list[str]
) -> None:
    secret = canary()
    canaries.append(secret)
    table = f"masked-{uuid.uuid4().hex[:8]}"
    admin = moto.client("dynamodb")
    admin.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    admin.put_item(
        TableName=table, Item={"id": {"S": "db"}, "user": {"S": "app"}, "password": {"S": secret}}
    )
    client = harness.agent_client(agent, "dynamodb")
    received: dict[str, Any] = {}
    client.meta.events.register(
        "before-parse.dynamodb.GetItem",
        lambda response_dict, **_: received.update(
            crc=response_dict["headers"].get("x-amz-crc32"), body=response_dict["body"]
        ),
    )
    item = client.get_item(TableName=table, Key={"id": {"S": "db"}})["Item"]
    assert item == {"id": {"S": "db"}, "user": {"S": "app"}, "password": {"S": MARKER}}
    # botocore verified the header (a mismatch raises); make sure there was one to verify
    assert received["crc"] == str(zlib.crc32(received["body"]))


def test_secrets_sent_by_the_agent_reach_aws_but_not_the_record(
    agent: dict[str, str], moto: harness.Moto, canaries: list[str]
) -> None:
    secret, parameter = canary(), canary()
    canaries.extend([secret, parameter])
    name = f"created-{uuid.uuid4().hex[:10]}"
    harness.agent_client(agent, "secretsmanager").create_secret(Name=name, SecretString=secret)
    harness.agent_client(agent, "ssm").put_parameter(
        Name=f"/created/{name}", Value=parameter, Type="SecureString"
    )
    assert moto.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"] == secret
    stored = moto.client("ssm").get_parameter(Name=f"/created/{name}", WithDecryption=True)
    assert stored["Parameter"]["Value"] == parameter


# -- mitmproxy's own outputs ----------------------------------------------------------


def test_gateway_refuses_to_start_with_outputs_that_show_bodies(
    moto: harness.Moto, idp: DevIdpServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    gateway = harness.Gateway.configure(tmp_path, moto, gateway_settings(idp.url, policy))
    options = ("--set", "flow_detail=3", "--set", "save_stream_file=flows.out")
    gateway.start(moto, extra_args=options, wait=False)
    assert gateway.process is not None
    try:
        code = gateway.process.wait(timeout=60)
    finally:
        gateway.stop()
    assert code != 0
    log = gateway.log_text()
    assert "awsgate: refusing to run" in log
    assert "flow_detail >= 3" in log and "save_stream_file" in log
    saved = tmp_path / "flows.out"  # mitmproxy opens it before the gateway refuses
    assert not saved.exists() or saved.stat().st_size == 0


# -- afterwards: the canaries are nowhere --------------------------------------------


@pytest.fixture(scope="module")
def store(masking_gateway: harness.Gateway) -> Iterator[Engine]:
    engine = db.open_engine(f"sqlite:///{masking_gateway.workdir / 'awsgate.sqlite'}")
    deadline = time.monotonic() + CHAINED_DEADLINE
    unfinished = select(func.count()).select_from(calls).where(calls.c.chain_seq.is_(None))
    while True:
        with engine.connect() as connection:
            if connection.execute(unfinished).scalar_one() == 0:
                break
        if time.monotonic() > deadline:
            pytest.fail(f"calls still unfinished after {CHAINED_DEADLINE}s")
        time.sleep(0.1)
    yield engine
    engine.dispose()


def recorded(store: Engine, action: str) -> list[Any]:
    with store.connect() as connection:
        query = select(calls).where(calls.c.action == action).order_by(calls.c.id)
        return [row._mapping for row in connection.execute(query)]


def test_the_record_marks_masked_fields_without_values(store: Engine) -> None:
    reads = recorded(store, "secretsmanager:GetSecretValue")
    assert reads
    marks = [mark for row in reads for mark in row["masked"] or []]
    assert "response $.SecretString by builtin:secretsmanager:GetSecretValue (agent)" in marks
    assert "response $.SecretString by migration-reads-secrets (record)" in marks
    created = recorded(store, "secretsmanager:CreateSecret")[0]
    assert created["masked"] == [
        "request $.SecretString by builtin:secretsmanager:CreateSecret (record)"
    ]
    assert MARKER.encode() in created["request_body"]
    item_reads = recorded(store, "dynamodb:GetItem")
    assert item_reads
    for row in item_reads:
        assert row["masked"] == ["response $.Item.password.S by table-passwords (agent)"]


def test_canaries_are_not_in_the_store(
    store: Engine, masking_gateway: harness.Gateway, canaries: list[str]
) -> None:
    assert canaries
    files = sorted(masking_gateway.workdir.glob("awsgate.sqlite*"))
    assert any(path.name.endswith("-wal") for path in files)
    raw = b"".join(path.read_bytes() for path in files)
    for value in canaries:
        assert value.encode() not in raw


def test_canaries_are_not_in_exported_flows(
    store: Engine, masking_gateway: harness.Gateway, canaries: list[str], tmp_path: Path
) -> None:
    with store.connect() as connection:
        sessions = connection.execute(
            select(calls.c.session_id).where(calls.c.session_id.is_not(None)).distinct()
        ).scalars()
        session_ids = list(sessions)
    assert len(session_ids) >= 2
    for session_id in session_ids:
        target = tmp_path / f"{session_id}.flows"
        config = str(masking_gateway.config_path)
        arguments = ["sessions", "export", "--config", config, session_id, "-o", str(target)]
        assert cli.main(arguments) == 0
        raw = target.read_bytes()
        assert raw
        for value in canaries:
            assert value.encode() not in raw


def test_canaries_and_credentials_are_not_in_the_log(
    store: Engine, masking_gateway: harness.Gateway, canaries: list[str]
) -> None:
    log = masking_gateway.log_text()
    assert "x-amz-target: secretsmanager.getsecretvalue" in log.lower()  # headers were shown
    for value in canaries:
        assert value not in log
    assert "Credential=" not in log  # signatures were redacted before mitmproxy printed them
