"""The approval page's WSGI application: login through the dev IdP, forms, API, headers."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from wsgiref.util import setup_testing_defaults

import pytest
from sqlalchemy import Engine

from addons import config, web
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.context import Decision, Operation, Principal
from addons.store import approvals
from addons.store.db import migrate, open_engine

BASE = "http://127.0.0.1:9"
CLIENT_ID = "approvals-page"


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[tuple[DevIdp, DevIdpServer]]:
    dev = DevIdp(tmp_path / "keys")
    with dev.serve() as server:
        yield dev, server


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    engine = open_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def site(
    tmp_path: Path, idp: tuple[DevIdp, DevIdpServer], engine: Engine
) -> Iterator[web.ApprovalSite]:
    raw = {
        "identity": {
            "issuers": [{"url": idp[1].url, "audience": "awsgate", "groups_claim": "groups"}]
        },
        "approvals": {"public_url": BASE, "oidc": {"client_id": CLIENT_ID}},
    }
    app = web.ApprovalSite(config.parse(raw, tmp_path / "awsgate.yaml"), engine, BASE)
    yield app
    app.notifier.close(timeout=1)


def held(engine: Engine, bucket: str = "logs", subject: str = "agent-1", **params: Any) -> str:
    principal = Principal("http://agents", subject, frozenset({"agents"}))
    operation = Operation(
        "s3", "DeleteBucket", "us-east-1", "s3", "rest-xml", {"Bucket": bucket, **params},
        [f"arn:aws:s3:::{bucket}"],
    )  # fmt: skip
    decision = Decision("review", "deletes-need-review", "held", ("group:sre",))
    call = approvals.held_call("req-1", principal, operation, decision, operation.params)
    admission = approvals.admit(
        engine, call, expire=timedelta(hours=1), holder="gw", hold=timedelta(seconds=30)
    )
    return admission.approval.id


class Browser:
    """Drives the WSGI app like a browser: keeps the cookie, never follows redirects itself."""

    def __init__(self, app: web.ApprovalSite) -> None:
        self.app = app
        self.cookie = ""

    def request(
        self, method: str, target: str, form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None, body: bytes | None = None,
    ) -> tuple[int, dict[str, str], str]:  # fmt: skip
        path, _, query = target.partition("?")
        data = body if body is not None else urlencode(form).encode() if form else b""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data),
        }  # fmt: skip
        if form is not None:
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        if self.cookie:
            environ["HTTP_COOKIE"] = self.cookie
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        setup_testing_defaults(environ)
        answer: dict[str, Any] = {}

        def start_response(status: str, header_list: list[tuple[str, str]]) -> None:
            answer["status"] = int(status.split()[0])
            answer["headers"] = dict(header_list)

        text = b"".join(self.app(environ, start_response)).decode()
        cookie = answer["headers"].get("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return answer["status"], answer["headers"], text

    def log_in(self, idp_url: str, subject: str, groups: str) -> None:
        status, headers, _ = self.request("GET", "/approvals")
        assert status == 303 and headers["Location"].startswith("/login?next=")
        status, headers, _ = self.request("GET", headers["Location"])
        authorize = urlsplit(headers["Location"])
        assert f"{authorize.scheme}://{authorize.netloc}" == idp_url
        params = {key: values[0] for key, values in parse_qs(authorize.query).items()}
        assert params["code_challenge_method"] == "S256" and params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == f"{BASE}/callback" and params["nonce"]
        # What the browser does at the dev IdP: submit its sign-in form.
        signed_in = idp_post(f"{idp_url}/authorize", {**params, "sub": subject, "groups": groups})
        callback = urlsplit(signed_in)
        status, headers, _ = self.request("GET", f"/callback?{callback.query}")
        assert status == 303 and headers["Location"] == "/approvals", headers


def idp_post(url: str, form: dict[str, str]) -> str:
    """POST the sign-in form; returns where the IdP redirects (the page's callback)."""

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    request = urllib.request.Request(url, data=urlencode(form).encode())
    try:
        urllib.request.build_opener(Keep).open(request, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 302
        return exc.headers["Location"]
    raise AssertionError("the IdP did not redirect")


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    return page.split(marker, 1)[1].split('"', 1)[0]


def test_login_with_pkce_then_approve_from_the_page(
    site: web.ApprovalSite, idp: tuple[DevIdp, DevIdpServer], engine: Engine
) -> None:
    approval_id = held(engine)
    browser = Browser(site)
    browser.log_in(idp[1].url, "alice", "sre")
    status, headers, page = browser.request("GET", "/approvals")
    assert status == 200 and approval_id in page and 'id="who">sub:alice<' in page
    assert (
        headers["X-Frame-Options"] == "DENY"
        and "frame-ancestors 'none'" in (headers["Content-Security-Policy"])
    )
    assert "HttpOnly" in site._cookie("x") and "SameSite=Lax" in site._cookie("x")
    status, _, detail = browser.request("GET", f"/approvals/{approval_id}")
    assert 'id="approve"' in detail
    form = {"decision": "approve", "reason": "go", "window": ""}
    # Without the form's token (a cross-site post), nothing is decided.
    assert browser.request("POST", f"/approvals/{approval_id}/decision", form)[0] == 403
    # A token that is not even ASCII is just as wrong (not a server error).
    forged = {**form, "csrf": "\u00e9t\u00e9"}
    assert browser.request("POST", f"/approvals/{approval_id}/decision", forged)[0] == 403
    assert approvals.get(engine, approval_id).status == "pending"  # type: ignore[union-attr]
    status, headers, _ = browser.request(
        "POST", f"/approvals/{approval_id}/decision", {**form, "csrf": csrf_of(detail)}
    )
    assert status == 303 and headers["Location"].endswith("?note=approved")
    decided = approvals.get(engine, approval_id)
    assert decided is not None
    assert (decided.status, decided.decided_by, decided.decided_via) == (
        "approved", "sub:alice", "web",
    )  # fmt: skip


def test_a_non_approver_gets_no_buttons_and_cannot_post(
    site: web.ApprovalSite, idp: tuple[DevIdp, DevIdpServer], engine: Engine
) -> None:
    approval_id = held(engine)
    browser = Browser(site)
    browser.log_in(idp[1].url, "bob", "dev")
    _, _, detail = browser.request("GET", f"/approvals/{approval_id}")
    assert 'id="approve"' not in detail and "sub:bob is not an approver" in detail
    _, _, listing = browser.request("GET", "/approvals")
    form = {"decision": "approve", "reason": "x", "csrf": csrf_of_page(listing, browser)}
    status, headers, _ = browser.request("POST", f"/approvals/{approval_id}/decision", form)
    assert status == 303 and "not%20an%20approver" in headers["Location"]
    assert approvals.get(engine, approval_id).status == "pending"  # type: ignore[union-attr]


def csrf_of_page(_page: str, browser: Browser) -> str:
    """The session's form token (a non-approver's page has no form to read it from)."""
    session = browser.cookie.partition("=")[2]
    return browser.app._logins[session].csrf


def test_pages_escape_what_agents_send(
    site: web.ApprovalSite, idp: tuple[DevIdp, DevIdpServer], engine: Engine
) -> None:
    approval_id = held(engine, ExpectedBucketOwner="<script>alert(1)</script>")
    browser = Browser(site)
    browser.log_in(idp[1].url, "alice", "sre")
    _, _, detail = browser.request("GET", f"/approvals/{approval_id}")
    assert "<script>alert" not in detail and "&lt;script&gt;alert(1)" in detail


def test_login_rejects_unknown_state_and_foreign_next(
    site: web.ApprovalSite, idp: tuple[DevIdp, DevIdpServer]
) -> None:
    browser = Browser(site)
    assert browser.request("GET", "/callback?code=x&state=forged")[0] == 403
    for target in (
        "https://evil.example/",
        "//evil.example/x",
        "approvals",
        "/\\evil.example/phish",  # browsers read the backslash as a slash
        "/approvals\r\nSet-Cookie: awsgate_session=attacker",  # a header of its own
        "/\tevil",
    ):
        assert web._local_path(target) == "/approvals"
    assert web._local_path("/approvals/apr-1?note=x") == "/approvals/apr-1?note=x"


def test_api_needs_a_token_and_decides_as_its_holder(
    site: web.ApprovalSite, idp: tuple[DevIdp, DevIdpServer], engine: Engine
) -> None:
    dev, server = idp
    approval_id = held(engine)
    browser = Browser(site)
    status, _, body = browser.request("GET", "/api/approvals")
    assert status == 401 and "Bearer" in json.loads(body)["error"]
    alice = {"Authorization": f"Bearer {dev.token('alice', ['sre'], issuer=server.url)}"}
    bob = {"Authorization": f"Bearer {dev.token('bob', ['dev'], issuer=server.url)}"}
    status, _, body = browser.request("GET", "/api/approvals?status=pending", headers=alice)
    assert status == 200 and [item["id"] for item in json.loads(body)] == [approval_id]
    assert browser.request("GET", "/api/approvals?status=bogus", headers=alice)[0] == 400
    assert browser.request("GET", "/api/approvals/apr-000000000000", headers=alice)[0] == 404
    path = f"/api/approvals/{approval_id}/approve"
    payload = json.dumps({"reason": "fine", "window": "1h"}).encode()
    status, _, body = browser.request("POST", path, headers=bob, body=payload)
    assert status == 403 and "not an approver" in json.loads(body)["error"]
    bad_window = json.dumps({"reason": "fine", "window": "forever"}).encode()
    assert browser.request("POST", path, headers=alice, body=bad_window)[0] == 400
    status, _, body = browser.request("POST", path, headers=alice, body=payload)
    assert status == 200 and json.loads(body)["status"] == "approved"
    expired_token = {"Authorization": "Bearer " + dev.token("alice", ["sre"], ttl=-600,
                                                            issuer=server.url)}  # fmt: skip
    assert browser.request("GET", "/api/approvals", headers=expired_token)[0] == 401
