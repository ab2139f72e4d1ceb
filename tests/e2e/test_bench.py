"""scripts/bench runs end to end: every way, every figure, no failed call.

A smoke run (two agents, two seconds, a small large object): the figures
themselves are measured by the bench and never asserted here (noisy machines),
but a way that breaks (a changed writer the breakdown patches, a routing
script that no longer loads) fails the bench's calls and so this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WAYS = [
    "direct",
    "bare mitmdump",
    "awsgate (SQLite)",
    "mitmdump + SigV4 only",
    "awsgate, no store writes",
]


def test_bench_measures_every_way_without_errors() -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--json", "--breakdown"]
    command += ["--agents", "2", "--duration", "2", "--large-mib", "8", "--no-postgres"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == WAYS
    for name, row in rows.items():
        assert row["requests"] > 0 and row["errors"] == 0, name
        if name != "direct":
            assert row["cpu_ms_per_request"] > 0 and row["peak_rss_mib"] > 0, name
    for name in ("direct", "bare mitmdump", "awsgate (SQLite)"):
        assert rows[name]["large_ok"] is True, name  # uploaded and read back, SHA-256 equal
    assert set(report["ratios"]) == set(WAYS[2:])
    assert all(ratio["cpu_ms_per_request"] > 0 for ratio in report["ratios"].values())
