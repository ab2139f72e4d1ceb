"""The identity addon's own helpers: proxy tokens, web identity detection, admission."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from mitmproxy import http
from mitmproxy.test import tflow
from sqlalchemy import text

from addons import context
from addons.auth.oidc import TokenValidator
from addons.auth.sessions import MintedCredentials, SessionMinter
from addons.config import IssuerConfig
from addons.context import Principal
from addons.flowview import FlowView
from addons.identity import (
    REVOCATIONS_GRACE,
    Admission,
    Identity,
    RevocationsUnavailable,
    _TimedRevocationCache,
    is_web_identity_call,
    proxy_token,
    token_session_id,
)
from addons.store import db, revocations
from addons.store.revocations import Revocation

FORM = "application/x-www-form-urlencoded; charset=utf-8"


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic(b"awsgate:a.b.c"), "a.b.c"),
        ("basic " + base64.b64encode(b"awsgate:a.b.c").decode(), "a.b.c"),
        (basic(b"awsgate:"), None),
        (basic(b"someone:a.b.c"), None),
        (basic(b"awsgate"), None),
        ("Bearer a.b.c", None),
        ("Basic !!not-base64!!", None),
        (basic(b"awsgate:\xff\xfe"), None),
        ("Basic \u00e9t\u00e9", None),  # not ASCII: not base64 either
        ("", None),
        (None, None),
    ],
)
def test_proxy_token(header: str | None, expected: str | None) -> None:
    assert proxy_token(header) == expected


def test_token_session_id_is_stable_and_reveals_nothing() -> None:
    token = "header.payload.signature"
    assert token_session_id(token) == token_session_id(token)
    assert token_session_id(token) != token_session_id(token + "x")
    assert token_session_id(token).startswith("tok-")
    assert "payload" not in token_session_id(token)


def sts_flow(
    body: bytes, host: str = "sts.us-east-1.amazonaws.com", query: str = ""
) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.host = host
    flow.request.path = "/" + (f"?{query}" if query else "")
    flow.request.method = "POST"
    flow.request.content = body
    return flow


@pytest.mark.parametrize(
    ("body", "query", "expected"),
    [
        (b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15", "", True),
        (b"Version=2011-06-15&Action=AssumeRole%57ithWebIdentity", "", True),  # encoded
        (b"", "Action=AssumeRoleWithWebIdentity", True),  # in the query string
        (b"\xff\xfe", "", True),  # unparsable: answered (refused) here, not forwarded
        (b"Action=GetCallerIdentity&Version=2011-06-15", "", False),
        (b"Action=AssumeRole&Version=2011-06-15", "", False),
        (b"Action=GetCallerIdentity&Note=Action%3DAssumeRoleWithWebIdentity", "", False),
    ],
)
def test_is_web_identity_call(body: bytes, query: str, expected: bool) -> None:
    assert is_web_identity_call(sts_flow(body, query=query)) is expected


def test_web_identity_call_only_on_sts_hosts() -> None:
    body = b"Action=AssumeRoleWithWebIdentity"
    assert not is_web_identity_call(sts_flow(body, host="sqs.us-east-1.amazonaws.com"))
    assert not is_web_identity_call(sts_flow(body, host="example.com"))
    assert is_web_identity_call(sts_flow(body, host="sts.amazonaws.com"))


def test_proxy_authorization_is_stripped_from_every_flow() -> None:
    """Also from flows that are not the gateway's (plain HTTP to another host)."""
    identity = Identity()
    flow = tflow.tflow()
    flow.request.host = "pypi.example.org"
    flow.request.headers["Proxy-Authorization"] = basic(b"awsgate:a.b.c")
    assert identity.requestheaders(flow) is None  # not the gateway's: nothing to wait for
    assert "Proxy-Authorization" not in flow.request.headers
    assert context.find(flow) is None and flow.response is None


# -- admission ------------------------------------------------------------------------


@dataclass
class FakeCache:
    refreshed: float = 0.0
    revoked: dict[tuple[str | None, str | None], Revocation] = field(default_factory=dict)
    closed: bool = False

    def is_revoked(self, session_id: str | None, subject: str | None) -> Revocation | None:
        return self.revoked.get((session_id, None)) or self.revoked.get((None, subject))

    def close(self) -> None:
        self.closed = True


def principal(
    role: str | None = "agent", session: str | None = "s1", sub: str = "ci-1"
) -> Principal:
    return Principal(issuer="https://issuer.example", subject=sub, role=role, session_id=session)


def revocation(kind: str, target: str, reason: str) -> Revocation:
    return Revocation(1, kind, target, reason, datetime.now(UTC))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_any_role_without_configured_roles() -> None:
    admission = Admission(frozenset(), FakeCache(refreshed=100.0), clock=Clock())
    assert admission.refusal(principal(role="whatever")) is None
    assert admission.refusal(principal(role=None)) is None


def test_only_configured_roles() -> None:
    admission = Admission({"deployer"}, FakeCache(refreshed=100.0), clock=Clock())
    assert admission.refusal(principal(role="deployer")) is None
    assert admission.refusal(principal(role="admin")) == "awsgate: unknown role 'admin'"
    refused = admission.refusal(principal(role=None))
    assert refused is not None and refused.startswith("awsgate: no role")


def test_revoked_session_and_principal() -> None:
    cache = FakeCache(refreshed=100.0)
    cache.revoked[("s1", None)] = revocation(revocations.SESSION, "s1", "leaked")
    cache.revoked[(None, "ci-2")] = revocation(revocations.PRINCIPAL, "ci-*", "compromised")
    admission = Admission(frozenset(), cache, clock=Clock())
    assert admission.refusal(principal(session="s1")) == "awsgate: session revoked (leaked)"
    assert admission.refusal(principal(session="s2", sub="ci-2")) == (
        "awsgate: principal revoked (compromised)"
    )
    assert admission.refusal(principal(session="s2")) is None


def test_revoking_a_token_revokes_the_sessions_minted_from_it() -> None:
    """``awsgate revoke --session tok-...`` stops the token's credentials and its next
    exchange (whose principal carries the token's session as its parent)."""
    cache = FakeCache(refreshed=100.0)
    cache.revoked[("tok-1", None)] = revocation(revocations.SESSION, "tok-1", "leaked")
    admission = Admission(frozenset(), cache, clock=Clock())
    minted = dataclasses.replace(principal(session="s9"), parent_session_id="tok-1")
    assert admission.refusal(minted) == "awsgate: session revoked (leaked)"
    exchange = dataclasses.replace(principal(session=None), parent_session_id="tok-1")
    assert admission.refusal(exchange) == "awsgate: session revoked (leaked)"
    assert admission.refusal(dataclasses.replace(minted, parent_session_id="tok-2")) is None


def test_stale_revocation_list_refuses_after_the_grace_period() -> None:
    clock = Clock()
    admission = Admission(frozenset(), FakeCache(refreshed=clock.now), clock=clock)
    clock.now += REVOCATIONS_GRACE - 1
    assert admission.refusal(principal()) is None  # the last known list still holds
    clock.now += 2
    with pytest.raises(RevocationsUnavailable, match="revocation list could not be read"):
        admission.refusal(principal())


def test_role_refusal_needs_no_revocation_list() -> None:
    clock = Clock()
    admission = Admission({"deployer"}, FakeCache(refreshed=0.0), clock=clock)
    assert admission.refusal(principal(role="admin")) == "awsgate: unknown role 'admin'"


def test_timed_cache_tracks_successful_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    db.migrate(url)
    clock = Clock()
    cache = _TimedRevocationCache(url, refresh_seconds=3600, clock=clock)
    try:
        assert cache.refreshed == 100.0
        engine = db.open_engine(url)
        revocations.revoke_principal(
            engine, "sub:ci-*", "test", until=datetime.now(UTC) + timedelta(hours=1)
        )
        clock.now = 105.0
        cache.refresh()
        assert cache.refreshed == 105.0
        assert cache.is_revoked(None, "ci-7") is not None
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE revocations"))
        engine.dispose()
        clock.now = 110.0
        with pytest.raises(db.StoreUnavailable):
            cache.refresh()
        assert cache.refreshed == 105.0  # a failed read does not count
        assert cache.is_revoked(None, "ci-7") is not None  # the last known list holds
    finally:
        cache.close()


# -- session credentials and the issuers configured now ------------------------------


def session_call(identity: Identity, minted: MintedCredentials) -> http.HTTPFlow:
    """An sqs call signed by botocore with ``minted``, through the identity addon."""
    body = b"Action=ListQueues&Version=2012-11-05"
    host = "sqs.us-east-1.amazonaws.com"
    request = AWSRequest("POST", f"https://{host}/", data=body, headers={"Content-Type": FORM})
    credentials = Credentials(minted.access_key_id, minted.secret_access_key, minted.session_token)
    SigV4Auth(credentials, "sqs", "us-east-1").add_auth(request)
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", host, 443
    flow.request.method, flow.request.path = "POST", "/"
    flow.request.headers.clear()
    for name, value in request.prepare().headers.items():
        flow.request.headers[name] = value
    flow.request.headers["Host"] = host
    flow.request.content = body
    context.get(flow)
    FlowView().requestheaders(flow)

    async def run() -> None:
        for hook in (identity.requestheaders, identity.request):
            if (pending := hook(flow)) is not None:
                await pending

    asyncio.run(run())
    return flow


def test_sessions_of_an_issuer_removed_from_the_config_are_refused() -> None:
    minter = SessionMinter(b"k" * 32)
    minted = minter.mint(
        issuer="https://idp.example", subject="agent-1", groups=["admins"], role="deployer",
        duration=3600,
    )  # fmt: skip
    identity = Identity()
    identity.minter = minter
    identity.admission = Admission(frozenset(), FakeCache(refreshed=100.0), clock=Clock())
    identity.validator = TokenValidator([IssuerConfig("https://idp.example", ("awsgate",))])
    gate = context.get(session_call(identity, minted))
    assert gate.refusal is None and gate.principal is not None  # trusted: admitted
    # Reloaded without that issuer: its sessions go with it, before they expire.
    identity.validator = TokenValidator([IssuerConfig("https://other.example", ("awsgate",))])
    flow = session_call(identity, minted)
    refusal = context.get(flow).refusal
    assert refusal is not None and refusal.status == 403
    assert "issuer of these credentials is no longer trusted" in refusal.message
