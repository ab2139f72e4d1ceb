"""OIDC token validation against each configured issuer's published keys.

The agent's JWT is the only proof of who it is, so every check fails closed
and says why in a few safe words (``TokenError.reason``), never quoting the
token. Keys come from the issuer's discovery document and JWKS, cached so the
hot path never waits on the network, and valid tokens are remembered until they
expire so a repeated token costs one dict lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from addons.auth.groups import groups_for
from addons.config import IssuerConfig
from addons.context import Principal

log = logging.getLogger(__name__)

# Only public-key algorithms: the keys come from a public document, so an HMAC
# "signature" made with them proves nothing (the classic alg confusion attack).
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
    }
)
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_TOKEN_LENGTH = 16 * 1024
FETCH_TIMEOUT = 5.0

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")


class TokenError(Exception):
    """A token was refused; ``reason`` is short, safe to show, and never quotes the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    """An HTTP response body and the lifetime its ``Cache-Control`` allows (if any)."""

    body: bytes
    max_age: int | None = None


Fetch = Callable[[str], Fetched]


def fetch_url(url: str, timeout: float = FETCH_TIMEOUT) -> Fetched:
    """GET ``url`` over http(s); raises ``OSError`` on any failure or non-200 status."""
    if not url.startswith(("https://", "http://")):
        raise OSError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise OSError(f"HTTP {response.status} from {url}")
        return Fetched(response.read(1024 * 1024), _max_age(response.headers.get("Cache-Control")))


def _max_age(cache_control: str | None) -> int | None:
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "no-store" or name.lower() == "no-cache":
            return 0
        if name.lower() == "max-age" and value.strip().isdigit():
            return int(value.strip())
    return None


class IssuerKeys:
    """The signing keys one issuer publishes, fetched via discovery and cached.

    Keys are refreshed when the cache expires (``Cache-Control: max-age`` within
    ``[min_ttl, max_ttl]``, else ``default_ttl``) or when a token names an unknown
    ``kid`` (the issuer rotated), but never more often than ``refetch_interval``
    seconds, so junk ``kid`` values cannot make the gateway hammer the issuer.
    If the issuer is unreachable, the last keys it served stay in use.
    """

    def __init__(
        self,
        issuer_url: str,
        fetch: Fetch = fetch_url,
        *,
        clock: Callable[[], float] = time.monotonic,
        default_ttl: int = 600,
        min_ttl: int = 60,
        max_ttl: int = 24 * 3600,
        refetch_interval: float = 30.0,
    ) -> None:
        self.issuer_url = issuer_url
        self._fetch = fetch
        self._clock = clock
        self._default_ttl = default_ttl
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._refetch_interval = refetch_interval
        self._keys: dict[str, Key] | None = None
        self._expires = 0.0
        self._last_attempt: float | None = None
        self._lock = threading.Lock()

    def get(self, kid: str | None) -> Key:
        """The key for ``kid`` (or the only key, for a token without ``kid``)."""
        keys = self._current()
        key = _pick(keys, kid)
        if key is None:
            keys = self._refresh(force=True)  # rate-limited: may return the same keys
            key = _pick(keys, kid)
        if key is None:
            raise TokenError("unknown key id")
        return key

    def _current(self) -> dict[str, Key]:
        if self._keys is not None and self._clock() < self._expires:
            return self._keys
        return self._refresh(force=False)

    def _may_refetch(self) -> bool:
        return self._last_attempt is None or (
            self._clock() - self._last_attempt >= self._refetch_interval
        )

    def _refresh(self, force: bool) -> dict[str, Key]:
        with self._lock:
            # Another thread may have refreshed while this one waited for the lock.
            if self._keys is not None and not force and self._clock() < self._expires:
                return self._keys
            if not self._may_refetch():
                if self._keys is None:
                    raise TokenError("issuer unreachable")
                return self._keys
            self._last_attempt = self._clock()
            try:
                keys, max_age = self._download()
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
                if self._keys is None:
                    log.warning("issuer %s unreachable: %s", self.issuer_url, exc)
                    raise TokenError("issuer unreachable") from exc
                log.warning("issuer %s unreachable, keeping cached keys: %s", self.issuer_url, exc)
                return self._keys
            ttl = self._default_ttl if max_age is None else max_age
            self._expires = self._clock() + min(max(ttl, self._min_ttl), self._max_ttl)
            self._keys = keys
            return keys

    def _download(self) -> tuple[dict[str, Key], int | None]:
        discovery = json.loads(self._fetch(self.issuer_url + DISCOVERY_PATH).body)
        if _issuer_id(discovery["issuer"]) != self.issuer_url:
            raise ValueError(f"discovery names issuer {discovery['issuer']!r}")
        jwks_uri = discovery["jwks_uri"]
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("discovery has no http(s) jwks_uri")
        fetched = self._fetch(jwks_uri)
        return _parse_jwks(json.loads(fetched.body)), fetched.max_age


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, Key]:
    """Public signing keys by ``kid``; symmetric, encryption-only and broken keys are skipped."""
    keys: dict[str, Key] = {}
    for index, item in enumerate(document["keys"]):
        if not isinstance(item, dict) or item.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if item.get("use", "sig") != "sig":
            continue
        try:
            key = JWKRegistry.import_key(item)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("skipping unusable JWKS key #%d: %s", index, exc)
            continue
        keys[str(item.get("kid", f"#{index}"))] = key
    return keys


def _pick(keys: dict[str, Key], kid: str | None) -> Key | None:
    if kid is not None:
        return keys.get(kid)
    # A token without kid is only unambiguous if the issuer has a single key.
    return next(iter(keys.values())) if len(keys) == 1 else None


def _issuer_id(url: Any) -> str:
    """The issuer as configured: the config loader strips one trailing slash, so do we."""
    return url.removesuffix("/") if isinstance(url, str) else ""


@dataclass(frozen=True)
class ValidatedToken:
    """A token that passed every check, with what the gateway derives from it."""

    issuer: IssuerConfig
    claims: dict[str, Any]
    expires: float
    audience: str
    groups: frozenset[str]

    @property
    def subject(self) -> str:
        return self.claims["sub"]

    def principal(
        self,
        role: str | None = None,
        session_id: str | None = None,
        parent_session_id: str | None = None,
    ) -> Principal:
        return Principal(
            issuer=self.issuer.url,
            subject=self.subject,
            groups=self.groups,
            role=role,
            session_id=session_id,
            claims=dict(self.claims),
            parent_session_id=parent_session_id,
        )


def token_session_id(token: str) -> str:
    """The session id of a token used for proxy auth: stable per token, revealing nothing
    of it. Credentials minted from the token carry it as their parent session."""
    return "tok-" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenValidator:
    """Validates JWTs from the configured issuers; thread-safe.

    ``validate`` may fetch keys over the network on a cache miss, so an event
    loop should try ``cached`` first and run ``validate`` in a worker thread.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        clock_skew: int = 60,
        fetch: Fetch = fetch_url,
        *,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        refetch_interval: float = 30.0,
    ) -> None:
        self.clock_skew = clock_skew
        self._issuers = {
            issuer.url: (
                issuer,
                IssuerKeys(issuer.url, fetch, clock=clock, refetch_interval=refetch_interval),
            )
            for issuer in issuers
        }
        self._cache: OrderedDict[bytes, ValidatedToken] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def trusts(self, issuer_url: str) -> bool:
        """Whether tokens (and sessions minted from them) of this issuer are accepted."""
        return issuer_url in self._issuers

    def cached(self, token: str, now: float | None = None) -> ValidatedToken | None:
        """The earlier result for this exact token if it is still valid; never does I/O."""
        now = time.time() if now is None else now
        digest = hashlib.sha256(token.encode()).digest()
        with self._cache_lock:
            hit = self._cache.get(digest)
            if hit is None:
                return None
            if now >= hit.expires + self.clock_skew:
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return hit

    def validate(self, token: str, now: float | None = None) -> ValidatedToken:
        """Check ``token`` completely (or return the cached result); raises ``TokenError``."""
        now = time.time() if now is None else now
        hit = self.cached(token, now)
        if hit is not None:
            return hit
        result = self._validate(token, now)
        with self._cache_lock:
            self._cache[hashlib.sha256(token.encode()).digest()] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _validate(self, token: str, now: float) -> ValidatedToken:
        header, unverified = _split(token)
        entry = self._issuers.get(_issuer_id(unverified.get("iss")))
        if entry is None:
            raise TokenError("unknown issuer")
        issuer, keys = entry
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS or alg not in issuer.algorithms:
            raise TokenError("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token")
        key = keys.get(kid)
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
        try:
            verified = jws.deserialize_compact(token, key, registry=registry)
            claims = json.loads(verified.payload)
        except JoseError as exc:
            raise TokenError("bad signature") from exc
        except ValueError as exc:
            raise TokenError("malformed token") from exc
        if not isinstance(claims, dict):
            raise TokenError("malformed token")
        audience = self._check_claims(issuer, claims, now)
        return ValidatedToken(
            issuer, claims, float(claims["exp"]), audience, groups_for(issuer, claims)
        )

    def _check_claims(self, issuer: IssuerConfig, claims: dict[str, Any], now: float) -> str:
        """Checks the verified claims; returns the configured audience the token is for."""
        if _issuer_id(claims.get("iss")) != issuer.url:
            raise TokenError("unknown issuer")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenError("malformed token")
        exp, nbf, iat = (_numeric(claims, name) for name in ("exp", "nbf", "iat"))
        if exp is None:
            raise TokenError("token has no expiry")
        if now >= exp + self.clock_skew:
            raise TokenError("token expired")
        if (nbf is not None and nbf > now + self.clock_skew) or (
            iat is not None and iat > now + self.clock_skew
        ):
            raise TokenError("token not yet valid")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        for candidate in issuer.audience:
            if candidate in audiences:
                return candidate
        raise TokenError("wrong audience")


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("malformed token")
    return float(value)


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only used to pick the issuer, key and algorithm."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.match(part) for part in parts):
        raise TokenError("malformed token")
    try:
        header, claims = (json.loads(_b64decode(part)) for part in parts[:2])
    except (ValueError, binascii.Error) as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed token")
    return header, claims


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
