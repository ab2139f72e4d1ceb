"""Keeping credentials out of the store, whatever the caller passes in.

The recording addon already drops credentials, but the store is the last
line: anything written here ends up in exports and analysts' terminals, so the
writer redacts again. Values are replaced, not removed, so an analyst can see
that a credential was present.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[redacted]"

# Lower-case names of headers that carry credentials or keys.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-amz-security-token",
        "x-amz-signature",
        "x-amz-credential",
        "cookie",
        "set-cookie",
        "x-api-key",
        # SSE-C: the customer's own encryption key travels in these
        "x-amz-server-side-encryption-customer-key",
        "x-amz-copy-source-server-side-encryption-customer-key",
    }
)

# Lower-case names of query parameters that carry credentials (presigned URLs, SigV2).
CREDENTIAL_QUERY = frozenset(
    {
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "signature",
        "awsaccesskeyid",
        # STS's query protocol also takes its parameters in the query string
        "webidentitytoken",
        "samlassertion",
    }
)

# Parameter names whose values are credentials wherever they appear.
CREDENTIAL_PARAMETERS = frozenset(
    {
        "secretaccesskey",
        "sessiontoken",
        "webidentitytoken",
        "samlassertion",
        "password",
    }
)


def headers(pairs: Iterable[Sequence[str]] | None) -> list[list[str]]:
    """Header pairs as ``[name, value]`` lists with credential values replaced."""
    cleaned = []
    for name, value in pairs or ():
        name = text(name if type(name) is str else str(name))
        if name.lower() in CREDENTIAL_HEADERS:
            cleaned.append([name, REDACTED])
        else:
            cleaned.append([name, text(value if type(value) is str else str(value))])
    return cleaned


def url(raw: str | None) -> str | None:
    """The URL with credential query parameters (presigned URLs) replaced, the rest as sent."""
    if not raw:
        return raw
    base, mark, query = text(raw).partition("?")
    if not mark:
        return base
    pieces = []
    for piece in query.split("&"):
        name = unquote_plus(piece.partition("=")[0]).lower()
        pieces.append(
            f"{piece.partition('=')[0]}={REDACTED}" if name in CREDENTIAL_QUERY else piece
        )
    return f"{base}?{'&'.join(pieces)}"


def parameters(value: Any) -> Any:
    """A JSON-safe copy of ``value`` with credential-named fields replaced."""
    return json_safe(value, redact_keys=CREDENTIAL_PARAMETERS)


def json_safe(value: Any, redact_keys: frozenset[str] = frozenset()) -> Any:
    """``value`` exactly as it reads back from a JSON column: lists, string keys, finite floats."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {
            text(str(key)): REDACTED
            if str(key).lower() in redact_keys
            else json_safe(item, redact_keys)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [json_safe(item, redact_keys) for item in items]
    return text(str(value))


def text(value: str) -> str:
    """``value`` storable as text: NUL (PostgreSQL text cannot hold it) and lone surrogates
    (not UTF-8; mitmproxy decodes undecodable header bytes to them) become U+FFFD."""
    if value.isascii():
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    return _UNSTORABLE.sub("\ufffd", value)


# An agent can send either in any field.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Credential values inside API bodies: STS/IAM XML and JSON answers, form-encoded requests.
# The masking addon should have replaced them; this is the last line.
_BODY_SECRETS = re.compile(
    rb"(?P<xml><(?:SecretAccessKey|SessionToken|WebIdentityToken|SAMLAssertion)>)[^<]*"
    rb"|(?P<json>\"(?:SecretAccessKey|SessionToken|WebIdentityToken|SAMLAssertion)\"\s*:\s*)"
    rb"\"(?:[^\"\\]|\\.)*\""
    rb"|(?P<form>(?:^|&)(?:SecretAccessKey|SessionToken|WebIdentityToken|SAMLAssertion)=)[^&]*",
    re.IGNORECASE,
)


def _redact_body_secret(match: re.Match[bytes]) -> bytes:
    if match["xml"]:
        return match["xml"] + REDACTED.encode()
    if match["json"]:
        return match["json"] + b'"' + REDACTED.encode() + b'"'
    return match["form"] + REDACTED.encode()


# Every match names one of these; looking for them first is much cheaper than the pattern.
_BODY_SECRET_NAMES = (b"secretaccesskey", b"sessiontoken", b"webidentitytoken", b"samlassertion")


def body_secrets(content: bytes) -> bytes:
    """``content`` with credential values in XML, JSON or form bodies replaced."""
    lowered = content.lower()
    if not any(name in lowered for name in _BODY_SECRET_NAMES):
        return content
    return _BODY_SECRETS.sub(_redact_body_secret, content)


@dataclass(frozen=True)
class StoredBody:
    """What is kept of one body: the bytes when small enough, always size and digest."""

    content: bytes | None
    size: int | None
    sha256: str | None


def body(content: bytes | None, size: int | None, sha256: str | None, limit: int) -> StoredBody:
    """Bodies over ``limit`` bytes are kept as size and sha256 only, smaller ones scrubbed."""
    if content is None:
        return StoredBody(None, size, sha256)
    if len(content) <= limit:
        content = body_secrets(bytes(content))
    digest = hashlib.sha256(content).hexdigest()
    return StoredBody(content if len(content) <= limit else None, len(content), digest)
