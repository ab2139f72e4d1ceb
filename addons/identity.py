"""Identity: resolve every AWS request to a principal, or refuse it.

Two ways in. SDK-native: the agent's SDK calls sts:AssumeRoleWithWebIdentity,
which this addon answers itself (never forwarded) with gateway-minted session
credentials; later requests signed with them are verified (proof of
possession) before the signature is stripped. Proxy auth: the OIDC token
arrives as the proxy password on CONNECT. Anything else is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import weakref
from collections.abc import Set
from datetime import UTC, datetime

from mitmproxy import connection, exceptions, http

from addons import settings
from addons.auth import oidc, sessions, sts
from addons.aws import endpoints, sigv4
from addons.context import GateContext, Principal, Refusal
from addons.hooks import RequestStage, deny, fail_closed, split_path

PROXY_USER = "awsgate"


def proxy_token(header: str | None) -> str | None:
    """The OIDC token in ``Proxy-Authorization: Basic base64(awsgate:TOKEN)``, if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user == PROXY_USER and password else None


def is_web_identity_call(flow: http.HTTPFlow) -> bool:
    endpoint = endpoints.classify_host(flow.request.host)
    if endpoint is None or endpoint.endpoint_prefix != "sts":
        return False
    body = flow.request.raw_content or b""
    return b"Action=AssumeRoleWithWebIdentity" in body or (
        "AssumeRoleWithWebIdentity" in flow.request.query.get("Action", "")
    )


class IdentityRefused(Exception):
    """The request carries no acceptable identity; the message is shown to the agent."""


class Identity(RequestStage):
    def __init__(self) -> None:
        self.validator: oidc.TokenValidator | None = None
        self.minter: sessions.SessionMinter | None = None
        self.max_session = 12 * 3600
        self.clock_skew = 300
        self.roles: frozenset[str] = frozenset()
        self.proxy_tokens: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary()
        )

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        identity = gateway_config.identity
        self.validator = oidc.TokenValidator(identity.issuers, clock_skew=identity.clock_skew)
        try:
            key = sessions.load_or_create_key(identity.session_key_file)
            self.minter = sessions.SessionMinter(key)
        except sessions.SessionKeyError as exc:
            raise exceptions.OptionsError(f"awsgate: identity.session_key_file: {exc}") from exc
        self.max_session = identity.max_session
        self.clock_skew = identity.clock_skew
        self.roles = frozenset(gateway_config.roles)

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        token = proxy_token(flow.request.headers.get("Proxy-Authorization"))
        if token is not None:
            self.proxy_tokens[flow.client_conn] = token

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        if not gate.streamed and is_web_identity_call(flow):
            await self._answer_web_identity(flow, gate)
            return
        try:
            gate.principal = await self._principal(flow, gate)
        except IdentityRefused as exc:
            deny(flow, f"awsgate: {exc}", kind="refused-identity")

    async def _principal(self, flow: http.HTTPFlow, gate: GateContext) -> Principal:
        request = flow.request
        try:
            auth = sigv4.parse_auth(request.headers, split_path(request)[1])
        except sigv4.SignatureError as exc:
            raise IdentityRefused(str(exc)) from exc
        if auth is not None:
            gate.credential_scope = (auth.service, auth.region)
        token = self.proxy_tokens.get(flow.client_conn) or proxy_token(
            request.headers.get("Proxy-Authorization")
        )
        request.headers.pop("Proxy-Authorization", None)
        if token is not None:
            validated = await self._validate(token)
            session_id = "tok-" + hashlib.sha256(token.encode()).hexdigest()[:16]
            return validated.principal(session_id=session_id)
        if auth is None:
            raise IdentityRefused(
                "no identity: sign with gateway-issued credentials or use proxy auth"
            )
        return self._session_principal(flow, gate, auth)

    def _session_principal(
        self, flow: http.HTTPFlow, gate: GateContext, auth: sigv4.AgentAuth
    ) -> Principal:
        assert self.minter is not None
        if not auth.security_token:
            raise IdentityRefused("credentials were not issued by this gateway")
        try:
            info, secret = self.minter.open(auth.access_key, auth.security_token)
        except sessions.SessionError as exc:
            raise IdentityRefused(str(exc)) from exc
        request = flow.request
        path, query = split_path(request)
        try:
            sigv4.verify(
                auth,
                secret,
                request.method,
                path,
                query,
                request.headers,
                None if gate.streamed else request.raw_content,
                datetime.now(UTC),
                max_skew=self.clock_skew,
            )
        except sigv4.SignatureError as exc:
            raise IdentityRefused(str(exc)) from exc
        return info.principal()

    async def _validate(self, token: str) -> oidc.ValidatedToken:
        assert self.validator is not None
        try:
            return self.validator.cached(token) or await asyncio.to_thread(
                self.validator.validate, token
            )
        except oidc.TokenError as exc:
            raise IdentityRefused(exc.reason) from exc

    async def _answer_web_identity(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        """Answer sts:AssumeRoleWithWebIdentity with minted credentials; never forwarded."""
        assert self.validator is not None and self.minter is not None
        try:
            params = sts.parse_params(flow.request.raw_content or b"", split_path(flow.request)[1])
        except sts.StsError as exc:
            answer = exc.response(gate.request_id)
        else:
            answer = await asyncio.to_thread(
                sts.answer_web_identity,
                params,
                validator=self.validator,
                minter=self.minter,
                max_session=self.max_session,
                request_id=gate.request_id,
                authorize=self._authorize_role,
            )
        gate.principal = answer.principal
        if answer.error is not None:
            error = answer.error
            gate.refusal = Refusal(error.status, error.code, error.message, "refused-identity")
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)

    def _authorize_role(self, principal: Principal) -> str | None:
        if self.roles and principal.role not in self.roles:
            return f"awsgate: unknown role {principal.role!r}"
        return None
