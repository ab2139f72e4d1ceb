"""The bench's stand-in AWS: moto under waitress, its answers to small reads replayed.

moto spends about 6.6 ms of CPU on each of these calls here, more than the proxy
under test, and it shares the machine with that proxy: left as it is, moto would be
the bottleneck and the bench would measure it. So the workload's small read-only
calls are answered by moto the first time, and from then on replayed from memory
(1.2 ms a call) once moto's own signature check
(``moto.iam.access_control.IAMRequest``) accepts the call. A call that fails the
check, and every other call (the large S3 object), goes to moto, which answers it
in full. Bench only (and its own test): never used by the gateway.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

# The workload's read-only calls: X-Amz-Target for the JSON protocols, Action for query.
REPLAYED = frozenset({"DynamoDB_20120810.GetItem", "GetCallerIdentity"})
SMALL = 64 * 1024  # larger bodies are never replayed, nor read here

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class ReplaySmallReads:
    """WSGI middleware in front of moto's app."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]], account: str):
        self.app = app
        self.account = account
        self.answers: dict[tuple[str, str, bytes], tuple[str, list[tuple[str, str]], bytes]] = {}

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        call = _replayable_call(environ)
        if call is None:
            return self.app(environ, start_response)
        operation, body = call
        key = (environ.get("HTTP_HOST", ""), operation, body)
        answer = self.answers.get(key)
        if answer is not None and self._signature_ok(environ, operation, body):
            status, headers, content = answer
            start_response(status, headers)
            return [content]
        return self._record(key, environ, start_response)

    def _record(
        self, key: tuple[str, str, bytes], environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Let moto answer, and keep a successful answer for the next identical call."""
        seen: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            seen.update(status=status, headers=headers)
            return start_response(status, headers, *args)

        content = b"".join(self.app(environ, keep))
        if seen.get("status", "").startswith("200"):
            self.answers[key] = (seen["status"], seen["headers"], content)
        return [content]

    def _signature_ok(self, environ: Environ, operation: str, body: bytes) -> bool:
        from moto.iam.access_control import IAMRequest
        from werkzeug.datastructures import EnvironHeaders

        headers = dict(EnvironHeaders(environ))
        if "Authorization" not in headers:
            return False
        try:
            IAMRequest(  # it signs ``body`` (never empty here) and ignores ``data``
                account_id=self.account,
                method=environ["REQUEST_METHOD"],
                path=environ.get("PATH_INFO", "/"),
                data={},
                body=body,
                headers=headers,
                action=operation.rpartition(".")[2],
            ).check_signature()
        except Exception:
            return False  # moto answers it, with its own error
        return True


def _replayable_call(environ: Environ) -> tuple[str, bytes] | None:
    """(operation, body) of a small read-only call; the body is put back for moto."""
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    form = environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded")
    if length > SMALL or not (target in REPLAYED or (form and not target)):
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    operation = target or dict(parse_qsl(body.decode("utf-8", "replace"))).get("Action", "")
    return (operation, body) if operation in REPLAYED else None


def serve(port: int, threads: int, account: str) -> None:
    """Runs in its own process: moto behind a keep-alive WSGI server."""
    import waitress
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = ReplaySmallReads(DomainDispatcherApplication(create_backend_app), account)
    waitress.serve(
        app,
        host="127.0.0.1",
        port=port,
        threads=threads,
        channel_timeout=120,
        connection_limit=1000,
        _quiet=True,
    )
