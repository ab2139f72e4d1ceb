"""Operational signals: the Prometheus endpoint, JSON logs, and their config keys."""

from __future__ import annotations

import io
import json
import logging
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mitmproxy import exceptions, hooks
from mitmproxy.test import taddons, tflow

from addons import config, settings
from addons.context import METADATA_KEY, Decision, GateContext, Operation, Principal, Refusal
from addons.logjson import JsonFormatter, JsonLogs
from addons.metrics import GatewayMetrics, Metrics

AGENT = Principal("https://issuer.example", "agent-1", frozenset({"agents"}), session_id="ses-1")
GET_ITEM = Operation("dynamodb", "GetItem", "us-east-1", "dynamodb", protocol="json")
FAKE_TOKEN = "FAKE-TOKEN-9d2e7b"  # distinctive, so a test can prove it is never logged


def gate(**fields: object) -> GateContext:
    return GateContext(principal=AGENT, operation=GET_ITEM, **fields)  # type: ignore[arg-type]


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"replica": metrics.replica, **labels})


def flow_with(context: GateContext) -> tflow.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.headers["Authorization"] = f"Bearer {FAKE_TOKEN}"
    flow.request.timestamp_start = 1000.0
    assert flow.response is not None
    flow.response.timestamp_end = 1000.25
    flow.metadata[METADATA_KEY] = context
    return flow


# -- what is counted ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "label"),
    [
        (gate(decision=Decision("allow", "r")), "allow"),
        (gate(decision=Decision("deny", "r")), "deny"),
        (gate(decision=Decision("review", "r")), "review"),
        (gate(refusal=Refusal(403, "AccessDenied", "no", "refused-identity")), "refused-identity"),
        (GateContext(), "error"),
        (gate(), "allow"),  # answered by the gateway itself (a minted session)
    ],
)
def test_decision_labels_match_the_record(context: GateContext, label: str) -> None:
    assert context.outcome == label


def test_finished_calls_are_counted_by_decision_with_their_latency() -> None:
    metrics = GatewayMetrics("replica-a")
    metrics.finished(gate(decision=Decision("allow", "r")), 0.02)
    metrics.finished(gate(decision=Decision("allow", "r")), 0.3)
    metrics.finished(gate(decision=Decision("deny", "r")), 0.001)
    assert value(metrics, "awsgate_requests_total", decision="allow") == 2
    assert value(metrics, "awsgate_requests_total", decision="deny") == 1
    assert value(metrics, "awsgate_request_duration_seconds_count") == 3
    assert value(metrics, "awsgate_request_duration_seconds_bucket", le="0.025") == 2
    assert value(metrics, "awsgate_request_duration_seconds_sum") == pytest.approx(0.321)


def test_store_errors_are_the_503_refusals_only() -> None:
    metrics = GatewayMetrics()
    unwritable = Refusal(503, "AccessDenied", "awsgate: the store cannot be written", "error")
    internal = Refusal(500, "InternalFailure", "awsgate: internal error", "error")
    metrics.finished(gate(refusal=unwritable), 0.01)
    metrics.finished(gate(refusal=internal), 0.01)
    assert value(metrics, "awsgate_store_errors_total") == 1
    assert value(metrics, "awsgate_requests_total", decision="error") == 2


def test_held_gauge_counts_reviews_until_their_hold_ends() -> None:
    metrics = GatewayMetrics()
    first, second = gate(decision=Decision("review", "r")), gate(decision=Decision("review", "r"))
    allowed = gate(decision=Decision("allow", "r"))
    for context in (first, second, allowed):
        metrics.decided(context)
    assert value(metrics, "awsgate_approvals_held") == 2
    first.timings["approval"] = 1.5  # the approval addon ended its hold
    assert value(metrics, "awsgate_approvals_held") == 1
    metrics.finished(second, 2.0)  # the agent hung up, or the call was refused
    assert value(metrics, "awsgate_approvals_held") == 0


# -- the addon in mitmproxy ---------------------------------------------------------------


def write_config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "awsgate.yaml"
    body = {"certs": str(tmp_path / "certs"), "store": "sqlite:///:memory:", **extra}
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Metrics]:
    addon = Metrics()
    path = write_config(tmp_path, metrics={"listen": "127.0.0.1:0"}, replica_id="replica-a")
    with taddons.context() as tctx:
        tctx.options.add_option(settings.OPTION, str, str(path), "the awsgate config")
        tctx.master.addons.add(addon)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))
        try:
            yield addon
        finally:
            addon.done()


def scrape(port: int | None) -> str:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def test_the_endpoint_serves_each_call_once(running: Metrics) -> None:
    flow = flow_with(gate(decision=Decision("allow", "agents")))
    [counter] = running.addons  # flow hooks while the endpoint runs
    counter.request(flow)
    counter.response(flow)
    counter.error(flow)  # a late error event for the same flow is not a second call
    text = scrape(running.port)
    assert 'awsgate_requests_total{decision="allow",replica="replica-a"} 1.0' in text
    assert 'awsgate_request_duration_seconds_bucket{le="0.25",replica="replica-a"} 1.0' in text
    assert 'awsgate_approvals_held{replica="replica-a"} 0.0' in text
    assert FAKE_TOKEN not in text


def test_the_endpoint_stops_with_the_gateway(running: Metrics) -> None:
    port = running.port
    running.done()
    with pytest.raises(OSError):
        scrape(port)
    assert running.addons == []  # and stops counting


def test_a_taken_port_stops_the_gateway_with_a_clear_error(
    running: Metrics, tmp_path: Path
) -> None:
    addon = Metrics()
    path = write_config(tmp_path, metrics={"listen": f"127.0.0.1:{running.port}"})
    with taddons.context() as tctx:
        tctx.options.add_option(settings.OPTION, str, str(path), "the awsgate config")
        tctx.master.addons.add(addon)
        with pytest.raises(exceptions.OptionsError, match=r"metrics\.listen"):
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))


def test_flows_the_gateway_did_not_take_are_not_counted(running: Metrics) -> None:
    flow = tflow.tflow(resp=True)  # no awsgate context: not AWS traffic
    [counter] = running.addons
    counter.response(flow)
    assert "awsgate_requests_total{" not in scrape(running.port)


# -- JSON logs ----------------------------------------------------------------------------


@pytest.fixture
def json_logs(tmp_path: Path) -> Iterator[tuple[JsonLogs, io.StringIO]]:
    stream = io.StringIO()
    addon = JsonLogs(stream)
    path = write_config(tmp_path, log_format="json", replica_id="replica-b")
    with taddons.context() as tctx:
        tctx.options.add_option(settings.OPTION, str, str(path), "the awsgate config")
        tctx.master.addons.add(addon)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))
        try:
            yield addon, stream
        finally:
            addon.done()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_call_gets_one_access_line_with_its_ids_and_no_secret(
    json_logs: tuple[JsonLogs, io.StringIO],
) -> None:
    addon, stream = json_logs
    context = gate(decision=Decision("allow", "agents"))
    flow = flow_with(context)
    [call_lines] = addon.addons
    call_lines.response(flow)
    call_lines.error(flow)
    [line] = lines(stream)
    assert line["message"] == "call"
    assert line["request_id"] == context.request_id
    assert line["session_id"] == "ses-1"
    assert line["replica"] == "replica-b"
    assert line["action"] == "dynamodb:GetItem"
    assert line["decision"] == "allow"
    assert line["status"] == 200
    assert line["duration_ms"] == 250.0
    assert FAKE_TOKEN not in stream.getvalue()


def test_lines_logged_by_later_addons_carry_the_current_call(
    json_logs: tuple[JsonLogs, io.StringIO],
) -> None:
    addon, stream = json_logs
    context = gate(decision=Decision("review", "needs-a-human"))
    flow = flow_with(context)
    [call_lines] = addon.addons
    call_lines.request(flow)  # what mitmproxy runs first for this event
    logging.getLogger("awsgate").warning("awsgate: held for approval")
    [line] = lines(stream)
    assert line["level"] == "warning"
    assert line["request_id"] == context.request_id
    assert line["session_id"] == "ses-1"


def test_exceptions_are_logged_by_type_only() -> None:
    try:
        raise ValueError(f"token {FAKE_TOKEN} rejected")
    except ValueError:
        record = logging.LogRecord("awsgate", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["exception"] == "ValueError"
    assert FAKE_TOKEN not in json.dumps(line)


def test_text_format_leaves_logging_alone(tmp_path: Path) -> None:
    addon = JsonLogs(io.StringIO())
    path = write_config(tmp_path)
    with taddons.context() as tctx:
        tctx.options.add_option(settings.OPTION, str, str(path), "the awsgate config")
        tctx.master.addons.add(addon)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))
        assert addon.handler is None and addon.addons == []  # no flow hooks either
        assert logging.getLogger("awsgate").propagate


# -- config keys --------------------------------------------------------------------------


def parse(tmp_path: Path, **raw: object) -> config.GatewayConfig:
    return config.parse(dict(raw), tmp_path / "awsgate.yaml")


def test_config_defaults_keep_both_off(tmp_path: Path) -> None:
    parsed = parse(tmp_path)
    assert (parsed.metrics_listen, parsed.log_format, parsed.replica_id) == (None, "text", None)


def test_config_reads_the_operational_keys(tmp_path: Path) -> None:
    parsed = parse(
        tmp_path, metrics={"listen": "0.0.0.0:9464"}, log_format="json", replica_id="gw-2"
    )
    assert parsed.metrics_listen == ("0.0.0.0", 9464)
    assert parsed.log_format == "json"
    assert parsed.replica_id == "gw-2"
    assert parse(tmp_path, metrics={"listen": "[::1]:9464"}).metrics_listen == ("::1", 9464)


@pytest.mark.parametrize(
    "raw",
    [
        {"metrics": {"listen": "9464"}},
        {"metrics": {"listen": "host:port"}},
        {"metrics": {"port": 9464}},
        {"log_format": "yaml"},
        {"replica_id": "two words"},
        {"replica_id": 7},
    ],
)
def test_config_refuses_bad_operational_keys(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(config.ConfigError):
        parse(tmp_path, **raw)
