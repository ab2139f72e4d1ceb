"""Webhook notifications for approval requests: when one is opened and when it is decided.

Two forms: Slack incoming-webhook JSON (a ``text`` message) and a generic JSON
document with the whole request. Posts go out from one background thread, so
neither the gateway's event loop nor a command waits on a slow receiver; a
failed post is logged, never fatal. A webhook URL often is the secret (Slack
puts the token in its path), so logs name only its host.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from addons.config import WebhookConfig
from addons.store.approvals import ApprovalRequest

log = logging.getLogger("awsgate")

CREATED, DECIDED = "approval.requested", "approval.decided"
POST_TIMEOUT = 5.0
# How long a command that stops waits for its queued notifications to be sent.
FLUSH_TIMEOUT = 5.0
QUEUE_LIMIT = 1000

Post = Callable[[str, bytes], None]


def link(public_url: str | None, approval_id: str) -> str | None:
    """The approval page for one request, if the page's address is configured."""
    return f"{public_url.rstrip('/')}/approvals/{approval_id}" if public_url else None


def approve_command(approval_id: str) -> str:
    return f"awsgate approvals approve {approval_id} --reason TEXT"


def json_message(event: str, request: ApprovalRequest, page: str | None) -> dict[str, Any]:
    """The generic form: the event, the whole request (parameters redacted), the page."""
    return {"event": event, "url": page, "approval": request.as_dict()}


def slack_message(event: str, request: ApprovalRequest, page: str | None) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` in Slack's mrkdwn)."""
    resources = ", ".join(request.resources) or "*"
    action = _escape(request.action or "")
    what = f"`{_escape(request.principal)}` → `{action}` on {_escape(resources)}"
    if event == CREATED:
        text = (
            f":hourglass: *Approval {request.id} requested* by rule "
            f"`{_escape(request.rule or '')}`: {what}\n"
            f"Approve with `{approve_command(request.id)}`"
        )
    else:
        verb = "approved" if request.status in ("approved", "used") else request.status
        text = (
            f"*Approval {request.id} {verb}* by `{_escape(request.decided_by or '')}`: "
            f"{_escape(request.reason or '')}\n{what}"
        )
    if page:
        text += f"\n<{page}|Open the approval page>"
    return {"text": text}


def _escape(text: str) -> str:
    """Slack's three control characters, so an agent's parameters cannot forge links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


FORMATS = {"json": json_message, "slack": slack_message}


def post_json(url: str, body: bytes, timeout: float = POST_TIMEOUT) -> None:
    """POST ``body``; raises ``OSError`` (``urllib.error.URLError``) on any failure."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read(64 * 1024)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Notifier:
    """Posts approval events to the configured webhooks from a background thread."""

    def __init__(
        self,
        webhooks: Sequence[WebhookConfig],
        public_url: str | None = None,
        post: Post = post_json,
    ) -> None:
        self.webhooks = tuple(webhooks)
        self.public_url = public_url
        self._post = post
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def created(self, request: ApprovalRequest) -> None:
        self._notify(CREATED, request)

    def decided(self, request: ApprovalRequest) -> None:
        self._notify(DECIDED, request)

    def _notify(self, event: str, request: ApprovalRequest) -> None:
        page = link(self.public_url, request.id)
        for webhook in self.webhooks:
            body = json.dumps(FORMATS[webhook.format](event, request, page), default=str)
            try:
                self._queue.put_nowait((webhook.url, body.encode()))
            except queue.Full:
                log.error("awsgate: webhook queue full; %s for %s not sent", event, request.id)
                continue
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="awsgate-webhooks", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            url, body = item
            try:
                self._post(url, body)
            except Exception as exc:  # a receiver's failure never stops the notifier
                log.error("awsgate: webhook to %s failed: %s", _where(url), _reason(exc))

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return type(exc).__name__
