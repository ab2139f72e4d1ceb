"""Two gateway replicas sharing one PostgreSQL store and one session-signing key.

What an operator running several replicas behind a TCP load balancer relies
on: credentials minted by one replica verify on the other, an approval
requested on one is decided from the other's config and consumed exactly
once even when both replicas race for it, and the records of both form
verifiable chains in the shared store. Each replica also serves its own
Prometheus endpoint and writes JSON logs; agents behind HAProxy in TCP mode
(docs/deploy-haproxy.md; skipped where Debian's haproxy is not installed)
reach both replicas.

Needs ``AWSGATE_TEST_PG_URL`` (``scripts/test`` starts a server); this module
creates a fresh database on it and drops it at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from mitmproxy import certs
from sqlalchemy import Engine, select

from addons import cli
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.store import approvals, chain, db
from addons.store.models import calls
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings
from tests.e2e.test_approval import POLICY  # the same review rule

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

WAIT = 6  # seconds a replica holds a call for approval: the race's loser waits this long


@dataclass
class Replica:
    name: str
    gateway: harness.Gateway
    metrics_port: int

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one series on this replica's endpoint (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            exposition = answer.read().decode()
        wanted = {"replica": self.name, **labels}
        for line in exposition.splitlines():
            series, _, value = line.rpartition(" ")
            if series.startswith(name + "{"):
                found = dict(re.findall(r'(\w+)="([^"]*)"', series))
                if found == wanted:
                    return float(value)
        return 0.0


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    pg_store: str,
) -> Iterator[dict[str, Replica]]:
    """Replicas A and B, started at the same moment on a fresh database and a fresh key file.

    Both migrate the database and both create the session key: the first writer wins.
    They share the CA, which is made before they start.
    """
    shared = tmp_path_factory.mktemp("replicas-shared")
    (shared / "policy.yaml").write_text(POLICY)
    started: dict[str, Replica] = {}
    for name in ("replica-a", "replica-b"):
        settings = gateway_settings(idp.url, shared / "policy.yaml")
        settings["identity"]["session_key_file"] = str(shared / "session.key")
        settings["certs"] = str(shared / "certs")
        metrics_port = harness.free_port()
        settings.update(
            store=pg_store,
            replica_id=name,
            log_format="json",
            metrics={"listen": f"127.0.0.1:{metrics_port}"},
            approvals={"wait": WAIT, "grant_window": 300},
        )
        gateway = harness.Gateway.configure(tmp_path_factory.mktemp(name), moto, settings)
        started[name] = Replica(name, gateway, metrics_port)
    # One CA for both, made once and handed to each (as docs/deploy-haproxy.md says):
    # an agent trusts it whichever replica answers.
    certs.CertStore.from_store(shared / "certs", "mitmproxy", 2048)
    try:
        for replica in started.values():
            replica.gateway.start(moto, wait=False)
        for replica in started.values():
            assert replica.gateway.process is not None
            harness.wait_for_port(replica.gateway.port, replica.gateway.process, timeout=60)
            replica.gateway.wait_until_ready()  # the ready line, JSON-formatted here
        yield started
    finally:
        for replica in started.values():
            replica.gateway.stop()


@pytest.fixture(scope="module")
def store(pg_store: str, replicas: dict[str, Replica]) -> Iterator[Engine]:
    engine = db.connect(pg_store)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tokens(dev_idp: DevIdp, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("replica-tokens")
    files = {}
    for subject, groups in {"agent-r": ["agents"], "alice": ["sre"]}.items():
        files[subject] = directory / f"{subject}.token"
        files[subject].write_text(dev_idp.token(subject, groups=groups, aud=AUDIENCE, ttl=3600))
    return files


def minted_credentials(gateway: harness.Gateway, token_file: Path) -> Any:
    """What the agent's SDK got from sts:AssumeRoleWithWebIdentity answered by ``gateway``."""
    env = harness.agent_env(gateway, token_file=token_file)
    with harness.environment(env):
        return boto3.Session().get_credentials().get_frozen_credentials()


def client_with(gateway: harness.Gateway, credentials: Any, service: str) -> Any:
    env = harness.agent_env(
        gateway,
        AWS_ACCESS_KEY_ID=credentials.access_key,
        AWS_SECRET_ACCESS_KEY=credentials.secret_key,
        AWS_SESSION_TOKEN=credentials.token,
    )
    return harness.agent_client(env, service)


def s3_of(replica: Replica, token_file: Path) -> Any:
    return harness.agent_client(harness.agent_env(replica.gateway, token_file=token_file), "s3")


def until(check: Callable[[], Any], what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pending_for(store: Engine, bucket: str) -> approvals.ApprovalRequest:
    arn = f"arn:aws:s3:::{bucket}"

    def find() -> approvals.ApprovalRequest | None:
        return next(
            (
                request
                for request in approvals.list_requests(store, status=approvals.PENDING)
                if arn in request.resources
            ),
            None,
        )

    return until(find, f"a pending approval for {arn}")


def approve_via(replica: Replica, approval_id: str, approver_token: Path) -> None:
    """``awsgate approvals approve`` with the other replica's config (in-process: fast)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(
            [
                "approvals", "approve", approval_id,
                "--reason", "cross-replica test",
                "--token-file", str(approver_token),
                "--config", str(replica.gateway.config_path),
            ]
        )  # fmt: skip
    assert code == 0, err.getvalue()


def bucket_exists(moto: harness.Moto, bucket: str) -> bool:
    return bucket in [item["Name"] for item in moto.client("s3").list_buckets()["Buckets"]]


def test_credentials_minted_by_one_replica_verify_on_the_other(
    replicas: dict[str, Replica], tokens: dict[str, Path]
) -> None:
    a, b = replicas["replica-a"], replicas["replica-b"]
    credentials = minted_credentials(a.gateway, tokens["agent-r"])
    identity = client_with(b.gateway, credentials, "sts").get_caller_identity()
    assert identity["Arn"].endswith("awsgate-gateway")  # moto saw the gateway's signature
    bucket = f"replicas-{uuid.uuid4().hex[:8]}"
    client_with(b.gateway, credentials, "s3").create_bucket(Bucket=bucket)
    listed = client_with(a.gateway, credentials, "s3").list_buckets()["Buckets"]
    assert bucket in [item["Name"] for item in listed]
    assert b.metric("awsgate_requests_total", decision="allow") >= 2
    # A forged session (B's key differs by one byte) would be refused: prove B checks at all.
    forged = type(credentials)(
        credentials.access_key, credentials.secret_key + "x", credentials.token
    )
    with pytest.raises(ClientError) as refused:
        client_with(b.gateway, forged, "sts").get_caller_identity()
    assert "awsgate:" in refused.value.response["Error"]["Message"]


def test_an_approval_asked_on_one_replica_is_decided_and_used_on_the_other(
    replicas: dict[str, Replica], store: Engine, moto: harness.Moto, tokens: dict[str, Path]
) -> None:
    a, b = replicas["replica-a"], replicas["replica-b"]
    bucket = f"replicas-held-{uuid.uuid4().hex[:8]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(s3_of(a, tokens["agent-r"]).delete_bucket, Bucket=bucket)
        request = pending_for(store, bucket)
        until(lambda: a.metric("awsgate_approvals_held") == 1, "replica A's held gauge")
        with pytest.raises(ClientError):
            held.result(timeout=WAIT + 20)  # nobody decided in time: refused, still pending
    approve_via(b, request.id, tokens["alice"])
    s3_of(b, tokens["agent-r"]).delete_bucket(Bucket=bucket)  # the retry, through B
    assert not bucket_exists(moto, bucket)
    used = approvals.get(store, request.id)
    assert used is not None and used.status == approvals.USED
    assert a.metric("awsgate_approvals_held") == 0


def test_a_one_time_approval_is_consumed_once_when_both_replicas_race(
    replicas: dict[str, Replica], store: Engine, moto: harness.Moto, tokens: dict[str, Path]
) -> None:
    a, b = replicas["replica-a"], replicas["replica-b"]
    bucket = f"replicas-race-{uuid.uuid4().hex[:8]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(s3_of(a, tokens["agent-r"]).delete_bucket, Bucket=bucket)
        request = pending_for(store, bucket)
        with pytest.raises(ClientError):
            first.result(timeout=WAIT + 20)
    approve_via(b, request.id, tokens["alice"])
    # The same call retried through both replicas at once: one approval, one pass.
    clients = [s3_of(a, tokens["agent-r"]), s3_of(b, tokens["agent-r"])]
    with ThreadPoolExecutor(2) as pool:
        racing = [pool.submit(client.delete_bucket, Bucket=bucket) for client in clients]
        outcomes = []
        for future in racing:
            try:
                future.result(timeout=WAIT + 30)
                outcomes.append("passed")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Message"])
    assert outcomes.count("passed") == 1, outcomes
    [refusal] = [outcome for outcome in outcomes if outcome != "passed"]
    assert refusal.startswith("awsgate:")  # held for a new approval, not NoSuchBucket upstream
    assert not bucket_exists(moto, bucket)
    used = approvals.get(store, request.id)
    assert used is not None and used.status == approvals.USED


def test_records_from_both_replicas_form_verifiable_chains(
    replicas: dict[str, Replica], store: Engine, tokens: dict[str, Path]
) -> None:
    for replica in replicas.values():
        s3_of(replica, tokens["agent-r"]).list_buckets()

    def settled() -> bool:
        with store.connect() as connection:
            unfinished = connection.execute(
                select(calls.c.id).where(calls.c.chain_seq.is_(None)).limit(1)
            ).first()
        return unfinished is None

    until(settled, "every call's outcome to be written")
    report = chain.verify(store)
    assert report.ok, [str(link) for link in report.broken]
    with store.connect() as connection:
        chains = (
            connection.execute(
                select(calls.c.chain_id).where(calls.c.chain_seq.is_not(None)).distinct()
            )
            .scalars()
            .all()
        )
    assert report.chains == len(chains) >= 2  # one per replica process
    assert report.records > 0


def test_each_replica_logs_json_lines_with_the_call_ids(replicas: dict[str, Replica]) -> None:
    for replica in replicas.values():
        entries = [
            json.loads(line)
            for line in replica.gateway.log_text().splitlines()
            if line.startswith("{")
        ]
        access = [entry for entry in entries if entry.get("event") == "call"]
        assert access, f"{replica.name} wrote no access line"
        assert all(entry["replica"] == replica.name for entry in access)
        assert all(entry["request_id"] for entry in access)
        assert any(entry["session_id"] for entry in access)


HAPROXY_CONFIG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
    timeout tunnel 10m

frontend awsgate
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


@pytest.fixture(scope="module")
def haproxy(
    replicas: dict[str, Replica], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """HAProxy (Debian's package) in TCP mode in front of both replicas, as docs/ describes."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("needs HAProxy (apt-get install haproxy)")
    port = harness.free_port()
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{replica.gateway.port}" for name, replica in replicas.items()
    )
    config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        harness.wait_for_port(port, process)
        yield port
    finally:
        harness.stop(process)


def test_agents_behind_haproxy_use_both_replicas(
    replicas: dict[str, Replica], haproxy: int, tokens: dict[str, Path]
) -> None:
    before = {
        name: replica.metric("awsgate_requests_total", decision="allow")
        for name, replica in replicas.items()
    }
    # Agents address HAProxy and trust the replicas' shared CA.
    a = replicas["replica-a"].gateway
    front = harness.Gateway(haproxy, a.workdir, a.config_path)
    env = harness.agent_env(front, token_file=tokens["agent-r"])
    for _ in range(4):  # a new client, a new connection: round robin over the replicas
        assert harness.agent_client(env, "sts").get_caller_identity()["Account"]
    for name, replica in replicas.items():
        assert replica.metric("awsgate_requests_total", decision="allow") > before[name], name
