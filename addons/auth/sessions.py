"""Gateway-minted session credentials, the answer to AssumeRoleWithWebIdentity.

The credentials are stateless: the session token is the session itself (who,
which groups, which role, until when), authenticated with a key derived from
the gateway's master key, and the secret access key is derived from the master
key, the access key id and the token. Any replica holding the same key file can
therefore verify a session without a shared store, and nothing secret is stored.

The token is readable by whoever holds it (it describes the agent to itself);
it is not encrypted, only authenticated. SDKs send it with every request, so it
carries a small subset of the identity token's claims.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from addons.context import Principal

KEY_BYTES = 32
TOKEN_VERSION = 1
MAC_BYTES = 32
MAX_TOKEN_LENGTH = 8 * 1024
OPENED_CACHE_SIZE = 4096  # sessions kept opened (an agent's credentials, while in use)
MIN_DURATION = 900
DEFAULT_DURATION = 3600

# Claims a session never needs again (they describe the identity token itself).
_BOOKKEEPING_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "exp",
        "nbf",
        "iat",
        "jti",
        "auth_time",
        "nonce",
        "at_hash",
        "c_hash",
        "azp",
        "sid",
        "groups",
    }
)
MAX_CLAIM_LENGTH = 256
CLAIMS_BUDGET = 1024


class SessionError(Exception):
    """A session credential was refused; the message is safe to show."""


class SessionKeyError(Exception):
    """The session key file is unusable (unsafe permissions, wrong size, unreadable)."""


class DurationError(ValueError):
    """DurationSeconds out of range; ``code`` and message are what STS answers."""

    code = "ValidationError"


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The master key in ``path``, created (32 random bytes, mode 0600) on first use.

    Creation is atomic and never overwrites: replicas starting together on a
    shared volume all end up with the first key written.
    """
    path = Path(path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    """The key in ``path``; raises FileNotFoundError if there is none yet."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SessionKeyError(f"cannot read session key {path}: {exc.strerror}") from exc
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SessionKeyError(f"session key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SessionKeyError(
                f"session key {path} is readable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        key = handle.read(4096)
    if len(key) < KEY_BYTES:
        raise SessionKeyError(f"session key {path} is shorter than {KEY_BYTES} bytes")
    return key


def clamp_duration(requested: int | None, max_session: int) -> int:
    """STS's DurationSeconds rule: default 3600, at least 900, at most ``max_session``."""
    if requested is None:
        return max(MIN_DURATION, min(DEFAULT_DURATION, max_session))
    if requested < MIN_DURATION:
        raise DurationError(
            f"1 validation error detected: Value '{requested}' at 'durationSeconds' failed to "
            f"satisfy constraint: Member must have value greater than or equal to {MIN_DURATION}"
        )
    if requested > max(max_session, MIN_DURATION):
        raise DurationError(
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
        )
    return requested


def session_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims worth carrying in a session: short scalars, within a small byte budget.

    Identity bookkeeping (``exp``, ``jti``, ...) is dropped; ``iss``, ``sub`` and
    groups travel in their own fields. Claims are taken in name order until the
    budget is spent, so the choice is deterministic.
    """
    kept: dict[str, Any] = {}
    used = 0
    for name in sorted(claims):
        value = claims[name]
        if name in _BOOKKEEPING_CLAIMS or not _small(value):
            continue
        cost = len(json.dumps({name: value}, separators=(",", ":")))
        if used + cost > CLAIMS_BUDGET:
            continue
        kept[name] = value
        used += cost
    return kept


def _small(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(item, str) and _small(item) for item in value)
    if isinstance(value, str):
        return len(value) <= MAX_CLAIM_LENGTH
    return isinstance(value, bool | int | float)


@dataclass(frozen=True)
class MintedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    session_id: str


@dataclass(frozen=True)
class SessionInfo:
    """What a session token says, once its authenticity is proven."""

    issuer: str
    subject: str
    groups: frozenset[str]
    role: str | None
    session_id: str
    expiration: datetime
    claims: dict[str, Any] = field(default_factory=dict, compare=False)
    parent_session_id: str | None = None  # the token's session it was minted from

    def principal(self) -> Principal:
        return Principal(
            issuer=self.issuer,
            subject=self.subject,
            groups=self.groups,
            role=self.role,
            session_id=self.session_id,
            claims=dict(self.claims),
            parent_session_id=self.parent_session_id,
        )


class SessionMinter:
    """Mints and opens session credentials with one master key.

    An agent signs every call with the same credentials for an hour or more, so
    opened sessions are kept (bounded, by access key id and token; expiry is still
    checked on every call): checking the token's MAC and deriving the secret once
    per session instead of once per call.
    """

    def __init__(self, key: bytes, cache_size: int = OPENED_CACHE_SIZE) -> None:
        if len(key) < KEY_BYTES:
            raise SessionKeyError(f"the session key must have at least {KEY_BYTES} bytes")
        # Keyed HMAC states, copied per use: keying hashes the key each time.
        self._token_mac = hmac.new(_derive(key, b"awsgate session token v1"), None, "sha256")
        self._secret_mac = hmac.new(_derive(key, b"awsgate session secret v1"), None, "sha256")
        self._cache_size = cache_size
        self._opened: dict[tuple[str, str], tuple[SessionInfo, str, float]] = {}

    def mint(
        self,
        *,
        issuer: str,
        subject: str,
        groups: Iterable[str] = (),
        role: str | None,
        duration: int,
        claims: Mapping[str, Any] | None = None,
        parent_session_id: str | None = None,
        now: float | None = None,
    ) -> MintedCredentials:
        """New credentials for this identity, valid ``duration`` seconds from ``now``."""
        now = int(time.time() if now is None else now)
        access_key_id = "ASIA" + base64.b32encode(secrets.token_bytes(10)).decode()
        session_id = secrets.token_hex(8)
        payload = {
            "a": access_key_id,
            "i": issuer,
            "s": subject,
            "g": sorted(set(groups)),
            "r": role,
            "d": session_id,
            "t": now,
            "e": now + duration,
            "c": session_claims(claims or {}),
            "p": parent_session_id,
        }
        body = bytes([TOKEN_VERSION]) + json.dumps(payload, separators=(",", ":")).encode()
        mac = self._mac(self._token_mac, body)
        token = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
        return MintedCredentials(
            access_key_id=access_key_id,
            secret_access_key=self._secret(access_key_id, token),
            session_token=token,
            expiration=datetime.fromtimestamp(now + duration, UTC),
            session_id=session_id,
        )

    def open(
        self, access_key_id: str, session_token: str, now: float | None = None
    ) -> tuple[SessionInfo, str]:
        """The session behind these credentials and its secret access key; raises SessionError."""
        now = time.time() if now is None else now
        key = (access_key_id, session_token)
        opened = self._opened.get(key)
        if opened is None:
            opened = self._open(access_key_id, session_token)
            if len(self._opened) >= self._cache_size:
                self._opened.pop(next(iter(self._opened)), None)  # the oldest entry
            self._opened[key] = opened
        info, secret, expires = opened
        if now >= expires:
            raise SessionError("session expired")
        return info, secret

    def _open(self, access_key_id: str, session_token: str) -> tuple[SessionInfo, str, float]:
        payload = self._verified_payload(session_token)
        try:
            bound_key = payload["a"]
            expires = payload["e"]
            info = SessionInfo(
                issuer=payload["i"],
                subject=payload["s"],
                groups=frozenset(payload["g"]),
                role=payload["r"],
                session_id=payload["d"],
                expiration=datetime.fromtimestamp(expires, UTC),
                claims=payload["c"],
                parent_session_id=payload.get("p"),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise SessionError("invalid session token") from exc
        if not isinstance(info.parent_session_id, str | None):
            raise SessionError("invalid session token")
        if not isinstance(bound_key, str) or not isinstance(access_key_id, str):
            raise SessionError("invalid session token")
        if not hmac.compare_digest(bound_key.encode(), access_key_id.encode()):
            raise SessionError("access key does not match session")
        return info, self._secret(access_key_id, session_token), float(expires)

    def _verified_payload(self, session_token: str) -> dict[str, Any]:
        if not isinstance(session_token, str) or len(session_token) > MAX_TOKEN_LENGTH:
            raise SessionError("invalid session token")
        try:
            raw = base64.urlsafe_b64decode(session_token + "=" * (-len(session_token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise SessionError("invalid session token") from exc
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        expected = self._mac(self._token_mac, body)
        if len(body) < 2 or not hmac.compare_digest(mac, expected) or body[0] != TOKEN_VERSION:
            raise SessionError("invalid session token")
        try:
            payload = json.loads(body[1:])
        except ValueError as exc:
            raise SessionError("invalid session token") from exc
        if not isinstance(payload, dict):
            raise SessionError("invalid session token")
        return payload

    def _secret(self, access_key_id: str, session_token: str) -> str:
        digest = hashlib.sha256(session_token.encode()).digest()
        material = self._mac(self._secret_mac, access_key_id.encode() + b"\0" + digest)
        return base64.b64encode(material[:30]).decode()

    @staticmethod
    def _mac(keyed: hmac.HMAC, message: bytes) -> bytes:
        mac = keyed.copy()
        mac.update(message)
        return mac.digest()


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()
