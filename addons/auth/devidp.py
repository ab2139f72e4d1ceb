"""A small local OIDC issuer for tests and the demo. A development tool, not an IdP.

It publishes discovery and JWKS over plain HTTP on loopback and signs tokens
with keys kept in a directory, so a token minted later by another process (the
``awsgate dev-idp token`` command) verifies against a server that is already
running, and ``rotate`` changes the signing key without a restart.

The server routes requests through a table of ``(method, path) -> handler``.
Besides discovery and JWKS it speaks the authorization code flow with PKCE
(S256 only) for the approval page's login: ``/authorize`` shows a form where
any subject and groups can be typed (there is no password: it is a dev tool),
and ``/token`` trades the one-time code for an ID token whose audience is the
client id.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey

log = logging.getLogger(__name__)

WARNING = "dev-idp is a development OIDC issuer for tests and demos; never use it in production"
KEY_TYPES: dict[str, tuple[type[RSAKey] | type[ECKey], Any]] = {
    "RS256": (RSAKey, 2048),
    "ES256": (ECKey, "P-256"),
}
KEYS_KEPT_PER_ALGORITHM = 2  # the current key and the one before, for tokens still in flight
MANIFEST = "keys.json"
JWKS_PATH = "/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"
AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/token"
CODE_TTL = 120.0  # seconds an authorization code may be traded for a token
LOGIN_TTL = 3600  # lifetime of the ID tokens issued to logins


class DevIdpError(Exception):
    """A dev IdP problem the user can fix (no issuer known, unknown algorithm, ...)."""


@dataclass(frozen=True)
class KeyEntry:
    kid: str
    alg: str
    created: float


class DevIdp:
    """Signing keys in ``keys_dir`` (0700; private keys 0600) and the issuer they sign for."""

    def __init__(self, keys_dir: str | os.PathLike[str]) -> None:
        self.keys_dir = Path(keys_dir)
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._loaded: dict[str, Key] = {}
        self._lock = threading.Lock()

    # -- keys ---------------------------------------------------------------

    def entries(self) -> list[KeyEntry]:
        """Published keys, oldest first."""
        return [KeyEntry(**item) for item in self._manifest()["keys"]]

    def current(self, alg: str = "RS256") -> KeyEntry:
        """The key new tokens of ``alg`` are signed with, created on first use."""
        entry = self._newest(alg)
        if entry is None:
            with self._manifest_lock():
                entry = self._newest(alg) or self._add([alg])[0]
        return entry

    def rotate(self, algorithms: Iterable[str] | None = None) -> list[KeyEntry]:
        """Add a new current key for each algorithm (default: each one in use, else RS256).

        Older keys stay published until ``KEYS_KEPT_PER_ALGORITHM`` newer ones exist.
        """
        with self._manifest_lock():
            in_use = list(dict.fromkeys(entry.alg for entry in self.entries()))
            return self._add(list(algorithms or in_use or ["RS256"]))

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        keys = []
        for entry in self.entries():
            try:
                keys.append(self._key(entry).as_dict(private=False))
            except FileNotFoundError:
                continue  # pruned by a rotation in another process a moment ago
        return {"keys": keys}

    def _newest(self, alg: str) -> KeyEntry | None:
        return next((entry for entry in reversed(self.entries()) if entry.alg == alg), None)

    def _add(self, algorithms: list[str]) -> list[KeyEntry]:
        """New keys, published in the manifest; the caller holds the manifest lock."""
        added = [self._generate(alg) for alg in algorithms]
        manifest = self._manifest()
        manifest["keys"] = self._prune(manifest["keys"] + [asdict(entry) for entry in added])
        self._write_manifest(manifest)
        return added

    def _generate(self, alg: str) -> KeyEntry:
        if alg not in KEY_TYPES:
            raise DevIdpError(f"unsupported algorithm {alg}; use one of {', '.join(KEY_TYPES)}")
        key_class, size = KEY_TYPES[alg]
        kid = f"{alg.lower()}-{secrets.token_hex(6)}"
        key = key_class.generate_key(size, {"kid": kid, "alg": alg, "use": "sig"})
        descriptor = os.open(self._key_path(kid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key.as_pem(private=True))
        return KeyEntry(kid, alg, time.time())

    def _prune(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        for item in reversed(items):
            if sum(other["alg"] == item["alg"] for other in kept) < KEYS_KEPT_PER_ALGORITHM:
                kept.append(item)
            else:
                self._key_path(item["kid"]).unlink(missing_ok=True)
        return list(reversed(kept))

    def _key(self, entry: KeyEntry) -> Key:
        with self._lock:
            key = self._loaded.get(entry.kid)
            if key is None:
                key = KEY_TYPES[entry.alg][0].import_key(
                    self._key_path(entry.kid).read_bytes(),
                    {"kid": entry.kid, "alg": entry.alg, "use": "sig"},
                )
                self._loaded[entry.kid] = key
            return key

    def _key_path(self, kid: str) -> Path:
        return self.keys_dir / f"{kid}.pem"

    # -- manifest: the key list and the issuer URL, shared between processes --

    @property
    def issuer(self) -> str | None:
        """The URL the last ``serve`` published, so later tokens default to it."""
        return self._manifest().get("issuer")

    def _set_issuer(self, url: str) -> None:
        with self._manifest_lock():
            manifest = self._manifest()
            manifest["issuer"] = url
            self._write_manifest(manifest)

    def _manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.keys_dir / MANIFEST).read_text())
        except FileNotFoundError:
            return {"issuer": None, "keys": []}

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        temporary = self.keys_dir / f".{MANIFEST}.{secrets.token_hex(4)}"
        temporary.write_text(json.dumps(manifest, indent=2))
        os.replace(temporary, self.keys_dir / MANIFEST)

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        descriptor = os.open(self.keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    # -- tokens ---------------------------------------------------------------

    def token(
        self,
        sub: str,
        groups: Iterable[str] = (),
        aud: str | list[str] = "awsgate",
        ttl: int = 3600,
        extra_claims: Mapping[str, Any] | None = None,
        alg: str = "RS256",
        kid: str | None = None,
        now: float | None = None,
        issuer: str | None = None,
    ) -> str:
        """A signed JWT. ``kid`` overrides the header's key id (the real key still signs)."""
        issuer = issuer or self.issuer
        if not issuer:
            raise DevIdpError("no issuer known: pass an issuer URL or serve the dev IdP first")
        entry = self.current(alg)
        now = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
        }
        groups = list(groups)
        if groups:
            claims["groups"] = groups
        claims.update(extra_claims or {})
        header = {"alg": alg, "kid": kid or entry.kid}
        return jwt.encode(header, claims, self._key(entry), algorithms=[alg])

    # -- serving --------------------------------------------------------------

    def serve(
        self, host: str = "127.0.0.1", port: int = 0, public_url: str | None = None
    ) -> DevIdpServer:
        """Start serving discovery and JWKS in a background thread; the issuer is its URL."""
        log.warning(WARNING)
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("dev-idp: binding %s, which is not loopback", host)
        server = DevIdpServer(self, host, port, public_url)
        self._set_issuer(server.url)
        self.current("RS256")
        server.start()
        log.warning("dev-idp: issuer %s serving keys from %s", server.url, self.keys_dir)
        return server


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any, max_age: int | None = None, status: int = 200) -> Response:
        headers = {"Content-Type": "application/json"}
        headers["Cache-Control"] = (
            f"public, max-age={max_age}" if max_age is not None else ("no-store")
        )
        return cls(status, json.dumps(document).encode(), headers)

    @classmethod
    def html(cls, page: str, status: int = 200) -> Response:
        return cls(
            status,
            page.encode(),
            {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
        )


@dataclass(frozen=True)
class _Code:
    """An authorization code waiting to be traded, bound to its client and PKCE challenge."""

    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    subject: str
    groups: tuple[str, ...]
    expires: float


class _LoginError(Exception):
    """A malformed authorization or token request; ``error`` is the OAuth error code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


Route = Callable[[Request], Response]


class DevIdpServer:
    """The dev IdP's HTTP server: a route table served by a ThreadingHTTPServer."""

    def __init__(
        self,
        idp: DevIdp,
        host: str,
        port: int,
        public_url: str | None = None,
        jwks_max_age: int = 300,
    ) -> None:
        self.idp = idp
        self.jwks_max_age = jwks_max_age
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", DISCOVERY_PATH): self._discovery,
            ("GET", JWKS_PATH): self._jwks,
            ("GET", AUTHORIZE_PATH): self._login_form,
            ("POST", AUTHORIZE_PATH): self._login,
            ("POST", TOKEN_PATH): self._token,
        }
        self._codes: dict[str, _Code] = {}
        self._codes_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        bound_host, bound_port = self._httpd.server_address[:2]
        shown_host = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.url = (public_url or f"http://{shown_host}:{bound_port}").removesuffix("/")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="awsgate-dev-idp", daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> DevIdpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, request: Request) -> Response:
        route = self.routes.get((request.method, request.path))
        if route is None:
            return Response(404, b'{"error":"not_found"}', {"Content-Type": "application/json"})
        return route(request)

    def _discovery(self, request: Request) -> Response:
        return Response.json(
            {
                "issuer": self.url,
                "jwks_uri": self.url + JWKS_PATH,
                "authorization_endpoint": self.url + AUTHORIZE_PATH,
                "token_endpoint": self.url + TOKEN_PATH,
                "response_types_supported": ["code", "id_token"],
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "none",
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "scopes_supported": ["openid"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted(KEY_TYPES),
            },
            max_age=self.jwks_max_age,
        )

    def _jwks(self, request: Request) -> Response:
        return Response.json(self.idp.jwks(), max_age=self.jwks_max_age)

    # -- authorization code + PKCE ---------------------------------------------

    def _login_form(self, request: Request) -> Response:
        """A sign-in form for any subject and groups: the dev stand-in for a real login."""
        params = {name: values[0] for name, values in request.query.items()}
        try:
            _check_authorization(params)
        except _LoginError as exc:
            return Response.html(_page("Sign-in refused", f"<p>{html.escape(str(exc))}</p>"), 400)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
            for name, value in params.items()
        )
        body = (
            f"<p>{html.escape(WARNING)}.</p>"
            f'<form method="post" action="{AUTHORIZE_PATH}">{hidden}'
            '<label>Subject <input name="sub" id="sub" required '
            f'value="{html.escape(params.get("login_hint", ""))}"></label> '
            '<label>Groups <input name="groups" id="groups" placeholder="sre,ops"></label> '
            '<button type="submit" id="sign-in">Sign in</button></form>'
        )
        return Response.html(_page("awsgate dev-idp sign-in", body))

    def _login(self, request: Request) -> Response:
        """Issue a one-time code for the typed subject and send the browser back."""
        form = {name: values[0] for name, values in parse_qs(request.body.decode()).items()}
        try:
            _check_authorization(form)
            subject = form.get("sub", "").strip()
            if not subject:
                raise _LoginError("invalid_request", "a subject is needed")
        except _LoginError as exc:
            return Response.html(_page("Sign-in refused", f"<p>{html.escape(str(exc))}</p>"), 400)
        code = secrets.token_urlsafe(24)
        groups = tuple(name.strip() for name in form.get("groups", "").split(",") if name.strip())
        with self._codes_lock:
            now = time.time()
            self._codes = {key: item for key, item in self._codes.items() if item.expires > now}
            self._codes[code] = _Code(
                form["client_id"],
                form["redirect_uri"],
                form["code_challenge"],
                form.get("nonce"),
                subject,
                groups,
                now + CODE_TTL,
            )
        answer = {"code": code, **({"state": form["state"]} if "state" in form else {})}
        separator = "&" if urlsplit(form["redirect_uri"]).query else "?"
        location = form["redirect_uri"] + separator + urlencode(answer)
        return Response(302, b"", {"Location": location, "Cache-Control": "no-store"})

    def _token(self, request: Request) -> Response:
        """Trade a code and its PKCE verifier for an ID token (once)."""
        form = {name: values[0] for name, values in parse_qs(request.body.decode()).items()}
        try:
            client_id = form.get("client_id") or _basic_client_id(request.headers)
            if form.get("grant_type") != "authorization_code":
                raise _LoginError("unsupported_grant_type", "only authorization_code")
            with self._codes_lock:
                code = self._codes.pop(form.get("code", ""), None)
            if code is None or code.expires < time.time():
                raise _LoginError("invalid_grant", "unknown, used or expired code")
            if client_id != code.client_id or form.get("redirect_uri") != code.redirect_uri:
                raise _LoginError("invalid_grant", "client or redirect_uri does not match")
            verifier = form.get("code_verifier", "")
            if not verifier or _s256(verifier) != code.challenge:
                raise _LoginError("invalid_grant", "PKCE verification failed")
        except _LoginError as exc:
            return Response.json({"error": exc.error, "error_description": str(exc)}, status=400)
        extra = {"nonce": code.nonce} if code.nonce else {}
        id_token = self.idp.token(
            code.subject,
            code.groups,
            aud=code.client_id,
            ttl=LOGIN_TTL,
            extra_claims=extra,
            issuer=self.url,
        )
        return Response.json(
            {
                "access_token": id_token,
                "id_token": id_token,
                "token_type": "Bearer",
                "expires_in": LOGIN_TTL,
                "scope": "openid",
            }
        )


def _check_authorization(params: Mapping[str, str]) -> None:
    """An authorization request the dev IdP serves: code flow, PKCE S256, http(s) redirect."""
    if params.get("response_type") != "code":
        raise _LoginError("unsupported_response_type", "only response_type=code")
    if not params.get("client_id"):
        raise _LoginError("invalid_request", "client_id is missing")
    if urlsplit(params.get("redirect_uri", "")).scheme not in ("http", "https"):
        raise _LoginError("invalid_request", "redirect_uri must be an http(s) URL")
    if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
        raise _LoginError("invalid_request", "PKCE with code_challenge_method=S256 is required")


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _basic_client_id(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value).decode().partition(":")[0] or None
    except (ValueError, UnicodeDecodeError):
        return None


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _handler_class(server: DevIdpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                self.command,
                parts.path,
                parse_qs(parts.query),
                self.headers,
                self.rfile.read(min(length, 1024 * 1024)),
            )
            try:
                response = server.handle(request)
            except Exception:
                log.exception("dev-idp: %s %s failed", self.command, parts.path)
                response = Response(
                    500, b'{"error":"server_error"}', {"Content-Type": "application/json"}
                )
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dev-idp: " + format, *args)

    return Handler
