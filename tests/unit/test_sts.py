"""The STS wire shapes the gateway answers itself (addons.auth.sts).

Responses are checked with botocore's own query parser, and boto3 (client
call and the web identity credential provider) talks to a tiny loopback
server that answers with ``answer_web_identity``, validating tokens from the
dev IdP served on loopback too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import boto3
import botocore.exceptions
import botocore.parsers
import pytest
from botocore.config import Config

from addons.auth import sts
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.auth.oidc import TokenError, TokenValidator, token_session_id
from addons.auth.sessions import DurationError, MintedCredentials, SessionMinter
from addons.aws import models
from addons.config import IssuerConfig
from addons.context import Principal

ROLE_ARN = "arn:aws:iam::123456789012:role/ci/deployer"
KEY = b"k" * 32
NOW = 1_800_000_000


def parse(status: int, body: bytes, operation: str = "AssumeRoleWithWebIdentity") -> dict[str, Any]:
    shape = models.service_model("sts").operation_model(operation).output_shape
    response = {"status_code": status, "headers": {}, "body": body}
    return botocore.parsers.create_parser("query").parse(response, shape)


def params(**overrides: str) -> dict[str, str]:
    values = {
        "Action": "AssumeRoleWithWebIdentity",
        "Version": "2011-06-15",
        "RoleArn": ROLE_ARN,
        "RoleSessionName": "ci-run-42",
        "WebIdentityToken": "header.payload.signature",
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value != "-"}


# -- request parsing -----------------------------------------------------------


def test_params_from_body_and_query() -> None:
    body = b"Action=AssumeRoleWithWebIdentity&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&A="
    assert sts.parse_params(body, "Version=2011-06-15") == {
        "Version": "2011-06-15",
        "Action": "AssumeRoleWithWebIdentity",
        "RoleArn": "arn:aws:iam::1:role/x",
        "A": "",
    }
    with pytest.raises(sts.StsError):
        sts.parse_params(b"\xff\xfe")


def test_web_identity_request_parsed() -> None:
    request = sts.parse_web_identity(params(DurationSeconds="1800"))
    assert (request.role_arn, request.role_session_name, request.duration_seconds) == (
        ROLE_ARN,
        "ci-run-42",
        1800,
    )
    assert request.role_name == "deployer"
    assert "header.payload" not in repr(request)
    assert sts.parse_web_identity(params()).duration_seconds is None


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"Action": "AssumeRole"}, "InvalidAction", "only AssumeRoleWithWebIdentity"),
        ({"RoleArn": "-"}, "ValidationError", "Value null at 'roleArn'"),
        ({"RoleArn": "-", "WebIdentityToken": "-"}, "ValidationError", "2 validation errors"),
        ({"RoleSessionName": "a b"}, "ValidationError", "'roleSessionName'"),
        ({"RoleSessionName": "x"}, "ValidationError", "'roleSessionName'"),
        ({"RoleSessionName": "s\u00e9ance"}, "ValidationError", "'roleSessionName'"),
        ({"RoleArn": "arn:aws:iam::123456789012:user/bob"}, "ValidationError", "ARN is invalid"),
        ({"WebIdentityToken": "abc"}, "ValidationError", "'webIdentityToken'"),
        ({"DurationSeconds": "12h"}, "ValidationError", "'durationSeconds'"),
    ],
)
def test_invalid_requests_refused(overrides: dict[str, str], code: str, message: str) -> None:
    with pytest.raises(sts.StsError) as info:
        sts.parse_web_identity(params(**overrides))
    assert info.value.code == code
    assert info.value.status == 400
    assert message in info.value.message


@pytest.mark.parametrize(
    ("arn", "name"),
    [
        ("arn:aws:iam::123456789012:role/deployer", "deployer"),
        ("arn:aws:iam::123456789012:role/path/to/deploy.er@x", "deploy.er@x"),
        ("arn:aws-us-gov:iam::123456789012:role/ci", "ci"),
        ("arn:aws-cn:iam::123456789012:role/a/b/c", "c"),
    ],
)
def test_role_name_from_arn(arn: str, name: str) -> None:
    assert sts.role_name_from_arn(arn) == name


@pytest.mark.parametrize(
    "arn",
    [
        "deployer",
        "",
        "arn:aws:iam::123456789012:user/deployer",
        "arn:aws:iam::12345:role/deployer",
        "arn:aws:sts::123456789012:assumed-role/deployer/x",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:iam::123456789012:role/bad name",
        "arn:aws:iam::123456789012:role/x\n",
        "arn:aws:iam::123456789012:role/d\u00e9ployer",
        "arn:aws:iam::123456789012:role/" + "x" * 65,
    ],
)
def test_role_name_from_garbage_refused(arn: str) -> None:
    with pytest.raises(ValueError):
        sts.role_name_from_arn(arn)


# -- responses as botocore reads them ------------------------------------------------


def credentials() -> MintedCredentials:
    return SessionMinter(KEY).mint(
        issuer="https://idp.example",
        subject="agent",
        groups=["g"],
        role="deployer",
        duration=3600,
        now=NOW,
    )


def test_response_parsed_by_botocore() -> None:
    minted = credentials()
    request = sts.parse_web_identity(params())
    body = sts.render_response(
        request,
        minted,
        subject="repo:acme/infra:ref:refs/heads/main",
        provider="https://token.actions.githubusercontent.com",
        audience="sts.amazonaws.com",
        request_id="req-1",
        source_identity="bob",
    )
    parsed = parse(200, body)
    assert parsed["Credentials"] == {
        "AccessKeyId": minted.access_key_id,
        "SecretAccessKey": minted.secret_access_key,
        "SessionToken": minted.session_token,
        "Expiration": datetime.fromtimestamp(NOW + 3600, UTC),
    }
    assert parsed["SubjectFromWebIdentityToken"] == "repo:acme/infra:ref:refs/heads/main"
    assert parsed["AssumedRoleUser"]["Arn"] == (
        "arn:aws:sts::123456789012:assumed-role/deployer/ci-run-42"
    )
    assert parsed["AssumedRoleUser"]["AssumedRoleId"].endswith(":ci-run-42")
    assert parsed["AssumedRoleUser"]["AssumedRoleId"].startswith("AROA")
    assert parsed["Provider"] == "https://token.actions.githubusercontent.com"
    assert parsed["Audience"] == "sts.amazonaws.com"
    assert parsed["SourceIdentity"] == "bob"
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"


def test_response_escapes_xml() -> None:
    body = sts.render_response(
        sts.parse_web_identity(params()),
        credentials(),
        subject="a<b>&c",
        provider="p",
        audience="aud",
        request_id="r",
    )
    assert parse(200, body)["SubjectFromWebIdentityToken"] == "a<b>&c"


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("token expired", "ExpiredTokenException"),
        ("issuer unreachable", "IDPCommunicationError"),
        ("bad signature", "InvalidIdentityToken"),
        ("wrong audience", "InvalidIdentityToken"),
    ],
)
def test_token_errors_parsed_by_botocore(reason: str, code: str) -> None:
    response = sts.token_error(TokenError(reason)).response("req-2")
    assert response.status == 400
    parsed = parse(response.status, response.body)
    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == f"awsgate: {reason}"
    assert parsed["ResponseMetadata"]["RequestId"] == "req-2"


def test_access_denied_and_duration_errors() -> None:
    denied = sts.access_denied("awsgate: rule ci-roles: role not allowed").response("r")
    assert denied.status == 403
    assert parse(403, denied.body)["Error"]["Code"] == "AccessDenied"
    invalid = sts.duration_error(DurationError("too short")).response("r")
    assert (invalid.status, parse(400, invalid.body)["Error"]["Code"]) == (400, "ValidationError")


# -- the whole exchange over loopback: real boto3, real dev IdP --------------------


class FakeSts:
    """A loopback STS stand-in answering AssumeRoleWithWebIdentity like the gateway."""

    def __init__(self, validator: TokenValidator, minter: SessionMinter) -> None:
        self.validator = validator
        self.minter = minter
        self.denied_roles: set[str] = set()
        self.answers: list[sts.StsResponse] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def _authorize(self, principal: Principal) -> str | None:
        if principal.role in self.denied_roles:
            return f"awsgate: role {principal.role} is not allowed for {principal.name}"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = sts.answer_web_identity(
                    sts.parse_params(body),
                    validator=fake.validator,
                    minter=fake.minter,
                    max_session=7200,
                    request_id=str(uuid.uuid4()),
                    authorize=fake._authorize,
                )
                fake.answers.append(answer)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[tuple[DevIdp, DevIdpServer]]:
    idp = DevIdp(tmp_path / "keys")
    with idp.serve() as server:
        yield idp, server


@pytest.fixture
def fake_sts(idp: tuple[DevIdp, DevIdpServer]) -> Iterator[FakeSts]:
    issuer = IssuerConfig(idp[1].url, ("sts.amazonaws.com",), groups_claim="groups")
    fake = FakeSts(TokenValidator([issuer]), SessionMinter(KEY))
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def client(url: str) -> Any:
    return boto3.client(
        "sts",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )


def test_boto3_assume_role_with_web_identity(
    idp: tuple[DevIdp, DevIdpServer], fake_sts: FakeSts
) -> None:
    token = idp[0].token("agent-7", groups=["deployers"], aud="sts.amazonaws.com")
    answer = client(fake_sts.url).assume_role_with_web_identity(
        RoleArn=ROLE_ARN,
        RoleSessionName="run-1",
        WebIdentityToken=token,
        DurationSeconds=1800,
    )
    minted = answer["Credentials"]
    info, secret = fake_sts.minter.open(minted["AccessKeyId"], minted["SessionToken"])
    assert secret == minted["SecretAccessKey"]
    assert (info.subject, info.role, info.groups) == ("agent-7", "deployer", {"deployers"})
    remaining = (minted["Expiration"] - datetime.now(UTC)).total_seconds()
    assert 1700 < remaining <= 1800
    assert answer["SubjectFromWebIdentityToken"] == "agent-7"
    assert answer["Provider"] == idp[1].url
    assert fake_sts.answers[-1].principal.session_id == info.session_id
    # Revoking the token's own session (tok-...) revokes what was minted from it.
    assert info.principal().parent_session_id == token_session_id(token)
    assert fake_sts.answers[-1].principal.parent_session_id == token_session_id(token)


@pytest.mark.parametrize(
    ("token_args", "call_args", "code"),
    [
        ({"ttl": -120}, {}, "ExpiredTokenException"),
        ({"aud": "someone-else"}, {}, "InvalidIdentityToken"),
        ({}, {"DurationSeconds": 600}, "ValidationError"),
        ({}, {"DurationSeconds": 7201}, "ValidationError"),
        ({}, {"RoleArn": "arn:aws:iam::123456789012:role/admin"}, "AccessDenied"),
    ],
)
def test_boto3_sees_sts_errors(
    idp: tuple[DevIdp, DevIdpServer],
    fake_sts: FakeSts,
    token_args: dict[str, Any],
    call_args: dict[str, Any],
    code: str,
) -> None:
    fake_sts.denied_roles.add("admin")
    token = idp[0].token("agent", **{"aud": "sts.amazonaws.com", **token_args})
    arguments = {
        "RoleArn": ROLE_ARN,
        "RoleSessionName": "run",
        "WebIdentityToken": token,
        **call_args,
    }
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client(fake_sts.url).assume_role_with_web_identity(**arguments)
    assert info.value.response["Error"]["Code"] == code
    assert token not in str(info.value)


def test_sdk_web_identity_provider_uses_minted_credentials(
    idp: tuple[DevIdp, DevIdpServer],
    fake_sts: FakeSts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(idp[0].token("agent-9", aud="sts.amazonaws.com"))
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "sdk-session")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_sts.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    frozen = boto3.Session().get_credentials().get_frozen_credentials()
    info, secret = fake_sts.minter.open(frozen.access_key, frozen.token)
    assert secret == frozen.secret_key
    assert (info.subject, info.role) == ("agent-9", "deployer")
