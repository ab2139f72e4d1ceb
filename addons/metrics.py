"""Metrics: the gateway's operational signals on a Prometheus endpoint.

Calls by decision, a latency histogram, the calls held for approval right
now, and store errors, all read from the shared context once a call is over.
The endpoint runs only when the config has ``metrics: {listen: HOST:PORT}``;
each gateway has its own registry, so replicas are scraped one by one (label
them by target, or set ``replica_id``, which every series carries).

Placed just before the approval addon: its request hooks see the policy's
decision before the call is held, and the held-calls gauge counts the calls
under review whose hold has not ended yet (the approval addon notes the hold's
end in ``gate.timings["approval"]``).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Set
from typing import Any

from mitmproxy import exceptions, http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from addons import context, settings
from addons.context import GateContext
from addons.hooks import fail_closed

logger = logging.getLogger("awsgate")

# Seconds; small API calls sit in the low buckets, held calls and large objects in the top ones.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_COUNTED = "awsgate-metrics-counted"


class GatewayMetrics:
    """The series themselves, in a registry of their own (one per gateway, one per test)."""

    def __init__(self, replica: str = "") -> None:
        self.registry = CollectorRegistry()
        labels = {"replica": replica}
        self.requests = Counter(
            "awsgate_requests",
            "AWS calls handled, by decision (allow, deny, review, refused-identity, error).",
            ["replica", "decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "awsgate_request_duration_seconds",
            "From the request's first byte to the response's last, as the agent sees it.",
            ["replica"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.store_errors = Counter(
            "awsgate_store_errors",
            "Calls refused because the record store could not be read or written.",
            ["replica"],
            registry=self.registry,
        ).labels(**labels)
        self.held = Gauge(
            "awsgate_approvals_held",
            "Calls under review held open for a human decision right now.",
            ["replica"],
            registry=self.registry,
        ).labels(**labels)
        self.replica = replica
        self._by_outcome: dict[str, Counter] = {}
        # Calls sent for review whose flow is not over, kept weakly: a flow mitmproxy
        # drops without an end event must not hold the gauge up forever.
        # (Keyed by id: the context is a dataclass, equal by value, so not hashable.)
        self._under_review: weakref.WeakValueDictionary[int, GateContext] = (
            weakref.WeakValueDictionary()
        )
        self.held.set_function(self.held_now)

    def held_now(self) -> int:
        return sum(1 for gate in self._under_review.values() if "approval" not in gate.timings)

    def decided(self, gate: GateContext) -> None:
        """The policy has spoken; a call under review is about to be held."""
        decision = gate.decision
        if decision is not None and decision.effect == "review":
            self._under_review[id(gate)] = gate

    def finished(self, gate: GateContext, seconds: float) -> None:
        self._under_review.pop(id(gate), None)
        outcome = gate.outcome
        counter = self._by_outcome.get(outcome)
        if counter is None:  # labels() takes a lock and builds a key: once per outcome
            counter = self._by_outcome[outcome] = self.requests.labels(
                replica=self.replica, decision=outcome
            )
        counter.inc()
        self.latency.observe(max(0.0, seconds))
        if gate.store_failed:
            self.store_errors.inc()


def _duration(flow: http.HTTPFlow) -> float:
    request, response = flow.request, flow.response
    end = (response.timestamp_end if response is not None else None) or time.time()
    return end - request.timestamp_start


class Metrics:
    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.listen: tuple[str, int] | None = None
        self._server: Any = None
        # The flow hooks, only while the endpoint runs: nobody else reads the series.
        self.addons: list[CallCounter] = []

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        replica = gateway_config.replica_id or ""
        if replica != self.metrics.replica:
            self.metrics = GatewayMetrics(replica)
        self._stop_server()
        self.listen = gateway_config.metrics_listen
        if self.listen is not None:
            host, port = self.listen
            try:
                self._server, _ = start_http_server(port, host, registry=self.metrics.registry)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"awsgate: metrics.listen {host}:{port}: {exc.strerror or exc}"
                ) from exc
            logger.info("awsgate: metrics on http://%s:%d/metrics", host, self.port)
            self.addons = [CallCounter(self.metrics)]

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on (the real one when the config said 0)."""
        return self._server.server_port if self._server is not None else None

    def done(self) -> None:
        self._stop_server()

    def _stop_server(self) -> None:
        self.addons = []
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class CallCounter:
    """Counts every call once it is over, and the calls held for review meanwhile."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None and gate.streamed:
            self.metrics.decided(gate)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None and not gate.streamed:
            self.metrics.decided(gate)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is None or flow.metadata.get(_COUNTED):
            return
        flow.metadata[_COUNTED] = True
        self.metrics.finished(gate, _duration(flow))
