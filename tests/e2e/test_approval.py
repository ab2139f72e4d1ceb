"""Just-in-time approval end to end: held calls decided by authenticated approvers.

boto3 and the AWS CLI go through real gateways to moto; a rule sends
``s3:DeleteBucket`` for review by ``group:sre``. Approvers decide with
``awsgate approvals`` and their own dev-IdP tokens; two gateway processes
share one store; a local receiver collects the webhooks. The gateways hold
calls for a few seconds only (``approvals.wait``) to keep the module fast.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from addons import cli
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.store import approvals, db
from addons.store.approvals import ApprovalRequest
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

AWSGATE = Path(sys.executable).parent / "awsgate"
AWS = Path(sys.executable).parent / "aws"
WAIT = 12  # seconds a gateway holds a call: enough for the steps below on a loaded machine
APPEAR_DEADLINE = 15.0  # a held call shows up in the store well within this
APPROVAL_ID = re.compile(r"apr-[0-9a-f]{12}")

POLICY = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions: ["s3:*", "sts:GetCallerIdentity", "secretsmanager:CreateSecret"]
  - name: secret-writes-need-review
    effect: review
    principals: ["*"]
    actions: ["secretsmanager:PutSecretValue"]
    approvers: ["group:sre"]
  - name: bucket-deletes-need-review
    effect: review
    principals: ["*"]
    actions: ["s3:DeleteBucket"]
    approvers: ["group:sre"]
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class WebhookReceiver:
    """A loopback HTTP server that keeps every JSON document posted to it, by path."""

    def __init__(self) -> None:
        received: list[tuple[str, Any]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self, path: str, mentioning: str) -> list[Any]:
        return [body for where, body in self.received if where == path and mentioning in str(body)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_a(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    receiver: WebhookReceiver,
) -> Iterator[harness.Gateway]:
    workdir = tmp_path_factory.mktemp("approval-gateway")
    (workdir / "policy.yaml").write_text(POLICY)
    settings = gateway_settings(idp.url, workdir / "policy.yaml")
    settings["approvals"] = {
        "wait": WAIT,
        "grant_window": 300,
        "public_url": "http://127.0.0.1:9/",
        "webhooks": [
            {"url": f"{receiver.url}/slack", "format": "slack"},
            {"url": f"{receiver.url}/json", "format": "json"},
        ],
    }
    gateway = harness.Gateway.configure(workdir, moto, settings)
    gateway.start(moto)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway_b(gateway_a: harness.Gateway, moto: harness.Moto) -> Iterator[harness.Gateway]:
    """A second replica: same config file, same store, its own port and process."""
    gateway = harness.Gateway(harness.free_port(), gateway_a.workdir, gateway_a.config_path)
    gateway.start(moto)
    try:
        yield gateway
    finally:
        gateway.stop()


def open_store(gateway: harness.Gateway) -> Any:
    """The gateway's store, once it has migrated it (mitmdump listens before it configures)."""
    url = f"sqlite:///{gateway.workdir / 'awsgate.sqlite'}"
    deadline = time.monotonic() + 30
    while True:
        try:
            return db.connect(url)
        except db.StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def store(gateway_a: harness.Gateway) -> Iterator[Any]:
    engine = open_store(gateway_a)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tokens(dev_idp: DevIdp, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Token files: two agents, an agent that is also an SRE, an approver, a non-approver."""
    directory = tmp_path_factory.mktemp("approval-tokens")
    people = {
        "agent-2": ["agents"],
        "carol": ["agents", "sre"],
        "alice": ["sre"],
        "bob": ["dev"],
    }
    files = {}
    for subject, groups in people.items():
        files[subject] = directory / f"{subject}.token"
        files[subject].write_text(dev_idp.token(subject, groups=groups, aud=AUDIENCE, ttl=3600))
    return files


def agent_of(gateway: harness.Gateway, token_file: Path) -> dict[str, str]:
    return harness.agent_env(gateway, token_file=token_file)


def s3_client(env: dict[str, str], **config: Any) -> Any:
    return harness.agent_client(env, "s3", **config)


def awsgate(gateway: harness.Gateway, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``awsgate approvals`` command as a process of its own."""
    return subprocess.run(
        [str(AWSGATE), "approvals", *args, "--config", str(gateway.config_path)],
        env=harness.base_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def approvals_cli(gateway: harness.Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command run in this process: its start-up (seconds) would eat the short hold."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["approvals", *args, "--config", str(gateway.config_path)])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def decide(
    gateway: harness.Gateway, verb: str, approval_id: str, token: Path, reason: str
) -> subprocess.CompletedProcess[str]:
    return approvals_cli(gateway, verb, approval_id, "--reason", reason, "--token-file", str(token))


def pending_for(store: Any, bucket: str, exclude: tuple[str, ...] = ()) -> ApprovalRequest:
    """The pending request a held delete of ``bucket`` opened (polls the shared store)."""
    return pending_on(store, f"arn:aws:s3:::{bucket}", exclude)


def pending_on(store: Any, arn: str, exclude: tuple[str, ...] = ()) -> ApprovalRequest:
    """The pending request a held call on ``arn`` opened (polls the shared store)."""
    deadline = time.monotonic() + APPEAR_DEADLINE
    while time.monotonic() < deadline:
        for request in approvals.list_requests(store, status=approvals.PENDING):
            if arn in request.resources and request.id not in exclude:
                return request
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for {arn}")


def until(check: Callable[[], bool], what: str, deadline: float = APPEAR_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def bucket_exists(moto: harness.Moto, bucket: str) -> bool:
    return bucket in [item["Name"] for item in moto.client("s3").list_buckets()["Buckets"]]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def background_delete(pool: ThreadPoolExecutor, client: Any, bucket: str) -> Future[Any]:
    return pool.submit(client.delete_bucket, Bucket=bucket)


def refusal_of(future: Future[Any]) -> str:
    with pytest.raises(ClientError) as caught:
        future.result(timeout=WAIT + 20)
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    return caught.value.response["Error"]["Message"]


def test_cli_rb_approved_while_other_agents_flow(
    gateway_a: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    receiver: WebhookReceiver,
) -> None:
    bucket = unique("review-rb")
    moto.client("s3").create_bucket(Bucket=bucket)
    held = subprocess.Popen(
        [str(AWS), "s3", "rb", f"s3://{bucket}"],
        env=agent_of(gateway_a, agent_token_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        request = pending_for(store, bucket)
        assert request.principal == "sub:agent-1"
        assert request.action == "s3:DeleteBucket"
        assert request.resources == [f"arn:aws:s3:::{bucket}"]
        assert request.rule == "bucket-deletes-need-review"
        assert request.approvers == ["group:sre"]
        assert request.parameters == {"Bucket": bucket}
        # Another agent's allowed call completes while the delete is still held.
        other = s3_client(agent_of(gateway_a, tokens["agent-2"]))
        assert bucket in [item["Name"] for item in other.list_buckets()["Buckets"]]
        assert held.poll() is None, "the held call ended before anyone decided"

        listed = approvals_cli(gateway_a, "list", "--status", "pending", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        row = next(item for item in rows if item["id"] == request.id)
        assert {key: row[key] for key in ("status", "principal", "action", "rule")} == {
            "status": "pending",
            "principal": "sub:agent-1",
            "action": "s3:DeleteBucket",
            "rule": "bucket-deletes-need-review",
        }

        approved = decide(gateway_a, "approve", request.id, tokens["alice"], "cleanup ticket 42")
        assert approved.returncode == 0, approved.stderr
        out, err = held.communicate(timeout=WAIT + 20)
    finally:
        if held.poll() is None:
            held.kill()
    assert held.returncode == 0, err
    assert f"remove_bucket: {bucket}" in out
    assert not bucket_exists(moto, bucket)
    final = approvals.get(store, request.id)
    assert final is not None
    assert (final.status, final.hold, final.decided_by) == ("used", "forwarded", "sub:alice")
    assert final.reason == "cleanup ticket 42" and final.decided_via == "cli"

    # Both webhook forms got the request and the decision, with a link to the page.
    until(lambda: len(receiver.messages("/json", request.id)) >= 2, "the JSON webhooks")
    events = {body["event"]: body for body in receiver.messages("/json", request.id)}
    assert events["approval.requested"]["approval"]["status"] == "pending"
    assert events["approval.decided"]["approval"]["decided_by"] == "sub:alice"
    assert events["approval.decided"]["url"] == f"http://127.0.0.1:9/approvals/{request.id}"
    slack = [body["text"] for body in receiver.messages("/slack", request.id)]
    assert any("requested" in text and "awsgate approvals approve" in text for text in slack)
    assert any("approved" in text and "sub:alice" in text for text in slack)


def test_denied_call_fails_with_the_approver_and_reason(
    monkeypatch: pytest.MonkeyPatch,
    gateway_a: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    bucket = unique("review-deny")
    moto.client("s3").create_bucket(Bucket=bucket)
    held = background_delete(pool, s3_client(agent_of(gateway_a, agent_token_file)), bucket)
    request = pending_for(store, bucket)
    # The token from the environment this time.
    denied = awsgate(
        gateway_a,
        "deny",
        request.id,
        "--reason",
        "not during the freeze",
        AWSGATE_TOKEN=tokens["alice"].read_text(),
    )
    assert denied.returncode == 0, denied.stderr
    message = refusal_of(held)
    assert "sub:alice" in message and "not during the freeze" in message
    assert request.id in message
    assert bucket_exists(moto, bucket)


def test_a_held_call_shows_approvers_no_secret(
    gateway_a: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    receiver: WebhookReceiver,
    pool: ThreadPoolExecutor,
) -> None:
    """The approval request, the approvals table and the webhook get the record's masked
    parameters: a secret the agent sends is hidden from approvers like from the record."""
    name = unique("review-secret")
    secret_value = unique("not-a-real-secret")
    secrets = harness.agent_client(agent_of(gateway_a, agent_token_file), "secretsmanager")
    arn = secrets.create_secret(Name=name, SecretString="first")["ARN"]
    held = pool.submit(secrets.put_secret_value, SecretId=arn, SecretString=secret_value)
    request = pending_on(store, arn)
    assert request.parameters["SecretId"] == arn
    shown_to_approvers = request.parameters["SecretString"] == secret_value
    assert not shown_to_approvers
    until(lambda: bool(receiver.messages("/json", request.id)), "the JSON webhook")
    posted = json.dumps(receiver.messages("/json", request.id))
    shown = approvals_cli(gateway_a, "show", request.id, "--json")
    denied = decide(gateway_a, "deny", request.id, tokens["alice"], "test")
    assert denied.returncode == 0, denied.stderr
    with pytest.raises(ClientError):
        held.result(timeout=WAIT + 20)
    assert shown.returncode == 0, shown.stderr
    in_webhook, in_cli = secret_value in posted, secret_value in shown.stdout
    assert not in_webhook and not in_cli


def test_timed_out_call_passes_once_after_a_later_approval(
    gateway_a: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    bucket = unique("review-late")
    admin = moto.client("s3")
    admin.create_bucket(Bucket=bucket)
    client = s3_client(agent_of(gateway_a, agent_token_file))
    with pytest.raises(ClientError) as caught:
        client.delete_bucket(Bucket=bucket)
    message = caught.value.response["Error"]["Message"]
    found = APPROVAL_ID.search(message)
    assert found, message
    approval_id = found.group(0)
    assert f"awsgate approvals approve {approval_id} --reason" in message
    assert "bucket-deletes-need-review" in message
    timed_out = approvals.get(store, approval_id)
    assert timed_out is not None and (timed_out.status, timed_out.hold) == ("pending", "timed-out")
    assert bucket_exists(moto, bucket)

    approved = awsgate(
        gateway_a,
        "approve",
        approval_id,
        "--reason",
        "ok after the fact",
        AWSGATE_TOKEN_FILE=str(tokens["alice"]),
    )
    assert approved.returncode == 0, approved.stderr
    client.delete_bucket(Bucket=bucket)  # the retry passes, without a new hold
    assert not bucket_exists(moto, bucket)
    used = approvals.get(store, approval_id)
    assert used is not None and used.status == "used"

    # Once only: the same call again is held for a new decision.
    admin.create_bucket(Bucket=bucket)
    again = background_delete(pool, client, bucket)
    second = pending_for(store, bucket, exclude=(approval_id,))
    assert second.id != approval_id
    assert decide(gateway_a, "deny", second.id, tokens["alice"], "once was enough").returncode == 0
    assert "once was enough" in refusal_of(again)
    assert bucket_exists(moto, bucket)


def test_requester_and_non_approvers_cannot_decide(
    gateway_a: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    pool: ThreadPoolExecutor,
    tmp_path: Path,
) -> None:
    bucket = unique("review-self")
    moto.client("s3").create_bucket(Bucket=bucket)
    # carol is an agent and an SRE: an approver in general, never of her own call.
    held = background_delete(pool, s3_client(agent_of(gateway_a, tokens["carol"])), bucket)
    request = pending_for(store, bucket)
    own = decide(gateway_a, "approve", request.id, tokens["carol"], "mine")
    assert own.returncode == 1
    assert "sub:carol cannot decide its own request" in own.stderr
    outsider = decide(gateway_a, "approve", request.id, tokens["bob"], "looks fine")
    assert outsider.returncode == 1
    assert "sub:bob is not an approver" in outsider.stderr
    forged = tmp_path / "forged.token"
    forged.write_text(tokens["alice"].read_text()[:-4] + "AAAA")
    assert "token was refused" in decide(gateway_a, "approve", request.id, forged, "forged").stderr
    still = approvals.get(store, request.id)
    assert still is not None and still.status == "pending" and still.decided_by is None
    assert decide(gateway_a, "deny", request.id, tokens["alice"], "self-service").returncode == 0
    assert "self-service" in refusal_of(held)
    assert bucket_exists(moto, bucket)


def test_replicas_share_approvals_and_consume_them_once(
    gateway_a: harness.Gateway,
    gateway_b: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    admin = moto.client("s3")
    # A call held by replica B is decided from the shared store.
    bucket = unique("review-b")
    admin.create_bucket(Bucket=bucket)
    on_b = background_delete(pool, s3_client(agent_of(gateway_b, agent_token_file)), bucket)
    request = pending_for(store, bucket)
    assert decide(gateway_a, "approve", request.id, tokens["alice"], "via B").returncode == 0
    on_b.result(timeout=WAIT + 20)
    assert not bucket_exists(moto, bucket)

    # An agent that gives up (read timeout) leaves the request pending, unused.
    bucket = unique("review-gaveup")
    admin.create_bucket(Bucket=bucket)
    impatient = s3_client(agent_of(gateway_a, agent_token_file), read_timeout=1)
    with pytest.raises(ReadTimeoutError):
        impatient.delete_bucket(Bucket=bucket)
    request = pending_for(store, bucket)
    until(
        lambda: (approvals.get(store, request.id) or request).hold == "abandoned",
        "gateway A to notice the agent left",
        deadline=WAIT + 5,
    )
    assert decide(gateway_a, "approve", request.id, tokens["alice"], "retry it").returncode == 0
    assert bucket_exists(moto, bucket)
    # Its retry through replica B uses the approval; a retry through A finds it used.
    s3_client(agent_of(gateway_b, agent_token_file)).delete_bucket(Bucket=bucket)
    assert not bucket_exists(moto, bucket)
    admin.create_bucket(Bucket=bucket)
    on_a = background_delete(pool, s3_client(agent_of(gateway_a, agent_token_file)), bucket)
    fresh = pending_for(store, bucket, exclude=(request.id,))
    assert decide(gateway_a, "deny", fresh.id, tokens["alice"], "used up").returncode == 0
    assert "used up" in refusal_of(on_a)


def test_a_gateway_restart_loses_no_approval(
    gateway_a: harness.Gateway,
    gateway_b: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    tokens: dict[str, Path],
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    bucket = unique("review-restart")
    moto.client("s3").create_bucket(Bucket=bucket)
    held = background_delete(pool, s3_client(agent_of(gateway_b, agent_token_file)), bucket)
    request = pending_for(store, bucket)
    assert gateway_b.process is not None
    gateway_b.process.send_signal(signal.SIGTERM)
    gateway_b.process.wait(15)
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the gateway
        held.result(timeout=WAIT + 20)
    gateway_b.start(moto)

    shown = awsgate(gateway_a, "show", request.id, "--json")
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert (details["status"], details["hold"]) == ("pending", "lost")
    assert (
        decide(gateway_a, "approve", request.id, tokens["alice"], "after restart").returncode == 0
    )
    s3_client(agent_of(gateway_b, agent_token_file)).delete_bucket(Bucket=bucket)
    assert not bucket_exists(moto, bucket)
