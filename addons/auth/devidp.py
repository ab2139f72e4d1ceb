"""A small local OIDC issuer for tests and the demo. A development tool, not an IdP.

It publishes discovery and JWKS over plain HTTP on loopback and signs tokens
with keys kept in a directory, so a token minted later by another process (the
``awsgate dev-idp token`` command) verifies against a server that is already
running, and ``rotate`` changes the signing key without a restart.

The server routes requests through a table of ``(method, path) -> handler`` so
further endpoints (authorization code + PKCE for approver login) can be added
without touching the plumbing.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from urllib.parse import parse_qs, urlsplit

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
    def json(cls, document: Any, max_age: int | None = None) -> Response:
        headers = {"Content-Type": "application/json"}
        if max_age is not None:
            headers["Cache-Control"] = f"public, max-age={max_age}"
        return cls(200, json.dumps(document).encode(), headers)


Route = Callable[[Request], Response]


class DevIdpServer:
    """The dev IdP's HTTP server: a route table served by a ThreadingHTTPServer."""

    def __init__(
        self, idp: DevIdp, host: str, port: int, public_url: str | None = None,
        jwks_max_age: int = 300,
    ) -> None:
        self.idp = idp
        self.jwks_max_age = jwks_max_age
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", DISCOVERY_PATH): self._discovery,
            ("GET", JWKS_PATH): self._jwks,
        }
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
        return Response.json({
            "issuer": self.url,
            "jwks_uri": self.url + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted(KEY_TYPES),
        }, max_age=self.jwks_max_age)

    def _jwks(self, request: Request) -> Response:
        return Response.json(self.idp.jwks(), max_age=self.jwks_max_age)


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
                self.command, parts.path, parse_qs(parts.query), self.headers,
                self.rfile.read(min(length, 1024 * 1024)),
            )
            try:
                response = server.handle(request)
            except Exception:
                log.exception("dev-idp: %s %s failed", self.command, parts.path)
                response = Response(500, b'{"error":"server_error"}',
                                    {"Content-Type": "application/json"})
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dev-idp: " + format, *args)

    return Handler
