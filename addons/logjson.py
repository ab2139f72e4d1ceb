"""Structured logs: with ``log_format: json`` the gateway's log is one JSON object per line.

Every line of the ``awsgate`` logger carries the request and session id of
the call it was written for (kept in a context variable that this addon,
first in the chain, sets in every flow hook: the later addons' hooks for the
same event run in the same task), and each finished AWS call gets one access
line. Only what the record may hold goes in: ids, the principal's subject,
the action, the decision and rule, status and timing; never a header, a body
or a token. mitmproxy's own log lines keep their text format (``-q`` or
``--set termlog_verbosity=warn`` quietens them).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Set
from datetime import UTC, datetime
from typing import IO, Any

from mitmproxy import http

from addons import context, settings
from addons.context import GateContext
from addons.hooks import fail_closed

LOGGER = "awsgate"
# The flow, not its context: Scope creates the context after this addon's requestheaders.
_current: contextvars.ContextVar[http.HTTPFlow | None] = contextvars.ContextVar(
    "awsgate_flow", default=None
)
# LogRecord attributes that are not extras passed with ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def call_fields(gate: GateContext) -> dict[str, Any]:
    """The ids that tie a log line to its call in the record store."""
    principal = gate.principal
    return {
        "request_id": gate.request_id,
        "session_id": principal.session_id if principal else None,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message, the call's ids and any extras."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.replica:
            entry["replica"] = self.replica
        flow = _current.get()
        gate = context.find(flow) if flow is not None else None
        if gate is not None:
            entry.update(call_fields(gate))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's message may quote a token or a body.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, separators=(",", ":"))


class JsonLogs:
    """First in the chain: with JSON logs on, its ``CallLines`` sets the current call for
    log lines and writes the access log."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.handler: logging.Handler | None = None
        # The flow hooks, only while JSON logs are on: text logs need neither.
        self.addons: list[CallLines] = []

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        self._uninstall()
        if gateway_config.log_format == "json":
            self._install(gateway_config.replica_id)

    def done(self) -> None:
        self._uninstall()

    def _install(self, replica: str | None) -> None:
        handler = logging.StreamHandler(self.stream or sys.stderr)
        handler.setFormatter(JsonFormatter(replica))
        handler.setLevel(logging.INFO)
        log = logging.getLogger(LOGGER)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # not also as text through mitmproxy's handler
        self.handler = handler
        self.addons = [CallLines()]

    def _uninstall(self) -> None:
        self.addons = []
        if self.handler is not None:
            log = logging.getLogger(LOGGER)
            log.removeHandler(self.handler)
            log.propagate = True
            self.handler = None


class CallLines:
    """Sets the current call for every flow event, and writes each call's access line."""

    @staticmethod
    def _enter(flow: http.HTTPFlow) -> None:
        _current.set(flow)

    # Every flow event: the addons after this one log within the same call.
    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._enter(flow)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        self._enter(flow)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._enter(flow)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._enter(flow)
        self._access(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._enter(flow)
        self._access(flow)

    def _access(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is None or flow.metadata.get("awsgate-logged"):
            return
        flow.metadata["awsgate-logged"] = True
        logging.getLogger(LOGGER).info("call", extra=access_fields(flow, gate))


def access_fields(flow: http.HTTPFlow, gate: GateContext) -> dict[str, Any]:
    """The access line of one call: who did what, the outcome, how long it took."""
    principal, operation, decision = gate.principal, gate.operation, gate.decision
    response = flow.response
    end = (response.timestamp_end if response is not None else None) or time.time()
    return {
        "event": "call",
        "subject": principal.subject if principal else None,
        "action": operation.action if operation else None,
        "region": operation.region if operation else None,
        "decision": gate.outcome,
        "rule": decision.rule if decision else None,
        "refusal": gate.refusal.code if gate.refusal else None,
        "approval_id": gate.approval_id,
        "status": response.status_code if response is not None else None,
        "duration_ms": round(1000 * (end - flow.request.timestamp_start), 2),
        "error": flow.error.msg if flow.error and response is None else None,
    }
