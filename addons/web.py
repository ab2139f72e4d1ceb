"""The approval page and its HTTP API, served by ``awsgate serve``.

Approvers log in through the configured OIDC issuer (authorization code with
PKCE, via authlib); the ID token is validated like any token (signature,
issuer, audience = the client id, groups mapping) and is checked again at
every decision, so an expired login decides nothing. API clients send their
own token as ``Authorization: Bearer``. Every decision goes to the shared
store, so the gateways holding the calls see it within a poll.

A plain WSGI application on the standard library's threaded server: no
mitmproxy, nothing held but the logins of this process (a restart logs
approvers out; decisions are in the store).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from sqlalchemy import Engine

from addons.auth import oidc
from addons.config import GatewayConfig, WebLoginConfig
from addons.context import Principal
from addons.notify import Notifier
from addons.store import approvals
from addons.store.approvals import ApprovalRequest

log = logging.getLogger("awsgate")

SESSION_COOKIE = "awsgate_session"
LOGIN_TIMEOUT = 600.0  # seconds a login may take at the issuer
MAX_BODY = 64 * 1024
WINDOWS = ("", "15m", "1h", "8h", "1d")  # the page's choices; "" is a single use
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def json(cls, document: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(document, default=str).encode(), "application/json")

    @classmethod
    def redirect(cls, location: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(303, b"", headers=[("Location", location), *headers])


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    cookies: dict[str, str]

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            raise HttpError(413, "request body too large")
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        cookie = SimpleCookie()
        cookie.load(headers.get("cookie", ""))
        return cls(
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO") or "/",
            {name: values[0] for name, values in parse_qs(environ.get("QUERY_STRING", "")).items()},
            headers,
            body,
            {name: morsel.value for name, morsel in cookie.items()},
        )

    def form(self) -> dict[str, str]:
        return {name: values[0] for name, values in parse_qs(self.body.decode()).items()}


@dataclasses.dataclass
class _Login:
    """A browser session: the approver's ID token and a token for its forms."""

    token: str
    principal: Principal
    csrf: str


@dataclasses.dataclass
class _PendingLogin:
    verifier: str
    nonce: str
    next: str
    started: float


class LoginClient:
    """The page's OIDC client: authorization code with PKCE against one issuer."""

    def __init__(self, login: WebLoginConfig, gateway_config: GatewayConfig, base_url: str) -> None:
        self.config = login
        self.redirect_uri = f"{base_url}/callback"
        self.secret = (
            login.client_secret_file.read_text().strip() if login.client_secret_file else None
        )
        issuer = next(item for item in gateway_config.identity.issuers if item.url == login.issuer)
        # ID tokens are for this client: the audience is its id, the groups mapping the issuer's.
        self.validator = oidc.TokenValidator(
            [dataclasses.replace(issuer, audience=(login.client_id,))],
            clock_skew=gateway_config.identity.clock_skew,
        )
        self._endpoints: dict[str, str] | None = None

    def endpoints(self) -> dict[str, str]:
        if self._endpoints is None:
            fetched = oidc.fetch_url(self.config.issuer + oidc.DISCOVERY_PATH)
            document = json.loads(fetched.body)
            self._endpoints = {
                "authorize": document["authorization_endpoint"],
                "token": document["token_endpoint"],
            }
        return self._endpoints

    def session(self) -> OAuth2Session:
        return OAuth2Session(
            self.config.client_id,
            self.secret,
            scope=" ".join(self.config.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
        )

    def authorization_url(self, state: str, verifier: str, nonce: str) -> str:
        url, _ = self.session().create_authorization_url(
            self.endpoints()["authorize"], state=state, code_verifier=verifier, nonce=nonce
        )
        return url

    def finish(
        self, callback_url: str, state: str, pending: _PendingLogin
    ) -> tuple[str, Principal]:
        """Trade the code for an ID token and validate it; raises ``HttpError``."""
        try:
            answer = self.session().fetch_token(
                self.endpoints()["token"],
                authorization_response=callback_url,
                state=state,
                code_verifier=pending.verifier,
                timeout=oidc.FETCH_TIMEOUT,
            )
        except Exception as exc:  # authlib and requests raise many kinds: all mean "no login"
            log.warning(
                "awsgate: approver login failed at the token endpoint: %s", type(exc).__name__
            )
            raise HttpError(403, "the login could not be completed at the issuer") from exc
        token = answer.get("id_token")
        if not isinstance(token, str):
            raise HttpError(403, "the issuer returned no ID token")
        try:
            validated = self.validator.validate(token)
        except oidc.TokenError as exc:
            raise HttpError(403, f"the ID token was refused: {exc.reason}") from exc
        if validated.claims.get("nonce") != pending.nonce:
            raise HttpError(403, "the ID token is not for this login")
        return token, validated.principal()


class ApprovalSite:
    """The WSGI application: pages under ``/approvals``, JSON under ``/api/approvals``."""

    def __init__(
        self,
        gateway_config: GatewayConfig,
        engine: Engine,
        base_url: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = gateway_config.approvals
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self.secure_cookie = self.base_url.startswith("https://")
        identity = gateway_config.identity
        # API callers bring tokens like the CLI's: any configured issuer and audience.
        self.api_validator = oidc.TokenValidator(identity.issuers, clock_skew=identity.clock_skew)
        self.login = (
            LoginClient(self.settings.oidc, gateway_config, self.base_url)
            if self.settings.oidc
            else None
        )
        self.notifier = notifier or Notifier(self.settings.webhooks, self.settings.public_url)
        self._logins: dict[str, _Login] = {}
        self._pending: dict[str, _PendingLogin] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        try:
            request = Request.from_environ(environ)
            response = self.route(request)
        except HttpError as exc:
            response = self._error(exc.status, str(exc), environ.get("PATH_INFO", ""))
        except Exception:
            log.exception("awsgate: approval page error")
            response = self._error(500, "internal error", environ.get("PATH_INFO", ""))
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        start_response(f"{response.status} {_REASONS.get(response.status, 'Status')}", headers)
        return [response.body]

    def route(self, request: Request) -> Response:
        method, parts = request.method, [part for part in request.path.split("/") if part]
        match method, parts:
            case "GET", []:
                return Response.redirect("/approvals")
            case "GET", ["healthz"]:
                return Response.json({"ok": True})
            case "GET", ["login"]:
                return self.start_login(request.query.get("next", "/approvals"))
            case "GET", ["callback"]:
                return self.finish_login(request)
            case "POST", ["logout"]:
                return self.logout(request)
            case "GET", ["approvals"]:
                login = self.page_login(request)
                if isinstance(login, Response):
                    return login
                return self.list_page(login, request.query.get("status", approvals.PENDING))
            case "GET", ["approvals", approval_id]:
                login = self.page_login(request)
                if isinstance(login, Response):
                    return login
                return self.detail_page(login, self._find(approval_id), request.query.get("note"))
            case "POST", ["approvals", approval_id, "decision"]:
                return self.decide_from_page(request, approval_id)
            case "GET", ["api", "approvals"]:
                self.api_principal(request)
                status = request.query.get("status")
                if status is not None and status not in approvals.STATUSES:
                    raise HttpError(400, f"status must be one of {', '.join(approvals.STATUSES)}")
                approvals.sweep(self.engine)
                found = approvals.list_requests(self.engine, status=status)
                return Response.json([item.as_dict() for item in found])
            case "GET", ["api", "approvals", approval_id]:
                self.api_principal(request)
                return Response.json(self._find(approval_id).as_dict())
            case "POST", ["api", "approvals", approval_id, ("approve" | "deny") as verb]:
                approver = self.api_principal(request, writing=True)
                try:
                    document = json.loads(request.body or b"{}")
                except ValueError as exc:
                    raise HttpError(400, "the body must be JSON") from exc
                if not isinstance(document, dict):
                    raise HttpError(400, "the body must be a JSON object")
                decided = self.decide(
                    approval_id,
                    approver,
                    verb == "approve",
                    str(document.get("reason") or ""),
                    str(document.get("window") or ""),
                    "api",
                )
                return Response.json(decided.as_dict())
        raise HttpError(404, "not found")

    # --- deciding ---

    def decide(
        self,
        approval_id: str,
        approver: Principal,
        approve: bool,
        reason: str,
        window: str,
        via: str,
    ) -> ApprovalRequest:
        try:
            span = approvals.parse_window(window, self.settings.max_window) if window else None
            decided = approvals.decide(
                self.engine,
                approval_id,
                approver,
                approve=approve,
                reason=reason,
                via=via,
                grant_window=timedelta(seconds=self.settings.grant_window),
                window=span,
            )
        except (approvals.DecisionRefused, ValueError) as exc:
            raise HttpError(
                403 if isinstance(exc, approvals.DecisionRefused) else 400, str(exc)
            ) from exc
        log.warning("awsgate: %s %s by %s via %s", approval_id, decided.status, approver.name, via)
        self.notifier.decided(decided)
        return decided

    def decide_from_page(self, request: Request, approval_id: str) -> Response:
        login = self.page_login(request)
        if isinstance(login, Response):
            return login
        form = request.form()
        if not _same_token(form.get("csrf", ""), login.csrf):
            raise HttpError(403, "the form expired; reload the page")
        self._revalidate(request, login)
        verb = form.get("decision")
        if verb not in ("approve", "deny"):
            raise HttpError(400, "decision must be approve or deny")
        try:
            decided = self.decide(
                approval_id,
                login.principal,
                verb == "approve",
                form.get("reason", ""),
                form.get("window", ""),
                "web",
            )
        except HttpError as exc:
            if exc.status == 500:
                raise
            return Response.redirect(f"/approvals/{quote(approval_id)}?note={quote(str(exc))}")
        return Response.redirect(f"/approvals/{quote(decided.id)}?note={decided.status}")

    # --- who is asking ---

    def page_login(self, request: Request) -> _Login | Response:
        """The browser's login, or a redirect to log in."""
        with self._lock:
            login = self._logins.get(request.cookies.get(SESSION_COOKIE, ""))
        if login is None:
            if self.login is None:
                raise HttpError(403, "web login is not configured (approvals.oidc)")
            target = request.path + (f"?{_query(request.query)}" if request.query else "")
            return Response.redirect(f"/login?next={quote(target)}")
        return login

    def _revalidate(self, request: Request, login: _Login) -> None:
        assert self.login is not None
        try:
            self.login.validator.validate(login.token)
        except oidc.TokenError as exc:
            with self._lock:
                self._logins.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            raise HttpError(403, f"your login ended ({exc.reason}); log in again") from exc

    def api_principal(self, request: Request, writing: bool = False) -> Principal:
        """A bearer token's principal; a browser login too, with its CSRF header for writes."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            try:
                return self.api_validator.validate(token.strip()).principal()
            except oidc.TokenError as exc:
                raise HttpError(401, f"token refused: {exc.reason}") from exc
        with self._lock:
            login = self._logins.get(request.cookies.get(SESSION_COOKIE, ""))
        if login is None:
            raise HttpError(401, "send Authorization: Bearer <your OIDC token>")
        if writing:
            if not _same_token(request.headers.get("x-csrf-token", ""), login.csrf):
                raise HttpError(403, "X-CSRF-Token is missing or wrong")
            self._revalidate(request, login)
        return login.principal

    # --- login ---

    def start_login(self, next_path: str) -> Response:
        if self.login is None:
            raise HttpError(403, "web login is not configured (approvals.oidc)")
        state, verifier, nonce = generate_token(32), generate_token(48), generate_token(24)
        now = time.monotonic()
        with self._lock:
            self._pending = {
                key: item
                for key, item in self._pending.items()
                if now - item.started < LOGIN_TIMEOUT
            }
            self._pending[state] = _PendingLogin(verifier, nonce, _local_path(next_path), now)
        return Response.redirect(self.login.authorization_url(state, verifier, nonce))

    def finish_login(self, request: Request) -> Response:
        if self.login is None:
            raise HttpError(403, "web login is not configured (approvals.oidc)")
        if "error" in request.query:
            raise HttpError(403, f"the issuer refused the login: {request.query['error']}")
        state = request.query.get("state", "")
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or time.monotonic() - pending.started >= LOGIN_TIMEOUT:
            raise HttpError(403, "unknown or expired login; start again")
        callback = f"{self.login.redirect_uri}?{_query(request.query)}"
        token, principal = self.login.finish(callback, state, pending)
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._logins[session_id] = _Login(token, principal, secrets.token_urlsafe(24))
        log.warning("awsgate: approver %s logged in to the approval page", principal.name)
        return Response.redirect(pending.next, [("Set-Cookie", self._cookie(session_id))])

    def logout(self, request: Request) -> Response:
        with self._lock:
            self._logins.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        return Response.redirect("/approvals", [("Set-Cookie", self._cookie("", expire=True))])

    def _cookie(self, value: str, expire: bool = False) -> str:
        attributes = "; Path=/; HttpOnly; SameSite=Lax"
        if self.secure_cookie:
            attributes += "; Secure"
        if expire:
            attributes += "; Max-Age=0"
        return f"{SESSION_COOKIE}={value}{attributes}"

    # --- pages ---

    def _find(self, approval_id: str) -> ApprovalRequest:
        approvals.sweep(self.engine)
        found = approvals.get(self.engine, approval_id)
        if found is None:
            raise HttpError(404, f"no approval request {approval_id}")
        return found

    def list_page(self, login: _Login, status: str) -> Response:
        if status not in approvals.STATUSES and status != "all":
            raise HttpError(400, f"status must be all or one of {', '.join(approvals.STATUSES)}")
        approvals.sweep(self.engine)
        found = approvals.list_requests(self.engine, None if status == "all" else status)
        tabs = " ".join(
            f'<a href="/approvals?status={name}"{" class=on" if name == status else ""}>{name}</a>'
            for name in (*approvals.STATUSES, "all")
        )
        rows = "".join(
            f'<tr class="approval" data-id="{_e(item.id)}">'
            f'<td><a href="/approvals/{_e(item.id)}">{_e(item.id)}</a></td>'
            f"<td>{_e(item.status)}</td><td>{_e(item.principal)}</td><td>{_e(item.action)}</td>"
            f"<td>{_e(', '.join(item.resources) or '*')}</td><td>{_e(item.rule)}</td>"
            f"<td>{_e(_when(item.created))}</td></tr>"
            for item in found
        )
        table = (
            "<table><tr><th>id</th><th>status</th><th>principal</th><th>action</th>"
            f"<th>resources</th><th>rule</th><th>created</th></tr>{rows}</table>"
            if found
            else f'<p id="empty">No {_e(status)} requests.</p>'
        )
        # Pending requests come and go while an approver looks: refresh that list.
        return self._page(
            "Approval requests",
            login,
            f"<nav>{tabs}</nav>{table}",
            refresh=status == approvals.PENDING,
        )

    def detail_page(self, login: _Login, item: ApprovalRequest, note: str | None) -> Response:
        fields = [
            ("status", item.status),
            ("principal", item.principal),
            ("issuer", item.issuer),
            ("groups", ", ".join(item.groups)),
            ("session", item.session_id),
            ("role", item.role),
            ("action", item.action),
            ("region", item.region),
            ("resources", ", ".join(item.resources) or "*"),
            ("rule", item.rule),
            ("approvers", ", ".join(item.approvers)),
            ("created", _when(item.created)),
            ("expires", _when(item.expires)),
            ("decided by", item.decided_by),
            ("decided at", _when(item.decided_at)),
            ("reason", item.reason),
            ("usable until", _when(item.grant_until)),
            ("used by call", item.used_by),
            ("held call", item.hold),
        ]
        rows = "".join(
            f'<tr><th>{_e(name)}</th><td id="f-{name.replace(" ", "-")}">{_e(value)}</td></tr>'
            for name, value in fields
            if value
        )
        parameters = json.dumps(item.parameters, indent=2, sort_keys=True, default=str)
        body = (
            f'<p id="note" class="note">{_e(note)}</p>' if note else ""
        ) + f"<table>{rows}</table><h2>Parameters</h2><pre>{_e(parameters)}</pre>"
        if item.status == approvals.PENDING:
            refusal = approvals.refusal(item, login.principal)
            if refusal is not None:
                body += f'<p id="not-yours" class="note">{_e(refusal)}</p>'
            else:
                options = "".join(
                    f'<option value="{window}">{window or "this call only"}</option>'
                    for window in WINDOWS
                )
                body += (
                    f'<form method="post" action="/approvals/{_e(item.id)}/decision">'
                    f'<input type="hidden" name="csrf" value="{_e(login.csrf)}">'
                    '<p><label>Reason <input name="reason" id="reason" required size="60">'
                    "</label></p>"
                    f'<p><label>Allow for <select name="window" id="window">{options}</select>'
                    "</label></p>"
                    '<button name="decision" value="approve" id="approve">Approve</button> '
                    '<button name="decision" value="deny" id="deny">Deny</button></form>'
                )
        return self._page(f"Approval {item.id}", login, body)

    def _page(self, title: str, login: _Login, body: str, refresh: bool = False) -> Response:
        header = (
            f'<header>Signed in as <span id="who">{_e(login.principal.name)}</span> '
            f'<form method="post" action="/logout" style="display:inline">'
            '<button>Log out</button></form> · <a href="/approvals">pending</a></header>'
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            + ('<meta http-equiv="refresh" content="15">' if refresh else "")
            + f"<title>{_e(title)} · awsgate</title><style>{_STYLE}</style></head><body>"
            f"{header}<h1>{_e(title)}</h1>{body}</body></html>"
        )
        return Response(200, page.encode())

    def _error(self, status: int, message: str, path: str) -> Response:
        if path.startswith("/api/"):
            return Response.json({"error": message}, status)
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{status}</title></head>"
            f'<body><h1>{status}</h1><p id="error">{_e(message)}</p>'
            '<p><a href="/approvals">Approval requests</a></p></body></html>'
        )
        return Response(status, page.encode())


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _query(query: dict[str, str]) -> str:
    return "&".join(f"{quote(key)}={quote(value)}" for key, value in query.items())


def _same_token(given: str, expected: str) -> bool:
    """Constant-time, and as bytes: ``compare_digest`` raises on non-ASCII text."""
    return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _local_path(target: str) -> str:
    """Only paths on this site: ``next`` must not send a fresh login elsewhere.

    Browsers read a backslash as a slash (``/\\evil.example``), and a control
    character would end the Location header: both are refused, not cleaned.
    """
    unsafe = any(char == "\\" or ord(char) < 0x20 or ord(char) == 0x7F for char in target)
    parts = urlsplit(target)
    if (
        unsafe
        or parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
    ):
        return "/approvals"
    return target


_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    500: "Internal Server Error",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
nav a{margin-right:.8em}nav a.on{font-weight:bold}.note{background:#ffd;padding:.5em}
pre{background:#f4f4f4;padding:.5em}header{float:right}td:first-child{white-space:nowrap}
"""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("awsgate serve: " + format, *args)


def make_site_server(
    gateway_config: GatewayConfig, engine: Engine, host: str, port: int
) -> tuple[WSGIServer, ApprovalSite]:
    """A server for the page on ``host:port`` (0: any free port), not yet serving."""
    server = make_server(host, port, _placeholder, _ThreadingServer, _QuietHandler)
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    base_url = gateway_config.approvals.public_url or f"http://{shown}:{bound}"
    site = ApprovalSite(gateway_config, engine, base_url)
    server.set_app(site)
    return server, site


def _placeholder(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]
