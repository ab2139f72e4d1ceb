"""scripts/bench runs end to end: every way, every figure, no failed call.

A smoke run (two agents, two seconds, a small large object): the figures
themselves are measured by the bench and never asserted here (noisy machines),
but a way that breaks (a changed writer the breakdown patches, a routing
script that no longer loads, a wrong re-signature) fails the bench's calls and
so this test. The stand-in upstream's replayed answers are checked on their own.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from botocore.credentials import ReadOnlyCredentials

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402
import bench_agents  # noqa: E402

WAYS = [
    "direct",
    "bare mitmdump",
    "awsgate (SQLite)",
    "mitmdump + SigV4 only",
    "mitmdump + SigV4 + record",
    "awsgate, no store writes",
]


def test_bench_measures_every_way_without_errors() -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--json", "--breakdown"]
    command += ["--agents", "2", "--rounds", "2", "--duration", "1", "--large-mib", "8"]
    command += ["--no-postgres"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == WAYS
    for name, row in rows.items():
        assert row["requests"] > 0 and row["errors"] == 0, name
        if name != "direct":
            assert row["cpu_ms_per_request"] > 0 and row["peak_rss_mib"] > 0, name
            assert row["switches_per_request"] >= 0, name
            assert len(row["cpu_ms_per_request_rounds"]) == 2, name
    for name in ("direct", "bare mitmdump", "awsgate (SQLite)"):
        assert rows[name]["large_ok"] is True, name  # uploaded and read back, SHA-256 equal
    assert set(report["ratios"]) == set(WAYS[2:])
    assert all(ratio["cpu_ms_per_request"] > 0 for ratio in report["ratios"].values())


def _post(
    port: int, call: bench_agents.Call, credentials: ReadOnlyCredentials
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/", body=call.body, headers=dict(call.signed(credentials)))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_bench_upstream_replays_moto_answers_only_to_calls_moto_accepts(tmp_path: Path) -> None:
    with bench.upstream(tmp_path) as moto:
        bench.seed(moto)
        good = ReadOnlyCredentials(moto.access_key, moto.secret_key, None)
        wrong = ReadOnlyCredentials(moto.access_key, moto.secret_key + "0", None)
        for call in bench_agents.CALLS:
            first = _post(moto.port, call, good)  # moto answers it
            assert first[0] == 200, call.service
            assert _post(moto.port, call, good) == first, call.service  # replayed
            status, body = _post(moto.port, call, wrong)  # replayable, but moto refuses it
            assert status in (400, 403) and b"Signature" in body, call.service


def test_the_bench_refuses_a_run_that_measures_nothing() -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--rounds", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "--rounds and --duration must be positive" in done.stderr
