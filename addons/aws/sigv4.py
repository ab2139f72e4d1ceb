"""SigV4: read the agent's signature, verify it, strip it, and sign again with ours.

One canonicalisation serves both directions, so a request we accept from an
agent and the request we send upstream are hashed by the same rules. The rules
are botocore's (``botocore.auth.SigV4Auth`` and ``S3SigV4Auth``), which is what
AWS and moto check against:

- the canonical URI is the path as sent for S3-style signing names, and the
  path with dot segments and empty segments removed, then percent-encoded once
  more, for every other service (so ``%3A`` in a Lambda ARN becomes ``%253A``);
- the canonical query is every ``name=value`` pair, decoded and re-encoded with
  RFC 3986's unreserved set, sorted. ``+`` is a literal plus (RFC 3986), never a
  space; :func:`strip_auth` rewrites the forwarded query into that same encoding
  so AWS cannot read it any other way than we signed it;
- header values are trimmed and inner runs of blanks collapsed; repeated
  headers are joined with ``,``.

The hot path (:meth:`Signer.sign`) builds strings directly instead of botocore
request objects and derives each signing key once per (secret, date, region,
service). Chunk-signed S3 uploads are re-framed by :mod:`addons.aws.chunked`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

from botocore.auth import SIGNED_HEADERS_BLACKLIST
from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4A_ALGORITHM = "AWS4-ECDSA-P256-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
#: Payload modes whose body carries per-chunk signatures that must be re-signed.
CHUNK_SIGNED_MODES = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER})
_PASSTHROUGH_MODES = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, *CHUNK_SIGNED_MODES})
_SIGV4A_MODES = frozenset(
    {"STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"}
)

#: Signing names whose canonical URI is the path as sent (botocore's S3SigV4Auth family).
S3_SIGNING_NAMES = frozenset({"s3", "s3-object-lambda", "s3-outposts", "s3express"})
#: Headers the agent's auth lives in; removed before we sign, never forwarded.
AUTH_HEADERS = frozenset({"authorization", "x-amz-date", "date", "x-amz-security-token"})
#: Query parameters of a presigned URL; removed before we sign.
PRESIGN_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)
#: Hop-by-hop and volatile headers a proxy may change: never under our signature.
UNSIGNED_HEADERS = frozenset(SIGNED_HEADERS_BLACKLIST) | {"authorization", "proxy-authorization"}
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

_QUERY_AUTH_ERROR = "AuthorizationQueryParametersError"
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")

type Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class SignatureError(Exception):
    """The agent's signature is malformed, wrong or stale.

    The message is safe to show the agent: it never holds a secret, a token or
    the canonical request. ``code`` is the AWS error code that fits.
    """

    def __init__(self, message: str, code: str = "SignatureDoesNotMatch") -> None:
        super().__init__(message)
        self.code = code


class UnsupportedSignature(SignatureError):
    """Signed in a way the gateway cannot verify or re-sign (SigV2, SigV4A, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "InvalidRequest")


@dataclass(frozen=True)
class AgentAuth:
    """What the agent's signature claims; ``security_token`` is never shown."""

    algorithm: str
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    presigned: bool
    expires: int | None = None
    security_token: str | None = field(default=None, repr=False)

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


# -- canonical form -------------------------------------------------------------------------


def is_s3_style(service: str) -> bool:
    return service in S3_SIGNING_NAMES


# The last mitmproxy header fields decoded, and their pairs. One request's head is read
# by identity (parse, verify), operation and signing in turn; its ``fields`` tuple is
# immutable and replaced on every change, so the same tuple object means the same pairs
# (the reference held here keeps its id from being reused).
_last_decoded: tuple[tuple[tuple[bytes, bytes], ...], tuple[tuple[str, str], ...]] = ((), ())


def header_pairs(headers: Headers) -> list[tuple[str, str]]:
    """``(lowercase name, value)`` for every header field, repeated fields kept.

    Accepts a list of pairs, a plain dict, or a case-insensitive multi-dict with
    ``get_all`` (mitmproxy's and botocore's header classes).
    """
    global _last_decoded
    fields = getattr(headers, "fields", None)
    if isinstance(fields, tuple):  # mitmproxy's Headers: the raw byte pairs, read directly
        cached_fields, pairs = _last_decoded
        if cached_fields is not fields:
            pairs = tuple(
                (
                    name.decode("utf-8", "surrogateescape").lower(),
                    value.decode("utf-8", "surrogateescape"),
                )
                for name, value in fields
            )
            _last_decoded = (fields, pairs)
        return list(pairs)
    if not hasattr(headers, "items"):
        return [(name.lower(), value) for name, value in headers]
    get_all = getattr(headers, "get_all", None)
    if get_all is None:
        return [(name.lower(), value) for name, value in headers.items()]
    names = dict.fromkeys(name.lower() for name in headers)
    return [(name, value) for name in names for value in get_all(name)]


def _header(pairs: list[tuple[str, str]], name: str) -> str | None:
    for key, value in pairs:
        if key == name:
            return value
    return None


def _trimall(value: str) -> str:
    return " ".join(value.split())


@lru_cache(maxsize=4096)
def canonical_uri(path: str, service: str) -> str:
    if is_s3_style(service):
        return path or "/"
    return quote(normalize_url_path(path), safe="/~", errors="surrogateescape")


@lru_cache(maxsize=4096)
def _encode(component: str) -> str:
    """One query name or value in SigV4's encoding (decoded first, ``+`` kept literal)."""
    return quote(unquote_to_bytes(component), safe="-_.~")


def parse_query(query: str) -> list[tuple[str, str, bool]]:
    """``(encoded name, encoded value, had '=')`` per non-empty ``&`` part, in order."""
    pairs = []
    for part in query.split("&"):
        if part:
            name, sep, value = part.partition("=")
            pairs.append((_encode(name), _encode(value), bool(sep)))
    return pairs


def canonical_query(query: str, *, drop: frozenset[str] = frozenset()) -> str:
    if not query:
        return ""
    pairs = sorted((name, value) for name, value, _ in parse_query(query) if name not in drop)
    return "&".join(f"{name}={value}" for name, value in pairs)


def _canonical_headers(items: list[tuple[str, str]]) -> tuple[str, str]:
    """Canonical header block and SignedHeaders list for already-selected headers."""
    merged: dict[str, str] = {}
    for name, value in items:
        value = _trimall(value)
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    names = sorted(merged)
    block = "".join(f"{name}:{merged[name]}\n" for name in names)
    return block, ";".join(names)


def _string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _utc(now: datetime) -> datetime:
    """``now`` in UTC; a naive datetime is taken to be UTC already."""
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def parse_amz_date(amz_date: str) -> datetime:
    """``YYYYMMDDTHHMMSSZ`` as an aware datetime (already validated by parse_auth)."""
    d = amz_date
    return datetime(
        int(d[:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]), int(d[13:15]), tzinfo=UTC
    )


def amz_timestamp(now: datetime) -> str:
    t = _utc(now)
    return f"{t.year:04}{t.month:02}{t.day:02}T{t.hour:02}{t.minute:02}{t.second:02}Z"


@lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day, region and service; cached, as it changes daily."""
    key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def hmac_hex(key: bytes, message: str) -> str:
    return hmac.digest(key, message.encode("utf-8"), "sha256").hex()


# -- the agent's side -------------------------------------------------------------------------


def _unsupported_algorithm(algorithm: str) -> UnsupportedSignature:
    if algorithm == SIGV4A_ALGORITHM:
        return UnsupportedSignature(
            "SigV4A (AWS4-ECDSA-P256-SHA256) requests cannot be re-signed by the gateway; "
            "use a regional endpoint so the SDK signs with SigV4"
        )
    return UnsupportedSignature(
        f"unsupported signature algorithm {algorithm[:40]!r}: only {ALGORITHM} (SigV4) is accepted"
    )


def _credential(value: str) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise SignatureError("malformed Credential scope", "IncompleteSignature")
    return parts[0], parts[1], parts[2], parts[3]


def _amz_date_from_headers(pairs: list[tuple[str, str]]) -> str:
    value = _header(pairs, "x-amz-date")
    if value is not None:
        return value.strip()
    http_date = _header(pairs, "date")
    if http_date is None:
        raise SignatureError("request has neither X-Amz-Date nor Date", "IncompleteSignature")
    try:
        return amz_timestamp(parsedate_to_datetime(http_date))
    except (TypeError, ValueError):
        raise SignatureError("unparsable Date header", "IncompleteSignature") from None


def _header_auth(value: str, pairs: list[tuple[str, str]]) -> AgentAuth:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS":
            raise UnsupportedSignature("SigV2 (AWS key:signature) is not accepted; use SigV4")
        raise _unsupported_algorithm(algorithm)
    params = {}
    for item in rest.split(","):
        name, _, val = item.strip().partition("=")
        params[name] = val.strip()
    try:
        access_key, date, region, service = _credential(params["Credential"])
        signed_headers = tuple(params["SignedHeaders"].split(";"))
        signature = params["Signature"]
    except KeyError as missing:
        raise SignatureError(
            f"Authorization lacks {missing.args[0]}", "IncompleteSignature"
        ) from None
    return AgentAuth(
        algorithm=algorithm,
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=_amz_date_from_headers(pairs),
        presigned=False,
        security_token=_header(pairs, "x-amz-security-token"),
    )


def _query_auth(params: dict[str, str]) -> AgentAuth:
    algorithm = params.get("X-Amz-Algorithm", "")
    if algorithm != ALGORITHM:
        raise _unsupported_algorithm(algorithm)
    try:
        access_key, date, region, service = _credential(params["X-Amz-Credential"])
        expires_text = params["X-Amz-Expires"]
        signed_headers = tuple(params["X-Amz-SignedHeaders"].split(";"))
        signature = params["X-Amz-Signature"]
        amz_date = params["X-Amz-Date"]
    except KeyError as missing:
        raise SignatureError(f"presigned URL lacks {missing.args[0]}", _QUERY_AUTH_ERROR) from None
    if not expires_text.isdigit() or not 0 < int(expires_text) <= MAX_PRESIGN_EXPIRES:
        raise SignatureError(
            "X-Amz-Expires must be between 1 and 604800 seconds", _QUERY_AUTH_ERROR
        )
    return AgentAuth(
        algorithm=algorithm,
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=amz_date,
        presigned=True,
        expires=int(expires_text),
        security_token=params.get("X-Amz-Security-Token"),
    )


def _decoded_query(query: str) -> dict[str, str]:
    return {
        _decode(name): _decode(value)
        for name, _, value in (part.partition("=") for part in query.split("&") if part)
    }


def _decode(component: str) -> str:
    return unquote_to_bytes(component).decode("utf-8", "replace")


def parse_auth(headers: Headers, query: str) -> AgentAuth | None:
    """The agent's SigV4 auth from its headers or a presigned query; ``None`` when unsigned.

    Raises :class:`UnsupportedSignature` for SigV2, SigV4A and unknown schemes,
    :class:`SignatureError` when the auth is malformed.
    """
    pairs = header_pairs(headers)
    authorization = _header(pairs, "authorization")
    params = _decoded_query(query) if query else {}
    if "AWSAccessKeyId" in params and "Signature" in params:
        raise UnsupportedSignature("SigV2 presigned URLs are not accepted; presign with SigV4")
    presigned = "X-Amz-Algorithm" in params or "X-Amz-Signature" in params
    if authorization is not None and presigned:
        raise SignatureError("both an Authorization header and a presigned query", "InvalidRequest")
    if presigned:
        auth = _query_auth(params)
    elif authorization is not None:
        auth = _header_auth(authorization, pairs)
    else:
        return None
    if not _valid_amz_date(auth.amz_date):
        raise SignatureError("malformed request date", "IncompleteSignature")
    if auth.amz_date[:8] != auth.date:
        raise SignatureError("the request date does not match the credential scope date")
    if "host" not in auth.signed_headers:
        raise SignatureError("the Host header must be signed", "IncompleteSignature")
    if not _HEX64.match(auth.signature):
        raise SignatureError("malformed signature", "IncompleteSignature")
    return auth


def _valid_amz_date(value: str) -> bool:
    try:
        return bool(_AMZ_DATE.match(value)) and bool(parse_amz_date(value))
    except ValueError:
        return False


def _check_time(auth: AgentAuth, now: datetime, max_skew: int) -> None:
    signed_at = parse_amz_date(auth.amz_date)
    skew = timedelta(seconds=max_skew)
    if auth.presigned:
        if now + skew < signed_at:
            raise SignatureError("presigned URL is not yet valid", "AccessDenied")
        if now > signed_at + timedelta(seconds=auth.expires or 0):
            raise SignatureError("Request has expired", "AccessDenied")
    elif abs(now - signed_at) > skew:
        raise SignatureError(
            "The difference between the request time and the current time is too large.",
            "RequestTimeTooSkewed",
        )


def agent_payload_hash(auth: AgentAuth, headers: Headers, body: bytes | None) -> str:
    """The payload hash the agent signed: its x-amz-content-sha256, else the body's hash."""
    return _agent_payload_hash(auth, header_pairs(headers), body)


def _agent_payload_hash(auth: AgentAuth, pairs: list[tuple[str, str]], body: bytes | None) -> str:
    declared = _header(pairs, "x-amz-content-sha256")
    if declared is not None:
        return declared.strip()
    if auth.presigned and is_s3_style(auth.service):
        return UNSIGNED_PAYLOAD
    if body is None:
        raise SignatureError("cannot verify a signature over an unbuffered body", "InvalidRequest")
    return hashlib.sha256(body).hexdigest()


def verify(
    auth: AgentAuth,
    secret_key: str,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    body: bytes | None,
    now: datetime,
    max_skew: int = 300,
) -> None:
    """Raise :class:`SignatureError` unless ``auth`` is a valid, current signature.

    ``path`` and ``query`` are as received (percent-encoded, without ``?``);
    ``body`` may be ``None`` only when the agent declared its payload hash in
    x-amz-content-sha256 (S3 streams).
    """
    _check_time(auth, _utc(now), max_skew)
    pairs = header_pairs(headers)
    wanted = set(auth.signed_headers)
    selected = [(name, value) for name, value in pairs if name in wanted]
    missing = wanted.difference(name for name, _ in selected)
    if missing:
        raise SignatureError(f"signed header {sorted(missing)[0]!r} is missing from the request")
    # As S3 does: an unsigned x-amz-* header (say x-amz-acl added to a presigned PUT)
    # would otherwise end up under the gateway's signature.
    unsigned = sorted(
        name
        for name, _ in pairs
        if name.startswith("x-amz-") and name not in wanted and name not in AUTH_HEADERS
    )
    if unsigned:
        raise SignatureError(f"header {unsigned[0]!r} is present but not signed", "AccessDenied")
    block, signed_list = _canonical_headers(selected)
    drop = frozenset({"X-Amz-Signature"}) if auth.presigned else frozenset()
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(path, auth.service),
            canonical_query(query, drop=drop),
            block,
            signed_list,
            _agent_payload_hash(auth, pairs, body),
        )
    )
    key = signing_key(secret_key, auth.date, auth.region, auth.service)
    expected = hmac_hex(key, _string_to_sign(auth.amz_date, auth.scope, canonical_request))
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(
            "The request signature we calculated does not match the signature you provided."
        )


def strip_auth(headers: MutableMapping[str, str] | list[tuple[str, str]], query: str) -> str:
    """Remove the agent's auth headers in place; return the query to forward.

    The returned query has the presign parameters removed and every remaining
    name and value in SigV4's encoding (order kept), so what goes on the wire is
    exactly what :meth:`Signer.sign` canonicalises.
    """
    if isinstance(headers, list):
        headers[:] = [(name, value) for name, value in headers if name.lower() not in AUTH_HEADERS]
    else:
        _drop_fields(headers, AUTH_HEADERS)
    return "&".join(
        f"{name}={value}" if had_equals else name
        for name, value, had_equals in parse_query(query)
        if name not in PRESIGN_PARAMS
    )


def set_headers(headers: MutableMapping[str, str], values: Mapping[str, str]) -> None:
    """Set ``values`` (say :meth:`Signer.sign`'s result), replacing fields of those names."""
    fields = getattr(headers, "fields", None)
    if not isinstance(fields, tuple):
        headers.update(values)
        return
    _drop_fields(headers, frozenset(name.lower() for name in values))
    headers.fields += tuple(  # type: ignore[attr-defined]
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in values.items()
    )


def _drop_fields(headers: MutableMapping[str, str], names: frozenset[str]) -> None:
    """Delete every field named in ``names`` (lower case) from a header mapping, in place.

    mitmproxy's headers are rewritten in one pass over their raw fields: deleting
    or setting by name rescans (and re-encodes) every field each time, which
    cost a small call more than signing it.
    """
    fields = getattr(headers, "fields", None)
    if isinstance(fields, tuple):
        raw = {name.encode() for name in names}
        headers.fields = tuple(item for item in fields if item[0].lower() not in raw)  # type: ignore[attr-defined]
        return
    for name in [name for name in headers if name.lower() in names]:
        if name in headers:
            del headers[name]


def payload_hash(service: str, headers: Headers, body: bytes | None) -> str:
    """The payload hash (or S3 payload mode) to sign the forwarded request with.

    S3 keeps the agent's x-amz-content-sha256 mode. A literal hash is only
    trusted when it can be checked against a buffered body; for a streamed body
    it becomes UNSIGNED-PAYLOAD (S3 still checks any checksum the agent sent).
    Other services always sign the SHA-256 of the buffered body.
    """
    declared = _header(header_pairs(headers), "x-amz-content-sha256")
    declared = declared.strip().lower() if declared is not None else None
    if is_s3_style(service):
        if declared is None:
            return UNSIGNED_PAYLOAD if body is None else hashlib.sha256(body).hexdigest()
        mode = declared.upper()
        if mode in _PASSTHROUGH_MODES:
            return mode
        if mode in _SIGV4A_MODES:
            raise UnsupportedSignature(f"{mode} (SigV4A chunk signing) cannot be re-signed")
        if not _HEX64.match(declared):
            raise SignatureError("unrecognised x-amz-content-sha256 value", "InvalidArgument")
        if body is None:
            return UNSIGNED_PAYLOAD
    elif body is None:
        raise SignatureError(f"the {service} request body must be buffered", "InvalidRequest")
    actual = hashlib.sha256(body).hexdigest()
    if declared is not None and _HEX64.match(declared) and declared != actual:
        raise SignatureError(
            "x-amz-content-sha256 does not match the body", "XAmzContentSHA256Mismatch"
        )
    return actual


# -- the gateway's side ---------------------------------------------------------------------


class Signer:
    """Signs forwarded requests with the gateway's credentials (one per process)."""

    def __init__(self, unsigned_headers: frozenset[str] = UNSIGNED_HEADERS) -> None:
        self._skip = unsigned_headers | AUTH_HEADERS | {"host", "x-amz-content-sha256"}

    def sign(
        self,
        creds: Credentials,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Headers,
        payload_hash: str,
        region: str,
        service: str,
        now: datetime,
    ) -> dict[str, str]:
        """The headers to set on the request: Authorization, X-Amz-Date and friends.

        ``headers`` are those going on the wire, already stripped of the agent's
        auth (:func:`strip_auth`); ``host`` is the Host header the caller sends;
        ``query`` is the query :func:`strip_auth` returned. Everything but
        hop-by-hop headers is signed, so nothing may change after this call.
        """
        amz_date = amz_timestamp(now)
        skip = self._skip
        selected = []
        has_content_sha = False
        for name, value in header_pairs(headers):
            if name in skip:
                if name in AUTH_HEADERS:
                    raise ValueError(f"{name} must be stripped (strip_auth) before signing")
                has_content_sha = has_content_sha or name == "x-amz-content-sha256"
                continue
            selected.append((name, value))
        extra = {"X-Amz-Date": amz_date}
        selected.append(("host", host))
        selected.append(("x-amz-date", amz_date))
        if has_content_sha or is_s3_style(service):
            extra["X-Amz-Content-SHA256"] = payload_hash
            selected.append(("x-amz-content-sha256", payload_hash))
        if creds.token:
            extra["X-Amz-Security-Token"] = creds.token
            selected.append(("x-amz-security-token", creds.token))
        block, signed_list = _canonical_headers(selected)
        canonical_request = (
            f"{method.upper()}\n{canonical_uri(path, service)}\n{canonical_query(query)}\n"
            f"{block}\n{signed_list}\n{payload_hash}"
        )
        scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
        key = signing_key(creds.secret_key, amz_date[:8], region, service)
        signature = hmac_hex(key, _string_to_sign(amz_date, scope, canonical_request))
        extra["Authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed_list}, Signature={signature}"
        )
        return extra
