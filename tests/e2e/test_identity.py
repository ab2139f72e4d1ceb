"""Non-human identity end to end: web identity, proxy auth, refusals, rotation, revocation.

Real clients (boto3, the AWS CLI) through a real mitmdump to moto with auth on.
Every refusal must be AWS-shaped, say why, leave moto untouched and be recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import Engine, select

from addons.auth import sessions
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.aws.credentials import session_name
from addons.store import db, revocations
from addons.store.models import calls
from tests.e2e import harness

pytestmark = pytest.mark.e2e

AUDIENCE = "awsgate"  # what the session gateway's issuer config expects
POLICIES = Path(__file__).parent / "policies"
REFUSED = "refused-identity"
WAIT = 15.0  # seconds: bound for anything the gateway picks up in the background
# The gateway's port accepts connections a few seconds before mitmdump serves
# them, so a raw client's first request may wait in the listen backlog.
RAW_TIMEOUT = 60


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for[T](probe: Callable[[], T | None], timeout: float = WAIT, every: float = 0.25) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"nothing after {timeout}s from {probe}")
        time.sleep(every)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_token(directory: Path, token: str) -> Path:
    path = directory / f"{uuid.uuid4().hex}.token"
    path.write_text(token)
    return path


def web_identity_env(
    gateway: harness.Gateway, directory: Path, token: str, role: str = "agent"
) -> dict[str, str]:
    env = harness.agent_env(gateway, token_file=write_token(directory, token))
    env["AWS_ROLE_ARN"] = f"arn:aws:iam::{harness.ACCOUNT}:role/{role}"
    return env


def proxy_env(gateway: harness.Gateway, token: str) -> dict[str, str]:
    """Proxy auth: the token is the proxy password; the AWS keys are dummies, ignored."""
    return harness.agent_env(
        gateway,
        proxy_token=token,
        AWS_ACCESS_KEY_ID="AKIADUMMYAGENTKEY000",
        AWS_SECRET_ACCESS_KEY="dummy-secret-ignored-by-the-gateway",
    )


def minted_credentials(env: Mapping[str, str]) -> Any:
    """The credentials an SDK gets from the gateway's AssumeRoleWithWebIdentity."""
    with harness.environment(env):
        return boto3.Session().get_credentials().get_frozen_credentials()


def client_with(gateway: harness.Gateway, service: str, **credentials: str) -> Any:
    """A boto3 client through the gateway with explicit (possibly forged) credentials."""
    with harness.environment(harness.agent_env(gateway)):
        return boto3.Session(**credentials).client(
            service, config=Config(retries={"max_attempts": 1})
        )


def error_of(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def refusal(call: Callable[[], Any]) -> ClientError | None:
    """The error ``call`` fails with, None if it succeeds."""
    try:
        call()
    except ClientError as exc:
        return exc
    return None


def message(error: ClientError) -> str:
    return error.response["Error"]["Message"]


def request_id(error: ClientError) -> str:
    return error.response["ResponseMetadata"]["RequestId"]


# -- the record store --------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(gateway: harness.Gateway) -> Iterator[Engine]:
    engine = db.open_engine(f"sqlite:///{gateway.workdir / 'awsgate.sqlite'}")
    yield engine
    engine.dispose()


def rows(engine: Engine, **where: Any) -> list[Mapping[str, Any]]:
    statement = select(calls)
    for column, value in where.items():
        statement = statement.where(calls.c[column] == value)
    with engine.connect() as connection:
        return [row._mapping for row in connection.execute(statement.order_by(calls.c.id))]


def finished(engine: Engine, count: int = 1, **where: Any) -> list[Mapping[str, Any]]:
    """At least ``count`` finished records matching ``where`` (records are written off
    the event loop, so they show up a moment after the call)."""

    def probe() -> list[Mapping[str, Any]] | None:
        found = [row for row in rows(engine, **where) if row["status"] is not None]
        return found if len(found) >= count else None

    return wait_for(probe)


def recorded(engine: Engine, rid: str) -> Mapping[str, Any]:
    """The finished record of one call (records are written off the event loop)."""

    def probe() -> Mapping[str, Any] | None:
        found = rows(engine, request_id=rid)
        return found[0] if found and found[0]["status"] is not None else None

    return wait_for(probe)


def assert_refusal_recorded(engine: Engine, error: ClientError, reason: str) -> None:
    row = recorded(engine, request_id(error))
    assert row["decision"] == REFUSED
    assert reason in row["message"]
    assert row["status"] == 403
    assert row["upstream_status"] is None


def bucket_exists(moto: harness.Moto, bucket: str) -> bool:
    return bucket in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]


# -- tokens that must be refused ---------------------------------------------------------


def claims_for(issuer: str, sub: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": sub,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "groups": ["agents"],
    }
    claims.update(overrides)
    return claims


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return ".".join(
        (b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), signature)
    )


def tampered(token: str) -> str:
    """A valid token with its payload changed (more groups) and the old signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["agents", "admins"]
    return ".".join((header, b64url(json.dumps(claims).encode()), signature))


def hs256_with_public_key(idp: DevIdp, issuer: str, sub: str) -> str:
    """The alg confusion attack: HMAC "signed" with the issuer's published key (PEM)."""
    entry = idp.current("RS256")
    public = next(key for key in idp.jwks()["keys"] if key["kid"] == entry.kid)
    pem = RSAKey.import_key(public).as_pem(private=False)
    signing_input = unsigned_token({"alg": "HS256", "kid": entry.kid}, claims_for(issuer, sub))
    signature = hmac.new(pem, signing_input.rstrip(".").encode(), hashlib.sha256).digest()
    return signing_input + b64url(signature)


def foreign_signature(idp: DevIdp, issuer: str, sub: str) -> str:
    """Right issuer, right kid, signed by somebody else's key."""
    forger = RSAKey.generate_key(2048)
    header = {"alg": "RS256", "kid": idp.current("RS256").kid}
    return jwt.encode(header, claims_for(issuer, sub), forger, algorithms=["RS256"])


BadToken = Callable[[DevIdp, str, str], str]

BAD_TOKENS: dict[str, tuple[BadToken, str]] = {
    "expired": (
        lambda idp, iss, sub: idp.token(sub, ["agents"], ttl=60, now=time.time() - 7200),
        "awsgate: token expired",
    ),
    "not-yet-valid": (
        lambda idp, iss, sub: idp.token(sub, ["agents"], now=time.time() + 3600),
        "awsgate: token not yet valid",
    ),
    "wrong-audience": (
        lambda idp, iss, sub: idp.token(sub, ["agents"], aud="someone-else"),
        "awsgate: wrong audience",
    ),
    "unknown-issuer": (
        lambda idp, iss, sub: idp.token(sub, ["agents"], issuer="http://127.0.0.1:9/other"),
        "awsgate: unknown issuer",
    ),
    "bad-signature": (foreign_signature, "awsgate: bad signature"),
    "alg-none": (
        lambda idp, iss, sub: unsigned_token(
            {"alg": "none", "kid": idp.current("RS256").kid}, claims_for(iss, sub)
        ),
        "awsgate: algorithm not allowed",
    ),
    "hs256-public-key": (hs256_with_public_key, "awsgate: algorithm not allowed"),
    "unknown-kid": (
        lambda idp, iss, sub: idp.token(sub, ["agents"], kid="no-such-key"),
        "awsgate: unknown key id",
    ),
    "tampered-payload": (
        lambda idp, iss, sub: tampered(idp.token(sub, ["agents"])),
        "awsgate: bad signature",
    ),
    "garbage": (lambda idp, iss, sub: "not-a-jwt", "awsgate: malformed token"),
}


# -- way in 1: SDK-native web identity ---------------------------------------------------


def test_web_identity_is_answered_by_the_gateway(
    gateway: harness.Gateway, dev_idp: DevIdp, moto: harness.Moto, store: Engine, tmp_path: Path
) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, no code change: STS is the gateway."""
    subject = unique("wi")
    token = dev_idp.token(subject, ["agents"])
    env = web_identity_env(gateway, tmp_path, token)
    identity = harness.agent_client(env, "sts").get_caller_identity()
    assert identity["Arn"] == moto.client("sts").get_caller_identity()["Arn"]

    minted, forwarded = both_rows = finished(store, 2, subject=subject)
    assert [row["operation"] for row in both_rows] == [
        "AssumeRoleWithWebIdentity",
        "GetCallerIdentity",
    ]
    assert minted["status"] == 200 and minted["upstream_status"] is None  # never forwarded
    assert minted["role"] == "agent" and minted["decision"] == "allow"
    assert minted["session_id"] == forwarded["session_id"]
    assert forwarded["upstream_status"] == 200
    assert b"WebIdentityToken=" in minted["request_body"]
    token_stored = token.rpartition(".")[2].encode() in minted["request_body"]
    assert not token_stored  # (a bool: a failure must not print the token)


def test_aws_cli_web_identity(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    subject = unique("wi-cli")
    env = web_identity_env(gateway, tmp_path, dev_idp.token(subject, ["agents"]))
    done = harness.aws_cli(env, "sts", "get-caller-identity", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"].endswith(":user/awsgate-gateway")
    minted = finished(store, subject=subject, operation="AssumeRoleWithWebIdentity")
    assert all(row["upstream_status"] is None for row in minted)


# -- way in 2: proxy auth ----------------------------------------------------------------


def test_proxy_auth_boto3(
    gateway: harness.Gateway, dev_idp: DevIdp, moto: harness.Moto, store: Engine
) -> None:
    subject = unique("proxy")
    env = proxy_env(gateway, dev_idp.token(subject, ["agents"]))
    assert (
        harness.agent_client(env, "sts")
        .get_caller_identity()["Arn"]
        .endswith(":user/awsgate-gateway")
    )
    bucket = unique("proxy-auth")
    harness.agent_client(env, "s3").create_bucket(Bucket=bucket)
    assert bucket_exists(moto, bucket)
    found = finished(store, 2, subject=subject)
    assert found[0]["session_id"].startswith("tok-")
    for row in found:
        names = [name.lower() for name, _ in row["request_headers"]]
        assert "proxy-authorization" not in names


def test_proxy_auth_aws_cli(gateway: harness.Gateway, dev_idp: DevIdp) -> None:
    env = proxy_env(gateway, dev_idp.token(unique("proxy-cli"), ["agents"]))
    done = harness.aws_cli(env, "sts", "get-caller-identity", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"].endswith(":user/awsgate-gateway")


def test_bad_proxy_token_aws_cli(gateway: harness.Gateway, dev_idp: DevIdp) -> None:
    env = proxy_env(gateway, dev_idp.token(unique("late"), ["agents"], now=time.time() - 7200))
    done = harness.aws_cli(env, "sts", "get-caller-identity")
    assert done.returncode != 0
    assert "AccessDenied" in done.stderr and "awsgate: token expired" in done.stderr


# -- refused tokens, both ways in --------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_refused_with_proxy_auth(
    case: str,
    gateway: harness.Gateway,
    dev_idp: DevIdp,
    idp: DevIdpServer,
    moto: harness.Moto,
    store: Engine,
) -> None:
    make, reason = BAD_TOKENS[case]
    env = proxy_env(gateway, make(dev_idp, idp.url, unique(case)))
    bucket = unique("refused")
    error = error_of(lambda: harness.agent_client(env, "s3").create_bucket(Bucket=bucket))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert reason in message(error)
    assert not bucket_exists(moto, bucket)
    assert_refusal_recorded(store, error, reason)


WEB_IDENTITY_CODES = {"expired": "ExpiredTokenException"}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_refused_with_web_identity(
    case: str,
    gateway: harness.Gateway,
    dev_idp: DevIdp,
    idp: DevIdpServer,
    store: Engine,
    tmp_path: Path,
) -> None:
    make, reason = BAD_TOKENS[case]
    env = web_identity_env(gateway, tmp_path, make(dev_idp, idp.url, unique(case)))
    error = error_of(lambda: harness.agent_client(env, "sts"))
    assert error.operation_name == "AssumeRoleWithWebIdentity"
    assert error.response["Error"]["Code"] == WEB_IDENTITY_CODES.get(case, "InvalidIdentityToken")
    assert reason in message(error)
    row = recorded(store, request_id(error))
    assert row["decision"] == REFUSED and reason in row["message"]
    assert row["upstream_status"] is None


def test_bad_token_aws_cli_web_identity(
    gateway: harness.Gateway, dev_idp: DevIdp, idp: DevIdpServer, tmp_path: Path
) -> None:
    env = web_identity_env(gateway, tmp_path, hs256_with_public_key(dev_idp, idp.url, "cli"))
    done = harness.aws_cli(env, "sts", "get-caller-identity")
    assert done.returncode != 0
    assert "InvalidIdentityToken" in done.stderr
    assert "awsgate: algorithm not allowed" in done.stderr


# -- refused session credentials ---------------------------------------------------------


@pytest.fixture(scope="module")
def session_minter(gateway: harness.Gateway) -> sessions.SessionMinter:
    """The gateway's own minter (its key file), to forge credentials it would accept."""
    return sessions.SessionMinter(sessions.load_or_create_key(gateway.workdir / "session.key"))


def forged(minter: sessions.SessionMinter, subject: str, **kwargs: Any) -> dict[str, str]:
    minted = minter.mint(
        issuer="http://forged.invalid",
        subject=subject,
        groups=["agents"],
        role="agent",
        duration=kwargs.pop("duration", 900),
        **kwargs,
    )
    return {
        "aws_access_key_id": minted.access_key_id,
        "aws_secret_access_key": minted.secret_access_key,
        "aws_session_token": minted.session_token,
    }


def real_credentials(gateway: harness.Gateway, dev_idp: DevIdp, directory: Path) -> Any:
    env = web_identity_env(gateway, directory, dev_idp.token(unique("real"), ["agents"]))
    return minted_credentials(env)


def test_wrong_session_secret(
    gateway: harness.Gateway, dev_idp: DevIdp, moto: harness.Moto, store: Engine, tmp_path: Path
) -> None:
    real = real_credentials(gateway, dev_idp, tmp_path)
    s3 = client_with(
        gateway,
        "s3",
        aws_access_key_id=real.access_key,
        aws_secret_access_key=real.secret_key[:-4] + "AAAA",
        aws_session_token=real.token,
    )
    bucket = unique("wrong-secret")
    error = error_of(lambda: s3.create_bucket(Bucket=bucket))
    assert "awsgate: The request signature we calculated does not match" in message(error)
    assert not bucket_exists(moto, bucket)
    assert_refusal_recorded(store, error, "signature")


def test_expired_session_replayed(
    gateway: harness.Gateway,
    session_minter: sessions.SessionMinter,
    moto: harness.Moto,
    store: Engine,
) -> None:
    """Genuine gateway credentials whose session ended an hour ago."""
    credentials = forged(session_minter, unique("replay"), now=time.time() - 3600 - 900)
    bucket = unique("replay")
    error = error_of(lambda: client_with(gateway, "s3", **credentials).create_bucket(Bucket=bucket))
    assert "awsgate: session expired" in message(error)
    assert not bucket_exists(moto, bucket)
    assert_refusal_recorded(store, error, "session expired")


def test_request_outside_clock_skew(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    """A signature made an hour ago (a captured request replayed) is refused."""
    real = real_credentials(gateway, dev_idp, tmp_path)
    sts = client_with(
        gateway,
        "sts",
        aws_access_key_id=real.access_key,
        aws_secret_access_key=real.secret_key,
        aws_session_token=real.token,
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with mock.patch("botocore.auth.get_current_datetime", return_value=an_hour_ago):
        error = error_of(sts.get_caller_identity)
    assert "awsgate: The difference between the request time and the current time" in message(error)
    assert_refusal_recorded(store, error, "request time")


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (
            {"aws_access_key_id": "AKIASTATICAGENTKEY00", "aws_secret_access_key": "x" * 40},
            "awsgate: credentials were not issued by this gateway",
        ),
        (
            {
                "aws_access_key_id": "ASIAFORGEDAGENTKEY00",
                "aws_secret_access_key": "x" * 40,
                "aws_session_token": b64url(b"\x01" + b"{}" + b"\0" * 32),
            },
            "awsgate: invalid session token",
        ),
    ],
    ids=["static-key", "forged-session-token"],
)
def test_foreign_credentials(
    credentials: dict[str, str], reason: str, gateway: harness.Gateway, store: Engine
) -> None:
    error = error_of(client_with(gateway, "sts", **credentials).get_caller_identity)
    assert reason in message(error)
    assert_refusal_recorded(store, error, reason)


def test_no_identity_at_all(gateway: harness.Gateway, moto: harness.Moto, store: Engine) -> None:
    s3 = harness.agent_client(harness.agent_env(gateway), "s3", signature_version=UNSIGNED)
    bucket = unique("anonymous")
    error = error_of(lambda: s3.create_bucket(Bucket=bucket))
    assert "awsgate: no identity" in message(error)
    assert not bucket_exists(moto, bucket)
    assert_refusal_recorded(store, error, "no identity")


def test_no_identity_aws_cli(gateway: harness.Gateway) -> None:
    done = harness.aws_cli(
        harness.agent_env(gateway), "sts", "get-caller-identity", "--no-sign-request"
    )
    assert done.returncode != 0
    assert "awsgate: no identity" in done.stderr


# -- holes -------------------------------------------------------------------------------


def test_proxy_token_wins_over_a_signature(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    """Minted credentials of one principal plus another's proxy token: the token decides."""
    signer = real_credentials(gateway, dev_idp, tmp_path)
    subject = unique("proxy-wins")
    env = proxy_env(gateway, dev_idp.token(subject, ["agents"]))
    env.update(
        AWS_ACCESS_KEY_ID=signer.access_key,
        AWS_SECRET_ACCESS_KEY=signer.secret_key,
        AWS_SESSION_TOKEN=signer.token,
    )
    harness.agent_client(env, "sts").get_caller_identity()
    (row,) = finished(store, subject=subject)
    assert row["session_id"].startswith("tok-")


class _HeaderRecorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({name.lower(): value for name, value in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"awsgate:{token}".encode()).decode()


def test_proxy_authorization_never_forwarded_to_other_hosts(
    gateway: harness.Gateway, dev_idp: DevIdp
) -> None:
    """Plain-HTTP proxying to a non-AWS host: the agent's token must not go along."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
        target = f"http://127.0.0.1:{server.server_address[1]}/pip"
        conn.request(
            "GET",
            target,
            headers={"Proxy-Authorization": basic(dev_idp.token("leaky", ["agents"]))},
        )
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"ok")
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert _HeaderRecorder.seen and "proxy-authorization" not in _HeaderRecorder.seen[-1]


def test_proxy_auth_on_plain_http_aws_request(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine
) -> None:
    """Absolute-form plain HTTP to an AWS name: the token on the request identifies it."""
    subject = unique("plain-http")
    body = "Action=GetCallerIdentity&Version=2011-06-15"
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
    conn.request(
        "POST",
        "http://sts.us-east-1.amazonaws.com/",
        body=body,
        headers={
            "Proxy-Authorization": basic(dev_idp.token(subject, ["agents"])),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    answer = conn.getresponse()
    text = answer.read()
    conn.close()
    assert answer.status == 200, text
    assert b":user/awsgate-gateway" in text
    (row,) = finished(store, subject=subject)
    assert row["upstream_status"] == 200
    assert "proxy-authorization" not in [name.lower() for name, _ in row["request_headers"]]

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
    conn.request(
        "POST",
        "http://sts.us-east-1.amazonaws.com/",
        body=body,
        headers={
            "Proxy-Authorization": basic("junk"),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    answer = conn.getresponse()
    assert answer.status == 403 and b"awsgate: malformed token" in answer.read()
    conn.close()


def answered_web_identity(conn: http.client.HTTPConnection) -> str:
    """The request id of the gateway's own AssumeRoleWithWebIdentity answer on ``conn``."""
    answer = conn.getresponse()
    text = answer.read()
    conn.close()
    answered = answer.status == 200 and b"<AssumeRoleWithWebIdentityResponse" in text
    assert answered  # (a bool: a failure must not print the minted credentials)
    return text.split(b"<RequestId>")[1].split(b"</RequestId>")[0].decode()


def test_encoded_web_identity_action_is_still_answered(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine
) -> None:
    """``AssumeRole%57ithWebIdentity`` is the same call to STS: answered, never forwarded."""
    token = dev_idp.token(unique("encoded"), ["agents"])
    body = (
        "Action=AssumeRole%57ithWebIdentity&Version=2011-06-15&RoleSessionName=x1"
        f"&RoleArn=arn%3Aaws%3Aiam%3A%3A{harness.ACCOUNT}%3Arole%2Fagent&WebIdentityToken={token}"
    )
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
    conn.request(
        "POST",
        "http://sts.us-east-1.amazonaws.com/",
        body=body,
        headers={
            "Proxy-Authorization": basic(token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    rid = answered_web_identity(conn)
    assert recorded(store, rid)["upstream_status"] is None


def test_web_identity_in_a_query_string_is_answered_and_its_token_not_kept(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine
) -> None:
    """STS takes its parameters in the query string too: the token stays out of the URL
    the record keeps (and out of the flow mitmweb would show)."""
    token = dev_idp.token(unique("by-get"), ["agents"])
    query = (
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleSessionName=x1"
        f"&RoleArn=arn%3Aaws%3Aiam%3A%3A{harness.ACCOUNT}%3Arole%2Fagent&WebIdentityToken={token}"
    )
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
    conn.request("GET", f"http://sts.us-east-1.amazonaws.com/?{query}")
    rid = answered_web_identity(conn)
    url = recorded(store, rid)["url"]
    token_kept = token.rpartition(".")[2] in url
    assert not token_kept and "WebIdentityToken=[redacted]" in url


# -- revocation --------------------------------------------------------------------------


def awsgate_revoke(gateway: harness.Gateway, *args: str) -> dict[str, Any]:
    """``awsgate revoke`` as an operator runs it, against the gateway's config and store."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "awsgate"),
            "revoke",
            "--config",
            str(gateway.config_path),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=harness.base_env(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_revoked_session_is_refused(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    subject = unique("revoke-session")
    token = dev_idp.token(subject, ["agents"])
    sts = harness.agent_client(web_identity_env(gateway, tmp_path, token), "sts")
    sts.get_caller_identity()
    (call,) = finished(store, subject=subject, operation="GetCallerIdentity")
    awsgate_revoke(gateway, "--session", call["session_id"], "--reason", "test: leaked credential")
    error = wait_for(lambda: refusal(sts.get_caller_identity))
    assert "awsgate: session revoked (test: leaked credential)" in message(error)
    assert_refusal_recorded(store, error, "session revoked")
    # Only that session: a new one for the same subject works.
    harness.agent_client(web_identity_env(gateway, tmp_path, token), "sts").get_caller_identity()


def test_revoked_token_session_stops_the_token_everywhere(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    """Revoking a proxy token's session (``tok-...``, as its records show) stops the
    token itself, the credentials minted from it, and its next web identity exchange."""
    subject = unique("revoke-token")
    token = dev_idp.token(subject, ["agents"])
    proxied = harness.agent_client(proxy_env(gateway, token), "sts")
    minted = harness.agent_client(web_identity_env(gateway, tmp_path, token), "sts")
    proxied.get_caller_identity()
    minted.get_caller_identity()
    token_session = next(
        row["session_id"]
        for row in finished(store, 2, subject=subject, operation="GetCallerIdentity")
        if row["session_id"].startswith("tok-")
    )
    awsgate_revoke(gateway, "--session", token_session, "--reason", "test: token leaked")
    for client in (proxied, minted):
        error = wait_for(lambda client=client: refusal(client.get_caller_identity))
        assert "awsgate: session revoked (test: token leaked)" in message(error)
    error = error_of(
        lambda: harness.agent_client(web_identity_env(gateway, tmp_path, token), "sts")
    )
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert "awsgate: session revoked (test: token leaked)" in message(error)
    # Another token of the same subject is not that session.
    other = dev_idp.token(subject, ["agents"])
    harness.agent_client(proxy_env(gateway, other), "sts").get_caller_identity()


def test_revoked_principal_is_refused_everywhere(
    gateway: harness.Gateway, dev_idp: DevIdp, store: Engine, tmp_path: Path
) -> None:
    subject = unique("revoke-principal")
    token = dev_idp.token(subject, ["agents"])
    web = harness.agent_client(web_identity_env(gateway, tmp_path, token), "sts")
    proxied = harness.agent_client(proxy_env(gateway, token), "sts")
    web.get_caller_identity()
    proxied.get_caller_identity()
    revocation = awsgate_revoke(
        gateway,
        "--principal",
        f"sub:{subject[:-4]}*",
        "--until",
        "1h",
        "--reason",
        "test: compromised",
    )
    try:
        for client in (web, proxied):
            error = wait_for(lambda client=client: refusal(client.get_caller_identity))
            assert "awsgate: principal revoked (test: compromised)" in message(error)
            assert_refusal_recorded(store, error, "principal revoked")
        # A fresh web identity exchange is refused by STS itself.
        error = error_of(
            lambda: harness.agent_client(
                web_identity_env(gateway, tmp_path, dev_idp.token(subject, ["agents"])), "sts"
            )
        )
        assert error.response["Error"]["Code"] == "AccessDenied"
        assert "awsgate: principal revoked (test: compromised)" in message(error)
        row = recorded(store, request_id(error))
        assert row["decision"] == REFUSED and row["subject"] == subject
    finally:
        revocations.lift(store, revocation["id"])
    # Lifted: accepted again within seconds.
    wait_for(lambda: None if refusal(proxied.get_caller_identity) else True)


# -- a gateway with upstream roles and a second issuer that rotates keys -----------------

DEPLOYER_UPSTREAM = f"arn:aws:iam::{harness.ACCOUNT}:role/deployer-upstream"


@pytest.fixture(scope="module")
def rotating_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdpServer]:
    server = DevIdp(tmp_path_factory.mktemp("rotating-idp")).serve("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def roles_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    moto: harness.Moto,
    idp: DevIdpServer,
    rotating_idp: DevIdpServer,
) -> Iterator[harness.Gateway]:
    iam = moto.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
                "Principal": {"AWS": moto.client("sts").get_caller_identity()["Arn"]},
            }
        ],
    }
    iam.create_role(RoleName="deployer-upstream", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName="deployer-upstream",
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    gw = harness.Gateway.configure(
        tmp_path_factory.mktemp("roles-gateway"),
        moto,
        {
            "policies": str(POLICIES / "base.yaml"),
            "identity": {
                "issuers": [
                    {"url": idp.url, "audience": AUDIENCE, "groups_claim": "groups"},
                    {"url": rotating_idp.url, "audience": AUDIENCE, "groups_claim": "groups"},
                ]
            },
            "roles": {"deployer": {"assume_role_arn": DEPLOYER_UPSTREAM}},
        },
    )
    gw.start(moto)
    try:
        yield gw
    finally:
        gw.stop()


def test_upstream_role_is_assumed_as_the_agent(
    roles_gateway: harness.Gateway, dev_idp: DevIdp, tmp_path: Path
) -> None:
    """The role selects upstream credentials; the session name is the agent's subject."""
    subject = f"repo:acme/app:ref:refs/heads/main#{uuid.uuid4().hex[:6]}"
    env = web_identity_env(
        roles_gateway, tmp_path, dev_idp.token(subject, ["agents"]), role="deployer"
    )
    arn = harness.agent_client(env, "sts").get_caller_identity()["Arn"]
    assert arn == (
        f"arn:aws:sts::{harness.ACCOUNT}:assumed-role/deployer-upstream/{session_name(subject)}"
    )
    done = harness.aws_cli(env, "sts", "get-caller-identity", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"] == arn


def test_unknown_role_is_refused(
    roles_gateway: harness.Gateway, dev_idp: DevIdp, tmp_path: Path
) -> None:
    env = web_identity_env(
        roles_gateway, tmp_path, dev_idp.token(unique("r"), ["agents"]), role="admin"
    )
    error = error_of(lambda: harness.agent_client(env, "sts"))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert "awsgate: unknown role 'admin'" in message(error)
    done = harness.aws_cli(env, "sts", "get-caller-identity")
    assert done.returncode != 0 and "awsgate: unknown role 'admin'" in done.stderr


def test_proxy_auth_without_role_is_refused_when_roles_are_configured(
    roles_gateway: harness.Gateway, dev_idp: DevIdp
) -> None:
    env = proxy_env(roles_gateway, dev_idp.token(unique("no-role"), ["agents"]))
    error = error_of(harness.agent_client(env, "sts").get_caller_identity)
    assert "awsgate: no role" in message(error)


def test_issuer_key_rotation_without_restart(
    roles_gateway: harness.Gateway, rotating_idp: DevIdpServer, tmp_path: Path
) -> None:
    keys = rotating_idp.idp

    def works(token: str) -> bool | None:
        env = web_identity_env(roles_gateway, tmp_path, token, role="deployer")
        try:
            harness.agent_client(env, "sts").get_caller_identity()
        except ClientError:
            return None
        return True

    worked = works(keys.token(unique("before"), ["agents"]))
    assert worked
    old_kid = keys.current().kid
    keys.rotate()
    assert keys.current().kid != old_kid
    # Picked up by the gateway's refetch on an unknown kid (rate-limited to seconds).
    wait_for(lambda: works(keys.token(unique("after"), ["agents"])), every=1.0)


def test_streamed_sts_request_is_refused(gateway: harness.Gateway, dev_idp: DevIdp) -> None:
    """A chunked STS body streams past the gateway unseen: it might be a web identity
    exchange, which must never be forwarded, so it is refused."""
    token = dev_idp.token(unique("streamed"), ["agents"])
    chunks = iter([b"Action=AssumeRoleWithWebIdentity", b"&Version=2011-06-15"])
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=RAW_TIMEOUT)
    conn.request(
        "POST",
        "http://sts.us-east-1.amazonaws.com/",
        body=chunks,
        encode_chunked=True,
        headers={
            "Proxy-Authorization": basic(token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    answer = conn.getresponse()
    text = answer.read()
    conn.close()
    assert answer.status == 403
    assert b"awsgate: STS requests must not be streamed" in text


# Encoded prefixes of what must never be logged: a JWT header ({"...), a minted
# session token (version byte + {"a":...), a proxy credential (awsgate:...).
SECRET_PREFIXES = ("eyJ", "AXsiYSI6", base64.b64encode(b"awsgate:").decode()[:10])


def test_no_token_in_the_gateway_logs(
    gateway: harness.Gateway, roles_gateway: harness.Gateway
) -> None:
    """Runs last: by now both gateways refused and accepted every kind of credential."""
    for gw in (gateway, roles_gateway):
        text = gw.log_text()
        leaked = [prefix for prefix in SECRET_PREFIXES if prefix in text]
        assert not leaked, f"{gw.log_path} holds credential material"
