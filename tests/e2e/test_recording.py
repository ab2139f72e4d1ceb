"""Recording end to end: every call through a real mitmdump to moto lands in the store.

One gateway for the module, with its own policy and a store that starts at
schema revision 0001 with an old record in it (the gateway migrates it on
start). The analyst's side is the real ``awsgate`` command run as a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from mitmproxy import io as flow_io
from sqlalchemy import Engine, func, insert, select

from addons.auth.devidp import DevIdp, DevIdpServer
from addons.store import chain, db
from addons.store.models import calls
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent  # awsgate and mitmdump of this virtualenv

POLICY = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions: ["sts:GetCallerIdentity", "s3:*", "dynamodb:*", "lambda:Invoke"]
  - name: no-prod-bucket-deletes
    effect: deny
    principals: ["*"]
    actions: ["s3:DeleteBucket"]
    resources: ["arn:aws:s3:::prod-*"]
  - name: secret-deletes-need-review
    effect: review
    principals: ["*"]
    actions: ["secretsmanager:DeleteSecret"]
    approvers: ["group:sre"]
"""
STREAM_THRESHOLD = 100_000  # bodies above it stream; below the store's 64 KiB body limit
OLD_RECORD: dict[str, Any] = {
    "request_id": "recorded-by-revision-0001",
    "time": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
    "duration_ms": 12.5,
    "session_id": "old-session",
    "subject": "old-agent",
    "groups": ["agents"],
    "service": "s3",
    "operation": "ListBuckets",
    "action": "s3:ListBuckets",
    "resources": [],
    "parameters": {},
    "decision": "allow",
    "status": 200,
    "upstream_status": 200,
    "response_body": b"<ListAllMyBucketsResult/>",
    "chain_id": "old-replica",
    "chain_seq": 1,
    "prev_hash": chain.GENESIS,
}
REVIEW_WAIT = 1  # seconds a reviewed call is held before it is refused, undecided
UNFINISHED_DEADLINE = 30.0  # seconds for completed calls to be chained (never reached when healthy)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- fixtures ---------------------------------------------------------------------------


def store_url(gateway: harness.Gateway) -> str:
    return f"sqlite:///{gateway.workdir / 'awsgate.sqlite'}"


def create_old_store(url: str) -> None:
    """A store as revision 0001 left it, holding one chained record."""
    db.migrate(url, "0001")
    record = {**OLD_RECORD, "record_hash": chain.record_hash(OLD_RECORD)}
    engine = db.open_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(calls).values(record))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def recording_gateway(
    tmp_path_factory: pytest.TempPathFactory, moto: harness.Moto, idp: DevIdpServer
) -> Iterator[harness.Gateway]:
    workdir = tmp_path_factory.mktemp("recording-gateway")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    settings = {
        **gateway_settings(idp.url, policy),
        "stream_threshold": STREAM_THRESHOLD,
        "approvals": {"wait": REVIEW_WAIT},
    }
    gateway = harness.Gateway.configure(workdir, moto, settings)
    create_old_store(store_url(gateway))
    gateway.start(moto)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def store(recording_gateway: harness.Gateway) -> Iterator[Engine]:
    engine = db.open_engine(store_url(recording_gateway))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recording-tokens")


def web_identity_agent(
    gateway: harness.Gateway, dev_idp: DevIdp, directory: Path, subject: str
) -> dict[str, str]:
    token_file = directory / f"{subject}.token"
    token_file.write_text(dev_idp.token(subject, groups=["agents"], aud=AUDIENCE, ttl=3600))
    return harness.agent_env(gateway, token_file=token_file)


def proxy_agent(gateway: harness.Gateway, token: str) -> dict[str, str]:
    """Proxy auth: the token is the proxy password; the AWS keys are dummies, ignored."""
    return harness.agent_env(
        gateway,
        proxy_token=token,
        AWS_ACCESS_KEY_ID="AKIADUMMYAGENTKEY000",
        AWS_SECRET_ACCESS_KEY="dummy-secret-ignored-by-the-gateway",
    )


def awsgate(gateway: harness.Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``awsgate`` command against the gateway's config."""
    command, action, *rest = args
    return subprocess.run(
        [
            str(BIN / "awsgate"),
            command,
            action,
            "--config",
            str(gateway.config_path),
            *rest,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=harness.base_env(),
    )


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def rows(engine: Engine, *where: Any) -> list[Mapping[str, Any]]:
    with engine.connect() as connection:
        return [
            row._mapping
            for row in connection.execute(select(calls).where(*where).order_by(calls.c.id))
        ]


def wait_until_chained(engine: Engine, *where: Any) -> None:
    """Outcomes are written after the response has gone to the agent: wait for them."""
    deadline = time.monotonic() + UNFINISHED_DEADLINE
    unfinished = select(func.count()).select_from(calls).where(calls.c.chain_seq.is_(None), *where)
    while True:
        with engine.connect() as connection:
            if connection.execute(unfinished).scalar_one() == 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"calls still unfinished after {UNFINISHED_DEADLINE}s")
        time.sleep(0.1)


def agent_clients(env: Mapping[str, str], *services: str, **config: Any) -> list[Any]:
    """Clients of one SDK session: one web identity exchange, so one gateway session."""
    with harness.environment(env):
        session = boto3.Session()
        clients = [
            session.client(service, config=Config(retries={"max_attempts": 1}, **config))
            for service in services
        ]
        session.get_credentials().get_frozen_credentials()
    return clients


def error_of(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def frozen_credentials(client: Any) -> Any:
    return client._request_signer._credentials.get_frozen_credentials()


# -- one session of mixed calls ---------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_session(
    recording_gateway: harness.Gateway,
    moto: harness.Moto,
    dev_idp: DevIdp,
    token_dir: Path,
    store: Engine,
) -> dict[str, Any]:
    """An agent's session of allowed, denied, reviewed and failing calls, plus a bad token."""
    subject = unique("rec-agent")
    env = web_identity_agent(recording_gateway, dev_idp, token_dir, subject)
    table, bucket, item_value = unique("rec-table"), unique("team-rec"), unique("item-value")
    admin_dynamodb = moto.client("dynamodb")
    admin_dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    function = create_lambda(moto)
    secret = unique("rec-secret")
    moto.client("secretsmanager").create_secret(Name=secret, SecretString="not-a-real-secret")

    # The web identity exchange happens here, once for all the clients.
    sts, dynamodb, s3, secretsmanager, lambda_ = agent_clients(
        env, "sts", "dynamodb", "s3", "secretsmanager", "lambda",
        request_checksum_calculation="when_required",
    )  # fmt: skip
    big_object = uuid.uuid4().bytes * (2 * STREAM_THRESHOLD // 16)  # streamed up, buffered down

    sts.get_caller_identity()
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "k1"}, "value": {"S": item_value}})
    dynamodb.get_item(TableName=table, Key={"pk": {"S": "k1"}})
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big_object)
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big_object
    missing = error_of(lambda: s3.get_object(Bucket=bucket, Key="no-such-key"))
    assert missing.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    prod_bucket = unique("prod-rec")
    denied = error_of(lambda: s3.delete_bucket(Bucket=prod_bucket))
    assert "no-prod-bucket-deletes" in denied.response["Error"]["Message"]
    reviewed = error_of(lambda: secretsmanager.delete_secret(SecretId=secret))
    assert "secret-deletes-need-review" in reviewed.response["Error"]["Message"]
    invoked = lambda_.invoke(FunctionName=function, Payload=b"{}")
    assert invoked["StatusCode"] == 200  # moto cannot run code without docker: still a call

    bad = harness.agent_client(proxy_agent(recording_gateway, "not-a-valid-token"), "sts")
    bad_token = error_of(bad.get_caller_identity)
    assert bad_token.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    wait_until_chained(store)
    return {
        "subject": subject,
        "table": table,
        "bucket": bucket,
        "item_value": item_value,
        "big_object": big_object,
        "function": function,
        "credentials": frozen_credentials(sts),
        "agent_token": Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"]).read_text(),
        "bad_token_request_id": bad_token.response["ResponseMetadata"]["RequestId"],
    }


def create_lambda(moto: harness.Moto) -> str:
    """A function moto accepts without docker (it cannot run it, which is fine here)."""
    name = unique("rec-fn")
    role = moto.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    moto.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="handler.handle",
        Code={"ZipFile": package.getvalue()},
    )
    return name


EXPECTED_CALLS = [
    # (action, decision, rule, upstream status)
    ("sts:AssumeRoleWithWebIdentity", "allow", None, None),
    ("sts:GetCallerIdentity", "allow", "agents-work", 200),
    ("dynamodb:PutItem", "allow", "agents-work", 200),
    ("dynamodb:GetItem", "allow", "agents-work", 200),
    ("s3:CreateBucket", "allow", "agents-work", 200),
    ("s3:PutObject", "allow", "agents-work", 200),
    ("s3:GetObject", "allow", "agents-work", 200),
    ("s3:GetObject", "allow", "agents-work", 404),
    ("s3:DeleteBucket", "deny", "no-prod-bucket-deletes", None),
    ("secretsmanager:DeleteSecret", "review", "secret-deletes-need-review", None),
    ("lambda:Invoke", "allow", "agents-work", 200),
]


def test_a_mixed_session_is_recorded_completely_and_in_order(
    recording_gateway: harness.Gateway, mixed_session: dict[str, Any], store: Engine
) -> None:
    subject = mixed_session["subject"]
    recorded = rows(store, calls.c.subject == subject)
    assert [
        (row["action"], row["decision"], row["rule"], row["upstream_status"]) for row in recorded
    ] == EXPECTED_CALLS
    (session_id,) = {row["session_id"] for row in recorded}
    assert session_id
    times = [row["time"] for row in recorded]
    assert times == sorted(times)
    for row in recorded:
        assert row["source"].startswith("127.0.0.1:")
        assert row["region"] == harness.REGION
        assert row["groups"] == ["agents"]
        assert row["duration_ms"] is not None and row["duration_ms"] >= 0
        assert row["status"] is not None and row["record_hash"]
        assert row["url"].startswith("https://") and "127.0.0.1" not in row["url"], row["url"]
        if row["upstream_status"] is not None:
            assert row["upstream_request_id"], row["action"]
    by_action = {row["action"]: row for row in recorded}
    put_item, get_item = by_action["dynamodb:PutItem"], by_action["dynamodb:GetItem"]
    assert put_item["parameters"]["TableName"] == mixed_session["table"]
    assert mixed_session["item_value"].encode() in put_item["request_body"]
    assert mixed_session["item_value"].encode() in get_item["response_body"]
    assert by_action["s3:DeleteBucket"]["message"].startswith("awsgate: denied by rule")
    assert by_action["s3:DeleteBucket"]["status"] == 403
    missing = [row for row in recorded if row["upstream_status"] == 404]
    assert b"NoSuchKey" in missing[0]["response_body"]
    invoke = by_action["lambda:Invoke"]
    (function_arn,) = invoke["resources"]  # the account is unknown to the gateway: "*"
    assert function_arn.endswith(f":function:{mixed_session['function']}")
    assert function_arn.startswith(f"arn:aws:lambda:{harness.REGION}:")

    # The refused token has no principal, but its call is there with the reason.
    (bad,) = rows(store, calls.c.decision == "refused-identity")
    assert bad["subject"] is None and bad["session_id"] is None
    assert bad["action"] == "sts:GetCallerIdentity"
    assert bad["message"].startswith("awsgate:") and bad["status"] == 403
    assert bad["time"] > recorded[-1]["time"]


def test_large_bodies_are_kept_as_size_and_sha256(
    mixed_session: dict[str, Any], store: Engine
) -> None:
    """The upload streamed through the gateway, hashed on the way; the download was buffered."""
    big = mixed_session["big_object"]
    digest = hashlib.sha256(big).hexdigest()
    put, get, _missing = rows(
        store, calls.c.subject == mixed_session["subject"], calls.c.service == "s3",
        calls.c.operation.in_(["PutObject", "GetObject"]),
    )  # fmt: skip
    assert put["request_body"] is None
    assert (put["request_body_size"], put["request_body_sha256"]) == (len(big), digest)
    assert get["response_body"] is None
    assert (get["response_body_size"], get["response_body_sha256"]) == (len(big), digest)


def test_audit_search_finds_the_lambda_invoke_by_principal(
    recording_gateway: harness.Gateway, mixed_session: dict[str, Any]
) -> None:
    subject = mixed_session["subject"]
    done = awsgate(
        recording_gateway, "audit", "search", "--action", "lambda:Invoke",
        "--principal", f"sub:{subject}", "--since", "1d", "--json",
    )  # fmt: skip
    (found,) = json_lines(done)
    assert found["principal"] == f"sub:{subject}"
    assert found["action"] == "lambda:Invoke"
    assert found["decision"] == "allow" and found["rule"] == "agents-work"
    assert found["status"] == 200 and found["approval"] is None
    assert found["resources"][0].endswith(f":function:{mixed_session['function']}")
    assert {"time", "session", "resources"} <= set(found)

    denied = awsgate(
        recording_gateway, "audit", "search", "--principal", f"sub:{subject}",
        "--decision", "deny", "--resource", "arn:aws:s3:::prod-*",
    )  # fmt: skip
    assert denied.returncode == 0, denied.stderr
    header, line = denied.stdout.splitlines()
    assert header.split()[:4] == ["TIME", "SESSION", "PRINCIPAL", "ACTION"]
    assert "s3:DeleteBucket" in line and "no-prod-bucket-deletes" in line


def test_sessions_list_shows_minted_and_proxy_token_sessions(
    recording_gateway: harness.Gateway,
    mixed_session: dict[str, Any],
    dev_idp: DevIdp,
    store: Engine,
) -> None:
    subject = unique("rec-proxy")
    sts = harness.agent_client(
        proxy_agent(recording_gateway, dev_idp.token(subject, ["agents"], aud=AUDIENCE)), "sts"
    )
    sts.get_caller_identity()
    sts.get_caller_identity()
    wait_until_chained(store)

    (proxy,) = json_lines(
        awsgate(recording_gateway, "sessions", "list", "--principal", f"sub:{subject}", "--json")
    )
    assert proxy["id"].startswith("tok-") and proxy["principal"] == f"sub:{subject}"
    assert (proxy["calls"], proxy["allowed"], proxy["denied"]) == (2, 2, 0)
    assert proxy["start"] <= proxy["end"]

    minted_subject = mixed_session["subject"]
    (minted,) = json_lines(
        awsgate(
            recording_gateway, "sessions", "list", "--principal", minted_subject,
            "--since", "1h", "--json",
        )
    )  # fmt: skip
    assert not minted["id"].startswith("tok-")
    assert minted["principal"] == f"sub:{minted_subject}"
    assert minted["calls"] == len(EXPECTED_CALLS)
    assert (minted["denied"], minted["reviewed"]) == (1, 1)

    shown = awsgate(recording_gateway, "sessions", "show", minted["id"], "--json")
    detail = json.loads(shown.stdout)
    assert [call["action"] for call in detail["calls"]] == [call[0] for call in EXPECTED_CALLS]


def secrets_of(
    mixed_session: dict[str, Any], moto: harness.Moto, gateway: harness.Gateway
) -> dict[str, bytes]:
    """Every credential that passed through the gateway during the session, by name."""
    minted = mixed_session["credentials"]
    return {
        "minted secret key": minted.secret_key.encode(),
        "minted session token": minted.token.encode(),
        "agent OIDC token": mixed_session["agent_token"].strip().encode(),
        "gateway access key": moto.access_key.encode(),
        "gateway secret key": moto.secret_key.encode(),
        "session signing key": (gateway.workdir / "session.key").read_bytes().strip(),
    }


def test_store_holds_no_credentials(
    recording_gateway: harness.Gateway,
    mixed_session: dict[str, Any],
    moto: harness.Moto,
    store: Engine,
) -> None:
    exchange = rows(
        store,
        calls.c.subject == mixed_session["subject"],
        calls.c.action == "sts:AssumeRoleWithWebIdentity",
    )[0]
    assert b"<AccessKeyId>" in exchange["response_body"]  # the answer is recorded, scrubbed
    assert b"<SecretAccessKey>[redacted]" in exchange["response_body"]
    assert b"<SessionToken>[redacted]" in exchange["response_body"]
    files = sorted(recording_gateway.workdir.glob("awsgate.sqlite*"))
    raw = b"".join(path.read_bytes() for path in files)
    for name, secret in secrets_of(mixed_session, moto, recording_gateway).items():
        assert secret and secret not in raw, f"the {name} is in the store"


def test_exported_session_opens_in_mitmproxy_with_bodies_and_no_credentials(
    recording_gateway: harness.Gateway,
    mixed_session: dict[str, Any],
    moto: harness.Moto,
    store: Engine,
    tmp_path: Path,
) -> None:
    (session_id,) = {
        r["session_id"] for r in rows(store, calls.c.subject == mixed_session["subject"])
    }
    target = tmp_path / "session.flows"
    done = awsgate(recording_gateway, "sessions", "export", session_id, "-o", str(target))
    assert done.returncode == 0, done.stderr

    with target.open("rb") as file:
        flows = list(flow_io.FlowReader(file).stream())
    assert len(flows) == len(EXPECTED_CALLS)
    hosts = [flow.request.pretty_host for flow in flows]
    assert hosts[1] == f"sts.{harness.REGION}.amazonaws.com"
    by_target = {flow.request.headers.get("x-amz-target", ""): flow for flow in flows}
    put_item = by_target["DynamoDB_20120810.PutItem"]
    get_item = by_target["DynamoDB_20120810.GetItem"]
    assert mixed_session["item_value"].encode() in put_item.request.content
    assert mixed_session["item_value"].encode() in get_item.response.content
    denied = next(flow for flow in flows if flow.response and flow.response.status_code == 403)
    assert b"no-prod-bucket-deletes" in denied.response.content
    for flow in flows:
        for name in ("authorization", "x-amz-security-token"):
            assert flow.request.headers.get(name) in (None, "[redacted]")

    raw = target.read_bytes()
    for name, secret in secrets_of(mixed_session, moto, recording_gateway).items():
        assert secret not in raw, f"the {name} is in the exported flows"

    # mitmproxy's own tool reads it back: mitmdump replays the file's flows to its output.
    shown = subprocess.run(
        [str(BIN / "mitmdump"), "-n", "-r", str(target), "--flow-detail", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=harness.base_env(),
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("<< ") == len(flows)
    assert f"POST https://lambda.{harness.REGION}.amazonaws.com/" in shown.stdout


def test_an_edited_record_fails_verify_at_that_record(
    recording_gateway: harness.Gateway, mixed_session: dict[str, Any], store: Engine
) -> None:
    assert chain.verify(store).ok
    (denied,) = rows(store, calls.c.subject == mixed_session["subject"], calls.c.decision == "deny")
    database = sqlite3.connect(recording_gateway.workdir / "awsgate.sqlite")
    try:
        with database:
            database.execute("UPDATE calls SET decision = 'allow' WHERE id = ?", (denied["id"],))
        broken = awsgate(recording_gateway, "audit", "verify")
        assert broken.returncode == 1
        assert f"record {denied['id']} (request {denied['request_id']}" in broken.stdout
        assert "the record was changed" in broken.stdout
    finally:
        with database:
            database.execute("UPDATE calls SET decision = 'deny' WHERE id = ?", (denied["id"],))
        database.close()
    assert chain.verify(store).ok


def test_a_store_from_revision_0001_was_migrated_on_start(
    recording_gateway: harness.Gateway, store: Engine
) -> None:
    assert db.current_revision(store) == db.head_revision()
    (old,) = rows(store, calls.c.request_id == OLD_RECORD["request_id"])
    for key, value in OLD_RECORD.items():
        assert old[key] == value, key
    report = chain.verify(store)
    assert report.ok and report.chains >= 2  # the old replica's chain and this gateway's
    found = json_lines(
        awsgate(recording_gateway, "audit", "search", "--principal", "old-agent", "--json")
    )
    assert [record["session"] for record in found] == ["old-session"]


def test_prune_keeps_the_chains_verifiable(
    recording_gateway: harness.Gateway, store: Engine
) -> None:
    """The record from 2024 goes; today's stay, and every chain still verifies."""
    before = len(rows(store))
    done = awsgate(recording_gateway, "audit", "prune", "--older-than", "90d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 1 record(s) older than")
    assert rows(store, calls.c.request_id == OLD_RECORD["request_id"]) == []
    assert len(rows(store)) == before - 1
    verified = awsgate(recording_gateway, "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout


# -- load ---------------------------------------------------------------------------------

AGENTS = 20
CALLS_PER_AGENT = 100
LOAD_READ_TIMEOUT = 20  # seconds: a call moto's server left hanging is retried sooner


def test_20_concurrent_agents_2000_calls_all_recorded(
    recording_gateway: harness.Gateway, dev_idp: DevIdp, token_dir: Path, store: Engine
) -> None:
    """Every attempt is one record: an SDK retry (moto's server drops a connection now and
    then under load) is a call of its own, recorded with its error."""
    run = uuid.uuid4().hex[:8]
    clients = [
        harness.agent_client(
            web_identity_agent(recording_gateway, dev_idp, token_dir, f"load-{run}-{index}"),
            "sts",
            read_timeout=LOAD_READ_TIMEOUT,
        )
        for index in range(AGENTS)
    ]
    retries: list[int] = []
    failures: list[BaseException] = []

    def work(client: Any) -> None:
        try:
            for _ in range(CALLS_PER_AGENT):
                answer = client.get_caller_identity()
                retries.append(answer["ResponseMetadata"]["RetryAttempts"])
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert len(retries) == AGENTS * CALLS_PER_AGENT

    load = calls.c.subject.like(f"load-{run}-%")
    wait_until_chained(store, load)
    with store.connect() as connection:
        counted = connection.execute(
            select(calls.c.action, calls.c.upstream_status, calls.c.error.is_(None), func.count())
            .where(load)
            .group_by(calls.c.action, calls.c.upstream_status, calls.c.error.is_(None))
        ).all()
        sessions = connection.execute(
            select(func.count(func.distinct(calls.c.session_id))).where(load)
        ).scalar_one()
    counts = {tuple(row[:3]): row[3] for row in counted}
    assert counts.pop(("sts:AssumeRoleWithWebIdentity", None, True)) == AGENTS
    assert counts.pop(("sts:GetCallerIdentity", 200, True)) == AGENTS * CALLS_PER_AGENT
    assert sum(counts.values()) == sum(retries)  # the attempts that failed, each with why
    assert {action for action, _status, _ok in counts} <= {"sts:GetCallerIdentity"}
    assert sessions == AGENTS
    assert chain.verify(store).ok


# -- an unwritable store ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite-directory", "postgresql-closed-port"])
def test_gateway_refuses_to_start_without_a_store(
    tmp_path: Path, moto: harness.Moto, idp: DevIdpServer, kind: str
) -> None:
    if kind == "sqlite-directory":
        (tmp_path / "store-is-a-directory").mkdir()
        url = f"sqlite:///{tmp_path / 'store-is-a-directory'}"
        shown = str(tmp_path / "store-is-a-directory")
    else:
        url = f"postgresql://awsgate:not-a-password@127.0.0.1:{harness.free_port()}/awsgate"
        shown = "postgresql://awsgate:***@127.0.0.1"
    settings = {**gateway_settings(idp.url, Path(__file__).parent / "policies" / "base.yaml")}
    gateway = harness.Gateway.configure(tmp_path / "gw", moto, {**settings, "store": url})
    gateway.start(moto, wait=False)
    assert gateway.process is not None
    try:
        code = gateway.process.wait(timeout=60)
    finally:
        gateway.stop()
    assert code != 0
    log = gateway.log_text()
    assert "awsgate: store: cannot migrate the store" in log, log
    assert shown in log
    assert "not-a-password" not in log


def test_calls_are_refused_while_the_store_cannot_be_written(
    recording_gateway: harness.Gateway,
    moto: harness.Moto,
    dev_idp: DevIdp,
    token_dir: Path,
    store: Engine,
) -> None:
    """The SQLite file is swapped for a directory under the running gateway, then put back."""
    s3 = harness.agent_client(
        web_identity_agent(recording_gateway, dev_idp, token_dir, unique("rec-outage")), "s3"
    )
    s3.list_buckets()
    database = recording_gateway.workdir / "awsgate.sqlite"
    aside = database.with_name("awsgate.sqlite.aside")
    bucket = unique("outage")
    database.rename(aside)
    database.mkdir()
    try:
        refused = error_of(lambda: s3.create_bucket(Bucket=bucket))
    finally:
        database.rmdir()
        aside.rename(database)
    assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert refused.response["Error"]["Message"].startswith(
        "awsgate: the record store cannot be written"
    )
    assert "was replaced" in refused.response["Error"]["Message"]
    assert bucket not in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]

    # Back in place: the gateway records and forwards again, and the chain still holds.
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]
    wait_until_chained(store)
    assert chain.verify(store).ok
    created = [
        row for row in rows(store, calls.c.action == "s3:CreateBucket")
        if row["parameters"].get("Bucket") == bucket
    ]  # fmt: skip
    assert [(row["decision"], row["upstream_status"]) for row in created] == [("allow", 200)]
