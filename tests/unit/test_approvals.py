"""Approval requests in the store, webhooks, the dev IdP's login flow and the config section."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import Engine

from addons import config
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.auth.oidc import TokenError, TokenValidator
from addons.config import ConfigError, IssuerConfig, WebhookConfig
from addons.context import Decision, Operation, Principal
from addons.devstack import throwaway_database
from addons.notify import CREATED, DECIDED, Notifier, json_message, slack_message
from addons.store import approvals
from addons.store.db import migrate, open_engine

ISSUER = "http://127.0.0.1:1"
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
AGENT = Principal(ISSUER, "agent-1", frozenset({"agents"}), "agent", "session-1")
ALICE = Principal(ISSUER, "alice", frozenset({"sre"}))
BOB = Principal(ISSUER, "bob", frozenset({"dev"}))
REVIEW = Decision("review", "deletes-need-review", "held", ("group:sre",))
GRANT_WINDOW = timedelta(minutes=15)


def delete(bucket: str = "logs", **params: Any) -> Operation:
    return Operation(
        "s3", "DeleteBucket", "us-east-1", "s3", "rest-xml",
        {"Bucket": bucket, **params}, [f"arn:aws:s3:::{bucket}"],
    )  # fmt: skip


def call(
    operation: Operation | None = None,
    invocation: str | None = None,
    principal: Principal = AGENT,
    request_id: str = "req-1",
) -> approvals.HeldCall:
    operation = operation or delete()
    return approvals.held_call(
        request_id, principal, operation, REVIEW, operation.params, invocation
    )


def admit(engine: Engine, held: approvals.HeldCall, now: datetime = NOW) -> approvals.Admission:
    return approvals.admit(
        engine, held, expire=timedelta(hours=1), holder="gw-1", hold=timedelta(seconds=60), now=now
    )


def approve(engine: Engine, approval_id: str, window: timedelta | None = None) -> Any:
    return approvals.decide(
        engine, approval_id, ALICE, approve=True, reason="ok", via="test",
        grant_window=GRANT_WINDOW, window=window, now=NOW,
    )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated store: a SQLite file, or a throw-away database on AWSGATE_TEST_PG_URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        migrate(url)
        yield url
        return
    base = os.environ.get("AWSGATE_TEST_PG_URL")
    if not base:
        pytest.skip("PostgreSQL tests need AWSGATE_TEST_PG_URL (scripts/test starts one)")
    with throwaway_database(base, "awsgate_test") as url:
        migrate(url)
        yield url


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


# -- the store ---------------------------------------------------------------------------


def test_a_held_call_opens_one_request_that_retries_and_twins_join(engine: Engine) -> None:
    first = admit(engine, call(invocation="inv-1"))
    assert (first.verdict, first.created) == ("wait", True)
    request = first.approval
    assert (request.status, request.hold, request.holder) == ("pending", "waiting", "gw-1")
    assert (request.principal, request.action, request.rule) == (
        "sub:agent-1", "s3:DeleteBucket", "deletes-need-review",
    )  # fmt: skip
    assert request.resources == ["arn:aws:s3:::logs"] and request.approvers == ["group:sre"]
    assert request.expires == NOW + timedelta(hours=1)
    retry = admit(engine, call(invocation="inv-1", request_id="req-2"))
    assert (retry.verdict, retry.created, retry.approval.id) == ("wait", False, request.id)
    twin = admit(engine, call(invocation="inv-other", request_id="req-3"))
    assert (twin.verdict, twin.approval.id) == ("wait", request.id)
    other = admit(engine, call(delete("logs", ExpectedBucketOwner="1")))
    assert other.created and other.approval.id != request.id
    pending = {item.id for item in approvals.list_requests(engine, status="pending")}
    assert pending == {other.approval.id, request.id}


def test_an_invocation_id_never_joins_a_different_call(engine: Engine) -> None:
    first = admit(engine, call(invocation="inv-1"))
    intruder = admit(engine, call(delete("prod"), invocation="inv-1"))
    assert intruder.created and intruder.approval.id != first.approval.id


def test_parameters_are_stored_redacted_but_fingerprinted_whole() -> None:
    one = call(delete("logs", Password="FAKE-secret-1"))
    two = call(delete("logs", Password="FAKE-secret-2"))
    assert one.parameters == {"Bucket": "logs", "Password": "[redacted]"}
    assert one.fingerprint != two.fingerprint
    assert "FAKE-secret" not in json.dumps(one.parameters) + one.fingerprint


def test_who_may_decide(engine: Engine) -> None:
    request = admit(engine, call()).approval
    decide = approvals.decide
    with pytest.raises(approvals.DecisionRefused, match="cannot decide its own request"):
        requester_too = Principal(ISSUER, "agent-1", frozenset({"sre"}))
        decide(engine, request.id, requester_too, approve=True, reason="mine", via="t",
               grant_window=GRANT_WINDOW, now=NOW)  # fmt: skip
    with pytest.raises(approvals.DecisionRefused, match="sub:bob is not an approver"):
        decide(engine, request.id, BOB, approve=True, reason="x", via="t",
               grant_window=GRANT_WINDOW, now=NOW)  # fmt: skip
    with pytest.raises(approvals.DecisionRefused, match="needs a reason"):
        decide(engine, request.id, ALICE, approve=False, reason="  ", via="t",
               grant_window=GRANT_WINDOW, now=NOW)  # fmt: skip
    with pytest.raises(approvals.DecisionRefused, match="only an approval"):
        decide(engine, request.id, ALICE, approve=False, reason="no", via="t",
               grant_window=GRANT_WINDOW, window=timedelta(hours=1), now=NOW)  # fmt: skip
    assert approvals.get(engine, request.id).status == "pending"  # type: ignore[union-attr]
    denied = decide(engine, request.id, ALICE, approve=False, reason="not now", via="cli",
                    grant_window=GRANT_WINDOW, now=NOW)  # fmt: skip
    assert (denied.status, denied.decided_by, denied.decider_issuer, denied.reason) == (
        "denied", "sub:alice", ISSUER, "not now",
    )  # fmt: skip
    assert denied.decided_at == NOW and denied.decided_via == "cli"
    with pytest.raises(approvals.DecisionRefused, match="is denied, not pending"):
        approve(engine, request.id)
    with pytest.raises(approvals.DecisionRefused, match="no approval request"):
        approve(engine, "apr-000000000000")


def test_a_request_past_its_expiry_cannot_be_decided(engine: Engine) -> None:
    request = admit(engine, call(), now=NOW - timedelta(hours=2)).approval
    with pytest.raises(approvals.DecisionRefused, match="is expired"):
        approve(engine, request.id)
    approvals.sweep(engine, now=NOW)
    assert approvals.get(engine, request.id).status == "expired"  # type: ignore[union-attr]


def test_a_denied_request_refuses_the_sdk_retry_that_joins_it(engine: Engine) -> None:
    request = admit(engine, call(invocation="inv-1")).approval
    approvals.decide(engine, request.id, ALICE, approve=False, reason="no", via="t",
                     grant_window=GRANT_WINDOW, now=NOW)  # fmt: skip
    retry = admit(engine, call(invocation="inv-1"))
    assert (retry.verdict, retry.approval.id) == ("refuse", request.id)
    fresh = admit(engine, call(invocation="inv-2"))  # the same call asked anew: a new request
    assert fresh.created


def test_an_approval_lets_exactly_one_identical_call_through(engine: Engine) -> None:
    request = admit(engine, call()).approval
    approved = approve(engine, request.id)
    assert approved.grant_until == NOW + GRANT_WINDOW
    first = admit(engine, call(request_id="retry-1"))
    assert (first.verdict, first.approval.id, first.approval.used_by) == (
        "pass", request.id, "retry-1",
    )  # fmt: skip
    second = admit(engine, call(request_id="retry-2"))
    assert second.verdict == "wait" and second.created
    assert approvals.get(engine, request.id).status == "used"  # type: ignore[union-attr]


def test_an_approval_covers_the_body_it_was_asked_with(engine: Engine) -> None:
    """A payload (a Lambda event, an S3 object) is no parameter: its digest binds it."""
    function = "arn:aws:lambda:us-east-1:123456789012:function:deploy"
    params = {"FunctionName": "deploy"}
    invoke = Operation("lambda", "Invoke", "us-east-1", "lambda", "rest-json", params, [function])

    def held(digest: str, request_id: str) -> approvals.HeldCall:
        return approvals.held_call(
            request_id, AGENT, invoke, REVIEW, invoke.params, body_sha256=digest
        )

    request = admit(engine, held("a" * 64, "req-a")).approval
    approve(engine, request.id)
    other_body = admit(engine, held("b" * 64, "req-b"))
    assert other_body.verdict == "wait" and other_body.approval.id != request.id
    assert admit(engine, held("a" * 64, "retry-a")).verdict == "pass"


def test_an_approval_is_for_the_role_it_was_asked_under(engine: Engine) -> None:
    """The role picks the upstream credentials, perhaps another account's: approved under
    one, the same call under another is a new request (and so is a window's use)."""
    prod = dataclasses.replace(AGENT, role="prod-admin")
    for window in (None, timedelta(hours=1)):
        request = admit(engine, call(delete(f"logs-{window}"))).approval
        approve(engine, request.id, window=window)
        other_role = admit(engine, call(delete(f"logs-{window}"), principal=prod))
        assert other_role.verdict == "wait" and other_role.approval.id != request.id
        assert admit(engine, call(delete(f"logs-{window}"))).verdict == "pass"


def test_consuming_is_atomic_across_connections(store_url: str) -> None:
    """Eight replicas race for one approval; exactly one wins."""
    setup = open_engine(store_url)
    request = admit(setup, call()).approval
    approve(setup, request.id)
    engines = [open_engine(store_url) for _ in range(8)]
    start = threading.Barrier(len(engines))
    results: list[bool] = []

    def race(engine: Engine, index: int) -> None:
        start.wait()
        results.append(approvals.consume(engine, request.id, f"req-{index}", now=NOW))

    threads = [threading.Thread(target=race, args=(e, i)) for i, e in enumerate(engines)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(results) == [False] * 7 + [True]
        assert approvals.get(setup, request.id).status == "used"  # type: ignore[union-attr]
    finally:
        for engine in [setup, *engines]:
            engine.dispose()


def test_an_unused_approval_expires_after_its_grant_window(engine: Engine) -> None:
    request = admit(engine, call()).approval
    approve(engine, request.id)
    later = NOW + GRANT_WINDOW + timedelta(seconds=1)
    assert admit(engine, call(), now=later).created  # not let through
    approvals.sweep(engine, now=later)
    assert approvals.get(engine, request.id).status == "expired"  # type: ignore[union-attr]


def test_a_time_window_covers_the_principal_action_and_resources(engine: Engine) -> None:
    request = admit(engine, call()).approval
    approve(engine, request.id, window=timedelta(hours=1))
    assert admit(engine, call(request_id="held")).verdict == "pass"  # the held call itself
    # Other parameters, same principal, action and resources: let through by the window.
    within = admit(
        engine, call(delete("logs", ExpectedBucketOwner="1")), NOW + timedelta(minutes=5)
    )
    assert (within.verdict, within.approval.id) == ("pass", request.id)
    assert within.grant is not None
    other_principal = Principal(ISSUER, "agent-2", frozenset({"agents"}))
    assert admit(engine, call(principal=other_principal)).verdict == "wait"
    assert admit(engine, call(delete("prod"))).verdict == "wait"
    after = admit(engine, call(), NOW + timedelta(hours=1, seconds=1))
    assert after.verdict == "wait"


def test_holds_end_and_lost_holds_are_marked(engine: Engine) -> None:
    one = admit(engine, call()).approval
    two = admit(engine, call(delete("two"))).approval
    three = admit(engine, call(delete("three"))).approval
    approvals.end_hold(engine, one.id, "gw-1", approvals.TIMED_OUT)
    approvals.end_hold(engine, two.id, "gw-other", approvals.FORWARDED)  # not its hold
    assert approvals.get(engine, one.id).hold == "timed-out"  # type: ignore[union-attr]
    assert approvals.get(engine, two.id).hold == "waiting"  # type: ignore[union-attr]
    assert approvals.release_holder(engine, "gw-1") == 2  # the gateway stops
    assert approvals.get(engine, two.id).hold == "lost"  # type: ignore[union-attr]
    # A crashed gateway ends nothing: its holds are found once their deadline is long past.
    crashed = call(delete("four"))
    four = approvals.admit(
        engine, crashed, expire=timedelta(hours=1), holder="gw-crashed",
        hold=timedelta(seconds=60), now=NOW,
    ).approval  # fmt: skip
    approvals.sweep(engine, now=NOW + timedelta(seconds=65))
    assert approvals.get(engine, four.id).hold == "waiting"  # type: ignore[union-attr]
    approvals.sweep(engine, now=NOW + timedelta(seconds=75))
    assert approvals.get(engine, four.id).hold == "lost"  # type: ignore[union-attr]
    assert approvals.get(engine, three.id).status == "pending"  # type: ignore[union-attr]


def test_parse_window() -> None:
    assert approvals.parse_window("30m", 3600) == timedelta(minutes=30)
    assert approvals.parse_window(" 2h", 86400) == timedelta(hours=2)
    for bad in ("2 hours", "0m", "-1h", "25h"):
        with pytest.raises(ValueError):
            approvals.parse_window(bad, 86400)


# -- webhooks ----------------------------------------------------------------------------


def stored_request(**changes: Any) -> approvals.ApprovalRequest:
    values: dict[str, Any] = {
        "id": "apr-0123456789ab", "status": "pending", "created": NOW,
        "expires": NOW + timedelta(hours=1), "fingerprint": "f" * 64, "subject": "agent-1",
        "action": "s3:DeleteBucket", "resources": ["arn:aws:s3:::<b>&"],
        "rule": "deletes-need-review", "approvers": ["group:sre"],
    }  # fmt: skip
    values.update(changes)
    return approvals.ApprovalRequest(**values)


def test_webhook_messages_in_both_forms() -> None:
    request = stored_request()
    page = "https://gate.example/approvals/apr-0123456789ab"
    created = slack_message(CREATED, request, page)["text"]
    assert "Approval apr-0123456789ab requested" in created
    assert "awsgate approvals approve apr-0123456789ab --reason TEXT" in created
    assert f"<{page}|" in created
    assert "arn:aws:s3:::&lt;b&gt;&amp;" in created  # an agent's text cannot forge Slack links
    decided = stored_request(status="denied", decided_by="sub:alice", reason="no")
    assert "denied* by `sub:alice`: no" in slack_message(DECIDED, decided, None)["text"]
    generic = json_message(DECIDED, decided, page)
    assert generic["event"] == "approval.decided" and generic["url"] == page
    assert generic["approval"]["decided_by"] == "sub:alice"
    assert generic["approval"]["principal"] == "sub:agent-1"


class Receiver:
    def __init__(self, status: int = 200) -> None:
        import http.server

        self.bodies: list[tuple[str, Any]] = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                bodies.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_notifier_posts_both_forms_to_a_loopback_receiver() -> None:
    receiver = Receiver()
    notifier = Notifier(
        [WebhookConfig(f"{receiver.url}/s", "slack"), WebhookConfig(f"{receiver.url}/j", "json")],
        public_url="http://127.0.0.1:9",
    )
    try:
        notifier.created(stored_request())
        notifier.decided(stored_request(status="approved", decided_by="sub:alice", reason="ok"))
        notifier.close(timeout=10)
    finally:
        receiver.close()
    paths = sorted(path for path, _ in receiver.bodies)
    assert paths == ["/j", "/j", "/s", "/s"]
    generic = [body for path, body in receiver.bodies if path == "/j"]
    assert [body["event"] for body in generic] == [CREATED, DECIDED]
    assert generic[0]["url"] == "http://127.0.0.1:9/approvals/apr-0123456789ab"


def test_a_failing_or_slow_receiver_never_blocks_or_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver(status=500)
    released = threading.Event()
    posted: list[str] = []

    def slow_post(url: str, body: bytes) -> None:
        released.wait(10)
        posted.append(url)
        urllib.request.urlopen(
            urllib.request.Request(url, data=body, method="POST"), timeout=5
        ).read()

    notifier = Notifier([WebhookConfig(f"{receiver.url}/hook/SECRET-PATH", "json")], post=slow_post)
    try:
        notifier.created(stored_request())  # returns while the post is stuck
        assert posted == []
        released.set()
        notifier.close(timeout=10)
    finally:
        receiver.close()
    assert posted and len(receiver.bodies) == 1
    assert "webhook to http://127.0.0.1" in caplog.text and "HTTP 500" in caplog.text
    assert "SECRET-PATH" not in caplog.text  # a webhook URL may be a credential


def test_an_unreachable_receiver_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from addons.devstack import free_port

    notifier = Notifier([WebhookConfig(f"http://127.0.0.1:{free_port()}/x", "slack")])
    notifier.created(stored_request())
    notifier.close(timeout=10)
    assert "webhook to http://127.0.0.1" in caplog.text


# -- the dev IdP's authorization code flow -------------------------------------------------


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevIdpServer]:
    with DevIdp(tmp_path / "keys").serve() as server:
        yield server


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def http(url: str, data: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    body = urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


AUTHORIZE = {
    "response_type": "code", "client_id": "approvals", "state": "st-1", "nonce": "n-1",
    "redirect_uri": "http://127.0.0.1:9/callback", "code_challenge": s256("v" * 50),
    "code_challenge_method": "S256", "scope": "openid",
}  # fmt: skip


def test_dev_idp_discovery_names_the_code_flow_endpoints(dev_server: DevIdpServer) -> None:
    _, _, body = http(dev_server.url + "/.well-known/openid-configuration")
    discovery = json.loads(body)
    assert discovery["authorization_endpoint"] == dev_server.url + "/authorize"
    assert discovery["token_endpoint"] == dev_server.url + "/token"
    assert discovery["code_challenge_methods_supported"] == ["S256"]


def test_dev_idp_login_with_pkce(dev_server: DevIdpServer) -> None:
    status, _, page = http(f"{dev_server.url}/authorize?{urlencode(AUTHORIZE)}")
    assert status == 200 and b'id="sign-in"' in page and b'name="code_challenge"' in page
    without_pkce = {k: v for k, v in AUTHORIZE.items() if not k.startswith("code_challenge")}
    assert http(f"{dev_server.url}/authorize?{urlencode(without_pkce)}")[0] == 400

    status, headers, _ = http(dev_server.url + "/authorize", {**AUTHORIZE, "sub": "alice",
                                                              "groups": "sre, ops"})  # fmt: skip
    assert status == 302
    location = urlsplit(headers["Location"])
    assert location.netloc == "127.0.0.1:9" and location.path == "/callback"
    answer = {name: values[0] for name, values in parse_qs(location.query).items()}
    assert answer["state"] == "st-1"
    exchange = {
        "grant_type": "authorization_code", "code": answer["code"], "client_id": "approvals",
        "redirect_uri": AUTHORIZE["redirect_uri"],
    }  # fmt: skip
    status, _, body = http(dev_server.url + "/token", {**exchange, "code_verifier": "w" * 50})
    assert status == 400 and json.loads(body)["error"] == "invalid_grant"  # and the code is gone

    status, headers, _ = http(dev_server.url + "/authorize", {**AUTHORIZE, "sub": "alice",
                                                              "groups": "sre, ops"})  # fmt: skip
    code = parse_qs(urlsplit(headers["Location"]).query)["code"][0]
    status, _, body = http(dev_server.url + "/token",
                           {**exchange, "code": code, "code_verifier": "v" * 50})  # fmt: skip
    assert status == 200
    id_token = json.loads(body)["id_token"]
    validator = TokenValidator(
        [IssuerConfig(dev_server.url, ("approvals",), groups_claim="groups")]
    )
    validated = validator.validate(id_token)
    assert validated.subject == "alice" and validated.groups == {"sre", "ops"}
    assert validated.claims["nonce"] == "n-1"
    replay = http(dev_server.url + "/token", {**exchange, "code": code, "code_verifier": "v" * 50})
    assert replay[0] == 400  # a code is good once
    with pytest.raises(TokenError, match="wrong audience"):
        TokenValidator([IssuerConfig(dev_server.url, ("awsgate",))]).validate(id_token)


# -- the config section -------------------------------------------------------------------


def parse(approvals_section: Any, tmp_path: Path) -> config.GatewayConfig:
    raw = {
        "identity": {"issuers": [{"url": "http://127.0.0.1:5556/", "audience": "awsgate"}]},
        "approvals": approvals_section,
    }
    return config.parse(raw, tmp_path / "awsgate.yaml")


def test_approvals_config_defaults_and_values(tmp_path: Path) -> None:
    defaults = parse({}, tmp_path).approvals
    assert defaults.wait < 60  # below the SDKs' read timeout
    assert (defaults.webhooks, defaults.oidc, defaults.public_url) == ((), None, None)
    section = parse({
        "wait": 5, "grant_window": 60, "public_url": "https://gate.example/",
        "webhooks": [{"url": "https://hooks.example/x", "format": "slack"}],
        "oidc": {"client_id": "approvals", "client_secret_file": "secret.txt"},
    }, tmp_path).approvals  # fmt: skip
    assert (section.wait, section.grant_window, section.public_url) == (
        5.0, 60, "https://gate.example",
    )  # fmt: skip
    assert section.webhooks == (WebhookConfig("https://hooks.example/x", "slack"),)
    assert section.oidc is not None and section.oidc.issuer == "http://127.0.0.1:5556"
    assert section.oidc.client_secret_file == tmp_path / "secret.txt"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"wait": 0}, "approvals.wait"),
        ({"wait": "soon"}, "approvals.wait"),
        ({"hold": 1}, "approvals takes only"),
        ({"webhooks": [{"url": "ftp://x"}]}, "webhooks\\[0\\] needs an http"),
        ({"webhooks": [{"url": "https://x", "format": "teams"}]}, "format"),
        ({"oidc": {"client_id": "a", "issuer": "https://elsewhere"}}, "one of identity.issuers"),
        ({"oidc": {"issuer": "http://127.0.0.1:5556"}}, "needs a client_id"),
        ({"public_url": "gate"}, "public_url"),
    ],
)
def test_approvals_config_errors(section: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(section, tmp_path)
