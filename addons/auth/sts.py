"""The STS call the gateway answers itself: AssumeRoleWithWebIdentity.

SDKs exchange their web identity token for credentials with this call; the
gateway parses it, and answers in STS's exact query-protocol XML so every SDK's
credential provider accepts the minted credentials as if STS had sent them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from addons.auth.oidc import TokenError, TokenValidator, token_session_id
from addons.auth.sessions import DurationError, MintedCredentials, SessionMinter, clamp_duration
from addons.aws import errors
from addons.context import Principal

ACTION = "AssumeRoleWithWebIdentity"
API_VERSION = "2011-06-15"
XML_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"

_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/"
    r"(?:[\x21-\x7e]{0,510}/)?(?P<name>[\w+=,.@-]{1,64})",
    re.ASCII,
)
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)


class StsError(Exception):
    """An STS error answer: code and HTTP status as STS uses them, a safe message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self, request_id: str) -> StsResponse:
        error = errors.render("query", self.status, self.code, self.message, request_id)
        return StsResponse(error.status, error.headers, error.body, error=self)


@dataclass(frozen=True)
class StsResponse:
    """What the gateway sends back: ``principal`` for a minted session, else ``error``."""

    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)
    principal: Principal | None = None
    error: StsError | None = None


def token_error(error: TokenError) -> StsError:
    """The STS error an SDK expects for a refused identity token.

    ``IDPCommunicationError`` is the one botocore retries, which fits an issuer
    that could not be reached.
    """
    message = f"awsgate: {error.reason}"
    if error.reason == "token expired":
        return StsError("ExpiredTokenException", message)
    if error.reason == "issuer unreachable":
        return StsError("IDPCommunicationError", message)
    return StsError("InvalidIdentityToken", message)


def duration_error(error: DurationError) -> StsError:
    return StsError(error.code, str(error))


def access_denied(message: str) -> StsError:
    """A policy refusal of the role; ``message`` must start with ``awsgate:``."""
    return StsError("AccessDenied", message, 403)


@dataclass(frozen=True)
class WebIdentityRequest:
    role_arn: str
    role_session_name: str
    web_identity_token: str = field(repr=False)
    duration_seconds: int | None = None

    @property
    def role_name(self) -> str:
        return role_name_from_arn(self.role_arn)


def parse_params(body: bytes | str, query: str = "") -> dict[str, str]:
    """A query-protocol request's parameters, from the query string and a form body."""
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError as exc:
            raise StsError("MalformedInput", "awsgate: the request body is not UTF-8") from exc
    return dict(parse_qsl(query, keep_blank_values=True)) | dict(
        parse_qsl(body, keep_blank_values=True)
    )


def parse_web_identity(params: Mapping[str, str]) -> WebIdentityRequest:
    """Validate AssumeRoleWithWebIdentity's parameters as STS does; raises ``StsError``."""
    if params.get("Action") != ACTION:
        raise StsError("InvalidAction", "awsgate: only AssumeRoleWithWebIdentity is answered here")
    missing = [name for name in ("RoleArn", "RoleSessionName", "WebIdentityToken")
               if not params.get(name)]
    if missing:
        raise StsError("ValidationError", _validation(
            [f"Value null at '{_camel(name)}' failed to satisfy constraint: Member must not be null"
             for name in missing]))
    role_arn, session_name = params["RoleArn"], params["RoleSessionName"]
    if not _SESSION_NAME.fullmatch(session_name):
        raise StsError("ValidationError", _validation([
            f"Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: Member "
            r"must have length between 2 and 64 and satisfy regular expression pattern: [\w+=,.@-]*"
        ]))
    if not _ROLE_ARN.fullmatch(role_arn):
        raise StsError("ValidationError", "Request ARN is invalid")
    token = params["WebIdentityToken"]
    if not 4 <= len(token) <= 20000:
        raise StsError("ValidationError", _validation([
            "Value at 'webIdentityToken' failed to satisfy constraint: Member must have length "
            "between 4 and 20000"]))
    duration = params.get("DurationSeconds")
    if duration is not None and not (duration.isascii() and duration.isdigit()):
        raise StsError("ValidationError", _validation([
            f"Value '{duration[:20]}' at 'durationSeconds' failed to satisfy constraint: Member "
            "must be an integer"]))
    return WebIdentityRequest(role_arn, session_name, token, int(duration) if duration else None)


def _camel(name: str) -> str:
    return name[0].lower() + name[1:]


def _validation(problems: list[str]) -> str:
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(problems)


def role_name_from_arn(arn: str) -> str:
    """``arn:aws:iam::123456789012:role/path/name`` -> ``name``; ValueError otherwise."""
    match = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise ValueError("not an IAM role ARN")
    return match["name"]


def assumed_role(role_arn: str, session_name: str) -> tuple[str, str]:
    """The AssumedRoleId and Arn STS would report for this role and session name."""
    match = _ROLE_ARN.fullmatch(role_arn)
    if match is None:
        raise ValueError("not an IAM role ARN")
    digest = base64.b32encode(hashlib.sha256(role_arn.encode()).digest()).decode()
    role_id = f"AROA{digest[:17]}:{session_name}"
    arn = (f"arn:{match['partition']}:sts::{match['account']}:assumed-role/"
           f"{match['name']}/{session_name}")
    return role_id, arn


def render_response(
    request: WebIdentityRequest,
    credentials: MintedCredentials,
    *,
    subject: str,
    provider: str,
    audience: str,
    request_id: str,
    source_identity: str | None = None,
) -> bytes:
    """STS's AssumeRoleWithWebIdentityResponse XML for minted credentials."""
    role_id, role_arn = assumed_role(request.role_arn, request.role_session_name)
    expiration = credentials.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    source = (f"    <SourceIdentity>{escape(source_identity)}</SourceIdentity>\n"
              if source_identity else "")
    return (
        f'<AssumeRoleWithWebIdentityResponse xmlns="{XML_NAMESPACE}">\n'
        "  <AssumeRoleWithWebIdentityResult>\n"
        f"    <SubjectFromWebIdentityToken>{escape(subject)}</SubjectFromWebIdentityToken>\n"
        f"    <Audience>{escape(audience)}</Audience>\n"
        "    <AssumedRoleUser>\n"
        f"      <Arn>{escape(role_arn)}</Arn>\n"
        f"      <AssumedRoleId>{escape(role_id)}</AssumedRoleId>\n"
        "    </AssumedRoleUser>\n"
        "    <Credentials>\n"
        f"      <AccessKeyId>{credentials.access_key_id}</AccessKeyId>\n"
        f"      <SecretAccessKey>{escape(credentials.secret_access_key)}</SecretAccessKey>\n"
        f"      <SessionToken>{escape(credentials.session_token)}</SessionToken>\n"
        f"      <Expiration>{expiration}</Expiration>\n"
        "    </Credentials>\n"
        f"    <Provider>{escape(provider)}</Provider>\n"
        f"{source}"
        "  </AssumeRoleWithWebIdentityResult>\n"
        "  <ResponseMetadata>\n"
        f"    <RequestId>{escape(request_id)}</RequestId>\n"
        "  </ResponseMetadata>\n"
        "</AssumeRoleWithWebIdentityResponse>\n"
    ).encode()


def response_headers(request_id: str) -> dict[str, str]:
    return {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}


def answer_web_identity(
    params: Mapping[str, str],
    *,
    validator: TokenValidator,
    minter: SessionMinter,
    max_session: int,
    request_id: str,
    authorize: Callable[[Principal], str | None] | None = None,
    now: float | None = None,
) -> StsResponse:
    """Answer AssumeRoleWithWebIdentity as STS would, with gateway-minted credentials.

    ``authorize`` gets the principal (its role set from RoleArn) and returns None
    to allow or an ``awsgate:`` message to refuse with AccessDenied. May fetch
    issuer keys, so call it off the event loop unless ``validator.cached`` hits.
    """
    try:
        request = parse_web_identity(params)
        try:
            duration = clamp_duration(request.duration_seconds, max_session)
        except DurationError as exc:
            raise duration_error(exc) from exc
        try:
            token = validator.validate(request.web_identity_token, now)
        except TokenError as exc:
            raise token_error(exc) from exc
        parent = token_session_id(request.web_identity_token)
        principal = token.principal(role=request.role_name, parent_session_id=parent)
        denial = authorize(principal) if authorize else None
        if denial is not None:
            raise access_denied(denial)
    except StsError as exc:
        return exc.response(request_id)
    minted = minter.mint(
        issuer=principal.issuer,
        subject=principal.subject,
        groups=principal.groups,
        role=principal.role,
        duration=duration,
        claims=token.claims,
        parent_session_id=parent,
        now=now,
    )
    body = render_response(
        request, minted, subject=token.subject, provider=token.claims["iss"],
        audience=token.audience, request_id=request_id,
    )
    session_principal = token.principal(
        role=principal.role, session_id=minted.session_id, parent_session_id=parent
    )
    return StsResponse(200, response_headers(request_id), body, session_principal)
