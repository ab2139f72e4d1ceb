"""Identity: resolve every AWS request to a principal, or refuse it.

Two ways in. SDK-native: the agent's SDK calls sts:AssumeRoleWithWebIdentity,
which this addon answers itself (never forwarded) with gateway-minted session
credentials; later requests signed with them are verified (proof of
possession) before the signature is stripped. Proxy auth: the OIDC token
arrives as the proxy password on CONNECT (or, for plain-HTTP proxying, on the
request itself). Anything else is refused.

A resolved principal is then admitted only if its role is one the gateway
serves and neither its session nor its subject is revoked in the store.
"""

from __future__ import annotations

import asyncio
import base64
import time
import weakref
from collections.abc import Awaitable, Callable, Set
from datetime import UTC, datetime

from mitmproxy import connection, exceptions, http

from addons import settings
from addons.auth import oidc, sessions, sts
from addons.auth.oidc import token_session_id
from addons.aws import endpoints, sigv4
from addons.context import GateContext, Operation, Principal, Refusal
from addons.flowview import agent_request_head
from addons.hooks import RequestStage, deny, fail_closed, split_path
from addons.store import db, revocations

PROXY_USER = "awsgate"
REVOCATIONS_REFRESH = 2.0  # seconds between reads of the revocation list
# How long the last revocation list read stays trusted while the store cannot
# be read. Past it every call is refused: a revocation made meanwhile must not
# go unseen for long. (The recording addon refuses forwarded calls as soon as
# the store cannot be written anyway; this bounds the calls answered here.)
REVOCATIONS_GRACE = 30.0
# Unknown ``kid`` values may trigger a key refetch this often per issuer: short
# enough that an issuer's key rotation is picked up within seconds, long enough
# that junk key ids cannot make the gateway hammer the issuer.
KEY_REFETCH_INTERVAL = 5.0


def proxy_token(header: str | None) -> str | None:
    """The OIDC token in ``Proxy-Authorization: Basic base64(awsgate:TOKEN)``, if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII header value
        return None
    return password if user == PROXY_USER and password else None


def is_sts(flow: http.HTTPFlow) -> bool:
    endpoint = endpoints.classify_host(flow.request.host)
    return endpoint is not None and endpoint.endpoint_prefix == "sts"


def is_web_identity_call(flow: http.HTTPFlow) -> bool:
    """An STS request whose (decoded) Action is AssumeRoleWithWebIdentity.

    Decoded, not matched on bytes: ``Action=AssumeRole%57ithWebIdentity`` means
    the same to STS. A body that does not parse counts too, so it is answered
    (with an error) here rather than forwarded.
    """
    if not is_sts(flow):
        return False
    try:
        params = sts.parse_params(flow.request.raw_content or b"", split_path(flow.request)[1])
    except sts.StsError:
        return True
    return params.get("Action") == sts.ACTION


def web_identity_operation(flow: http.HTTPFlow, params: dict[str, str]) -> Operation:
    """The answered call as the record shows it; the token itself is left out."""
    endpoint = endpoints.classify_host(flow.request.host)
    assert endpoint is not None
    region = endpoint.region or endpoints.global_region(endpoint.partition)
    recorded = {
        name: params[name]
        for name in ("RoleArn", "RoleSessionName", "DurationSeconds")
        if name in params
    }
    return Operation("sts", sts.ACTION, region, "sts", "query", recorded)


class IdentityRefused(Exception):
    """The request carries no acceptable identity; the message is shown to the agent."""


class RevocationsUnavailable(Exception):
    """The revocation list has not been readable for too long; nothing is admitted."""


class _TimedRevocationCache(revocations.RevocationCache):
    """A revocation cache that also knows when it last read the store successfully."""

    def __init__(
        self, url: str, refresh_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.refreshed = clock()
        super().__init__(url, refresh_seconds=refresh_seconds)

    def refresh(self) -> None:
        super().refresh()
        self.refreshed = self._clock()


class Admission:
    """Who may pass once identified: served roles only, nothing revoked.

    ``cache`` is anything with ``is_revoked(session_id, subject)`` and a
    ``refreshed`` monotonic time; the store's ``RevocationCache`` in the gateway.
    """

    def __init__(
        self,
        roles: Set[str],
        cache: _TimedRevocationCache | None,
        grace: float = REVOCATIONS_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roles = frozenset(roles)
        self.cache = cache
        self.grace = grace
        self._clock = clock

    def refusal(self, principal: Principal) -> str | None:
        """None to admit, else why not (an ``awsgate:`` message).

        Raises ``RevocationsUnavailable`` when the list is too stale to trust.
        """
        if self.roles and principal.role not in self.roles:
            if principal.role is None:
                return (
                    "awsgate: no role: this gateway serves only its configured roles; "
                    "use web identity with AWS_ROLE_ARN"
                )
            return f"awsgate: unknown role {principal.role!r}"
        if self.cache is None:
            return None
        stale = self._clock() - self.cache.refreshed
        if stale > self.grace:
            raise RevocationsUnavailable(
                f"awsgate: the revocation list could not be read for {stale:.0f}s; refused"
            )
        revoked = self.cache.is_revoked(principal.session_id, principal.subject)
        if revoked is None and principal.parent_session_id is not None:
            revoked = self.cache.is_revoked(principal.parent_session_id, None)
        if revoked is None:
            return None
        what = "session" if revoked.kind == revocations.SESSION else "principal"
        return f"awsgate: {what} revoked ({revoked.reason})"

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class Identity(RequestStage):
    def __init__(self) -> None:
        self.validator: oidc.TokenValidator | None = None
        self.minter: sessions.SessionMinter | None = None
        self.admission = Admission(frozenset(), None)
        self.max_session = 12 * 3600
        self.clock_skew = 300
        # Tokens from CONNECT, for every request in the tunnel; and tokens taken
        # off plain-HTTP requests in requestheaders, for the request hook.
        self.proxy_tokens: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary()
        )
        self.request_tokens: weakref.WeakKeyDictionary[http.HTTPFlow, str] = (
            weakref.WeakKeyDictionary()
        )

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        identity = gateway_config.identity
        try:
            key = sessions.load_or_create_key(identity.session_key_file)
        except sessions.SessionKeyError as exc:
            raise exceptions.OptionsError(f"awsgate: identity.session_key_file: {exc}") from exc
        try:
            cache = _TimedRevocationCache(gateway_config.store, REVOCATIONS_REFRESH)
        except db.StoreUnavailable as exc:
            raise exceptions.OptionsError(f"awsgate: store: {exc}") from exc
        self.validator = oidc.TokenValidator(
            identity.issuers, clock_skew=identity.clock_skew, refetch_interval=KEY_REFETCH_INTERVAL
        )
        self.minter = sessions.SessionMinter(key)
        self.max_session = identity.max_session
        self.clock_skew = identity.clock_skew
        self.admission.close()
        self.admission = Admission(frozenset(gateway_config.roles), cache)

    def done(self) -> None:
        self.admission.close()

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        token = proxy_token(flow.request.headers.get("Proxy-Authorization"))
        if token is not None:
            self.proxy_tokens[flow.client_conn] = token

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Proxy-Authorization is for this proxy: it never goes on, AWS-bound or not.
        token = proxy_token(flow.request.headers.pop("Proxy-Authorization", None))
        if token is not None:
            self.request_tokens[flow] = token
        return self._stage(flow, streamed_phase=True)

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        if is_sts(flow) and gate.streamed:
            # An unseen body could hold AssumeRoleWithWebIdentity, which must never leave.
            deny(flow, "awsgate: STS requests must not be streamed", kind="refused-identity")
            return
        if is_web_identity_call(flow):
            await self._answer_web_identity(flow, gate)
            return
        try:
            gate.principal = await self._principal(flow, gate)
            refusal = self.admission.refusal(gate.principal)
        except IdentityRefused as exc:
            deny(flow, f"awsgate: {exc}", kind="refused-identity")
        except RevocationsUnavailable as exc:
            deny(flow, str(exc), kind="error", status=503)
        else:
            if refusal is not None:
                deny(flow, refusal, kind="refused-identity")

    async def _principal(self, flow: http.HTTPFlow, gate: GateContext) -> Principal:
        headers, _, query = agent_request_head(flow, gate)
        try:
            auth = sigv4.parse_auth(headers, query)
        except sigv4.SignatureError as exc:
            raise IdentityRefused(str(exc)) from exc
        if auth is not None:
            gate.credential_scope = (auth.service, auth.region)
        token = self.proxy_tokens.get(flow.client_conn) or self.request_tokens.pop(flow, None)
        if token is not None:
            # Proxy auth wins: the agent's own signature is ignored (signing strips it).
            validated = await self._validate(token)
            return validated.principal(session_id=token_session_id(token))
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
        if self.validator is None or not self.validator.trusts(info.issuer):
            # An issuer removed from the config (compromised, retired) takes its sessions along.
            raise IdentityRefused("the issuer of these credentials is no longer trusted")
        request = flow.request
        headers, path, query = agent_request_head(flow, gate)
        try:
            sigv4.verify(
                auth,
                secret,
                request.method,
                path,
                query,
                headers,
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
        admission = self.admission

        def authorize(principal: Principal) -> str | None:
            gate.principal = principal  # recorded even when refused
            try:
                return admission.refusal(principal)
            except RevocationsUnavailable as exc:
                return str(exc)

        try:
            query = agent_request_head(flow, gate)[2]
            params = sts.parse_params(flow.request.raw_content or b"", query)
        except sts.StsError as exc:
            answer = exc.response(gate.request_id)
        else:
            gate.operation = web_identity_operation(flow, params)
            answer = await asyncio.to_thread(
                sts.answer_web_identity,
                params,
                validator=self.validator,
                minter=self.minter,
                max_session=self.max_session,
                request_id=gate.request_id,
                authorize=authorize,
            )
        gate.principal = answer.principal or gate.principal
        if answer.error is not None:
            error = answer.error
            gate.refusal = Refusal(error.status, error.code, error.message, "refused-identity")
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)
