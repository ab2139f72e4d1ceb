"""The gateway's cost, measured (run it with ``scripts/bench``).

One run, one machine, one workload, several ways: straight to the upstream,
through a bare ``mitmdump`` that only routes, and through the full awsgate
chain (record store on SQLite, and on PostgreSQL when one is available).

The proxy under test must be the bottleneck, so the load around it is kept
light: the upstream is moto's WSGI app served by waitress (keep-alive), whose
answers to the small read-only calls are replayed after moto's own signature
check (``bench_upstream``); the agents are concurrent callers in one asyncio
process that sign with botocore's SigV4 signer (``bench_agents``). They
alternate sts:GetCallerIdentity and dynamodb:GetItem for a fixed time; then
one large S3 object is uploaded by boto3 (multipart, from a file in /tmp) and
downloaded in one streamed GET, moto serving it in full, its SHA-256 checked.
The proxy's CPU comes from /proc/PID/stat (utime + stime) of that process
only, its memory from /proc/PID/status (VmHWM, and VmRSS sampled while the
large object streams).

Loopback only: every server listens on 127.0.0.1 and nothing reaches AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench_agents  # noqa: E402
import bench_upstream  # noqa: E402

from addons.devstack import (  # noqa: E402
    ACCOUNT,
    BIN,
    Gateway,
    Moto,
    agent_env,
    base_env,
    free_port,
    stop,
    throwaway_database,
    wait_for_port,
)

TABLE = bench_agents.TABLE
BUCKET = "bench-bucket"
LARGE_KEY = "large/object.bin"
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = 64 * 1024  # read/write block of the large object

# The bare proxy: mitmproxy's regular (HTTPS_PROXY) mode, exactly the path agents take
# through the gateway (CONNECT, TLS interception, HTTP/1.1 keep-alive), plus the one
# thing the gateway adds that the workload cannot do without: routing AWS host names to
# the local upstream while keeping the AWS Host header (moto dispatches on it and the
# signature covers it). Reverse mode would skip CONNECT and certificate generation and
# change the Host header; upstream mode expects another proxy. Routing in
# requestheaders also covers streamed bodies, which leave before the request hook.
ROUTE_READY = "bench: routing ready"
ROUTE_SCRIPT = f'''\
"""Routing only: send every request to the upstream, keeping its Host header."""
import logging
import os

HOST, PORT = "127.0.0.1", int(os.environ["BENCH_UPSTREAM_PORT"])


def running():
    # mitmdump listens before its scripts have loaded: say when requests get routed.
    logging.warning("{ROUTE_READY}")


def requestheaders(flow):
    host_header = flow.request.host_header
    flow.request.scheme, flow.request.host, flow.request.port = "http", HOST, PORT
    flow.request.host_header = host_header
'''
ROUTE_CHOICE = (
    "bare mitmdump = regular proxy mode (HTTPS_PROXY, CONNECT, TLS interception, as agents "
    "use the gateway) + a 4-line requestheaders hook routing to the upstream with the "
    "AWS Host kept; reverse mode would skip CONNECT/certificates and rewrite Host"
)

# --breakdown: the full chain with the record store's writes acknowledged but not made,
# so the table shows how much of the gateway's cost is the store. Measurement only.
NO_STORE_SCRIPT = '''\
"""Bench only: acknowledge every record write without writing it (the store's share)."""
from addons.store import writer


def _write(self, ops, *_args, **_kwargs):
    for op in ops:
        op.future.set_result(op.request_id or "")


writer.RecordWriter._write = _write
'''

# --breakdown: bare mitmdump plus one of the two pieces of the chain no gateway can skip, checking
# the agent's SigV4 signature and re-signing with the gateway's key, done by the chain's own
# code (addons.aws.sigv4). Measurement only: no identity, policy, masking or record. A call
# that fails either step is answered with an error, so it shows in the errors column.
SIGV4_SCRIPT = """
from datetime import UTC, datetime

from mitmproxy import http

from addons.aws import sigv4

_SECRET = os.environ["BENCH_SIGNING_SECRET"]
_CREDENTIALS = sigv4.Credentials(os.environ["BENCH_SIGNING_KEY_ID"], _SECRET)
_SIGNER = sigv4.Signer()


def request(flow):
    try:
        _verify_and_resign(flow.request)
    except Exception as exc:
        flow.response = http.Response.make(500, f"bench: {type(exc).__name__}".encode())


def _verify_and_resign(request):
    path, _, query = request.path.partition("?")
    auth = sigv4.parse_auth(request.headers, query)
    body = request.raw_content
    now = datetime.now(UTC)
    sigv4.verify(auth, _SECRET, request.method, path, query, request.headers, body, now)
    query = sigv4.strip_auth(request.headers, query)
    payload_hash = sigv4.payload_hash(auth.service, request.headers, body)
    signed = _SIGNER.sign(
        _CREDENTIALS, request.method, request.host_header, path, query, request.headers,
        payload_hash, auth.region, auth.service, now,
    )
    sigv4.set_headers(request.headers, signed)
"""
SIGV4_ONLY = "mitmdump + SigV4 only"

# --breakdown: the SigV4 row plus the other piece no gateway can skip, a durable record of
# each call before it is forwarded, written by the chain's own RecordWriter to SQLite.
# Nothing else of the chain: the floor of what recording costs on this stack.
RECORD_SCRIPT = """
import asyncio
import time

from addons.context import GateContext
from addons.store import db
from addons.store.records import CallOutcome, CallRecord
from addons.store.writer import RecordWriter

_STORE = "sqlite:///" + os.path.abspath("bench-record.sqlite")


class _Record:
    def __init__(self):
        db.migrate(_STORE)
        self.writer = RecordWriter(_STORE)

    async def request(self, flow):
        request = flow.request
        call = CallRecord(
            GateContext().request_id, time.time(), "allow", request.method, request.pretty_url,
            request_headers=list(request.headers.items(multi=True)),
            request_body=request.raw_content,
        )
        flow.metadata["bench_record"] = call
        await asyncio.wrap_future(self.writer.begin(call))

    def response(self, flow):
        call, response = flow.metadata["bench_record"], flow.response
        self.writer.finish(call.request_id, CallOutcome(
            time.time() - call.time, response.status_code, response.status_code,
            response_headers=list(response.headers.items(multi=True)),
            response_body=response.raw_content,
        ))

    def done(self):
        self.writer.close()


addons = [_Record()]
"""
SIGV4_RECORD = "mitmdump + SigV4 + record"

POLICY = {
    "rules": [
        {
            "name": "bench-agents",
            "effect": "allow",
            "principals": ["group:agents"],
            "actions": ["sts:GetCallerIdentity", "dynamodb:GetItem", "s3:*"],
        }
    ]
}

# -- the upstream: moto's WSGI app under waitress -----------------------------------------


def upstream(workdir: Path) -> contextlib.AbstractContextManager[Moto]:
    """moto's WSGI app under waitress (``bench_upstream``), in its own process."""
    return Moto.running(
        workdir, serve=lambda port: [sys.executable, __file__, "_upstream", str(port)]
    )


def seed(moto: Moto) -> None:
    ddb = moto.client("dynamodb")
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "item-1"}, "value": {"S": "x" * 200}})
    moto.client("s3").create_bucket(Bucket=BUCKET)


# -- measuring a process -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of the process's threads now alive.

    A thread blocks (a voluntary switch) when it waits for the GIL or for work:
    saturated, bare mitmdump's one thread hardly ever does.
    """
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def memory_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """The highest VmRSS seen while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, KeyError):
                self.peak_kib = max(self.peak_kib, memory_kib(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.pid is not None:
            self._thread.join()


# -- the agents ----------------------------------------------------------------------------


def large_main(spec: dict[str, Any]) -> None:
    """Upload a large file (multipart, as ``aws s3 cp`` does), download it in one GET."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"})
    extra = {"endpoint_url": spec["endpoint_url"]} if spec.get("endpoint_url") else {}
    s3 = boto3.Session().client("s3", config=config, **extra)
    path = spec["file"]
    began = time.perf_counter()
    s3.upload_file(path, BUCKET, LARGE_KEY, Config=TransferConfig(max_concurrency=4))
    uploaded = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key=LARGE_KEY)["Body"]
    digest = hashlib.sha256()
    size = 0
    for chunk in body.iter_chunks(PAGE):
        digest.update(chunk)
        size += len(chunk)
    downloaded = time.perf_counter()
    print(
        json.dumps(
            {
                "upload_s": uploaded - began,
                "download_s": downloaded - uploaded,
                "sha256": digest.hexdigest(),
                "size": size,
            }
        ),
        flush=True,
    )


def write_large_file(path: Path, size: int) -> str:
    """Pseudo-random bytes written block by block (never all in memory); their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for index in range(size // MIB):
            # A fresh block prefix per MiB, so no two MiB are alike (no dedup, no compression).
            chunk = index.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def spawn(role: str, spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, role, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


# -- one way of reaching the upstream ------------------------------------------------------


@dataclass
class Way:
    name: str
    env: dict[str, str]  # the agents' environment
    endpoint_url: str | None = None
    pid: int | None = None  # the proxy process measured, if any
    large: bool = True  # the large object goes this way too


@dataclass
class Figures:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_request: float | None = None
    cpu_ms_per_request_rounds: list[float] = field(default_factory=list)
    switches_per_request: float | None = None
    idle_cpu_ms_per_s: float | None = None
    peak_rss_mib: float | None = None
    large_rss_mib: float | None = None
    large_upload_mib_s: float | None = None
    large_download_mib_s: float | None = None
    large_ok: bool | None = None
    notes: list[str] = field(default_factory=list)


class Agents:
    """The agents' process (``bench_agents``), started once and reused for every way."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.process = spawn("_agents", {}, base_env())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()


@dataclass
class Round:
    """One round of small calls through one way."""

    latencies: list[float]
    errors: int
    seconds: float
    cpu_seconds: float | None  # the proxy's, during the round
    switches: int | None


def run_round(way: Way, agents: Agents, duration: float) -> Round:
    spec = {
        "agents": agents.count,
        "duration": duration,
        "endpoint_url": way.endpoint_url,
        "env": way.env,
    }
    agents.tell(json.dumps(spec))
    if (answer := agents.answer()) != "ready":
        raise RuntimeError(f"{way.name}: the agents did not warm up: {answer or 'no answer'}")
    cpu_before = cpu_seconds(way.pid) if way.pid else 0.0
    switches_before = context_switches(way.pid) if way.pid else 0
    agents.tell("go")
    result = json.loads(agents.answer())
    return Round(
        latencies=result["latencies"],
        errors=result["errors"],
        seconds=result["end"] - result["start"],
        cpu_seconds=cpu_seconds(way.pid) - cpu_before if way.pid else None,
        switches=context_switches(way.pid) - switches_before if way.pid else None,
    )


def summarize(name: str, rounds: list[Round]) -> Figures:
    """All rounds of one way pooled: its calls, its latencies, its CPU."""
    latencies = sorted(value for one in rounds for value in one.latencies)
    seconds = sum(one.seconds for one in rounds)
    figures = Figures(
        name=name,
        requests=len(latencies),
        errors=sum(one.errors for one in rounds),
        seconds=seconds,
        rps=len(latencies) / seconds,
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )
    cpu = [one.cpu_seconds for one in rounds if one.cpu_seconds is not None]
    switches = [one.switches for one in rounds if one.switches is not None]
    if cpu:
        figures.cpu_ms_per_request = 1000 * sum(cpu) / len(latencies)
        figures.cpu_ms_per_request_rounds = [
            round(1000 * one.cpu_seconds / len(one.latencies), 3)
            for one in rounds
            if one.cpu_seconds is not None
        ]
    if switches:
        figures.switches_per_request = sum(switches) / len(latencies)
    return figures


def run_large(way: Way, figures: Figures, path: Path, sha256: str) -> None:
    spec = {"file": str(path), "endpoint_url": way.endpoint_url}
    with RssSampler(way.pid) as sampler:
        process = spawn("_large", spec, way.env)
        out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        figures.large_ok = False
        figures.notes.append("large object transfer failed")
        return
    result = json.loads(out)
    size_mib = path.stat().st_size / MIB
    figures.large_ok = result["sha256"] == sha256 and result["size"] == path.stat().st_size
    figures.large_upload_mib_s = size_mib / result["upload_s"]
    figures.large_download_mib_s = size_mib / result["download_s"]
    if way.pid is not None:
        figures.large_rss_mib = sampler.peak_kib / 1024


IDLE_SECONDS = 2.0


def idle_cpu(way: Way) -> float | None:
    """What the proxy spends with no traffic (the gateway's pollers), in ms per second.

    The per-request figure includes it, which weighs more the fewer requests a
    second there are.
    """
    if way.pid is None:
        return None
    before = cpu_seconds(way.pid)
    time.sleep(IDLE_SECONDS)
    return 1000 * (cpu_seconds(way.pid) - before) / IDLE_SECONDS


# -- the proxies ---------------------------------------------------------------------------


def wait_for_line(
    log: Path, line: str, process: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log} never said {line!r}")
        time.sleep(0.05)


def proxy_env(port: int, ca_bundle: Path, **extra: str) -> dict[str, str]:
    return base_env(HTTPS_PROXY=f"http://127.0.0.1:{port}", AWS_CA_BUNDLE=str(ca_bundle), **extra)


@contextlib.contextmanager
def bare_mitmdump(
    workdir: Path,
    moto: Moto,
    certs: Path,
    *,
    verify_and_resign: bool = False,
    record: bool = False,
) -> Iterator[Way]:
    """Bare mitmdump routing to the upstream; with ``verify_and_resign``, the SigV4 row,
    and with ``record`` too, the SigV4 + record row."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "route.py"
    verify_and_resign = verify_and_resign or record
    script.write_text(
        ROUTE_SCRIPT
        + (SIGV4_SCRIPT if verify_and_resign else "")
        + (RECORD_SCRIPT if record else "")
    )
    signing_env = (
        {
            "PYTHONPATH": str(ROOT),
            "BENCH_SIGNING_KEY_ID": moto.access_key,
            "BENCH_SIGNING_SECRET": moto.secret_key,
        }
        if verify_and_resign
        else {}
    )
    port = free_port()
    log = (workdir / "mitmdump.log").open("wb")
    options = {
        "flow_detail": "0",
        "confdir": str(certs),
        "connection_strategy": "lazy",  # AWS names do not resolve here
        "stream_large_bodies": "1m",  # as the gateway's stream_threshold
    }
    command = [str(BIN / "mitmdump"), "-s", str(script)]
    command += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    for name, value in options.items():
        command += ["--set", f"{name}={value}"]
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=base_env(BENCH_UPSTREAM_PORT=str(moto.port), **signing_env),
        cwd=workdir,
    )
    try:
        wait_for_port(port, process)
        wait_for_line(workdir / "mitmdump.log", ROUTE_READY, process)
        env = proxy_env(
            port,
            certs / "mitmproxy-ca-cert.pem",
            AWS_ACCESS_KEY_ID=moto.access_key,
            AWS_SECRET_ACCESS_KEY=moto.secret_key,
        )
        name = SIGV4_RECORD if record else SIGV4_ONLY if verify_and_resign else "bare mitmdump"
        yield Way(name, env, pid=process.pid, large=not verify_and_resign)
    finally:
        stop(process)
        log.close()


@contextlib.contextmanager
def full_gateway(
    name: str,
    workdir: Path,
    moto: Moto,
    idp_url: str,
    token_file: Path,
    store: str,
    without_store_writes: bool = False,
) -> Iterator[Way]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    before: tuple[str, ...] = ()
    if without_store_writes:
        (workdir / "no_store.py").write_text(NO_STORE_SCRIPT)
        before = (str(workdir / "no_store.py"),)
    gateway = Gateway.configure(
        workdir,
        moto,
        {
            "certs": str(workdir.parent / "certs"),
            "store": store,
            "policies": "policy.yaml",
            "identity": {
                "issuers": [{"url": idp_url, "audience": "awsgate", "groups_claim": "groups"}]
            },
        },
    )
    gateway.start(moto, extra_args=("--set", "flow_detail=0"), scripts_before=before)
    try:
        assert gateway.process is not None
        env = agent_env(gateway, token_file=token_file)
        yield Way(name, env, pid=gateway.process.pid, large=not without_store_writes)
    finally:
        gateway.stop()


def make_ca(certs: Path) -> None:
    """One CA for every proxy of the run, so the agents' CA bundle is the same file."""
    from mitmproxy import certs as mitm_certs

    certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    mitm_certs.CertStore.from_store(certs, "mitmproxy", 2048)


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kib / MIB, 1)}


def ratios(rows: list[Figures]) -> dict[str, dict[str, float]]:
    bare = next((row for row in rows if row.name == "bare mitmdump"), None)
    if bare is None:
        return {}
    out = {}
    for row in rows:
        if row.name in ("direct", "bare mitmdump"):
            continue
        pairs = {
            "cpu_ms_per_request": (row.cpu_ms_per_request, bare.cpu_ms_per_request),
            "rps": (row.rps, bare.rps),
            "p50_ms": (row.p50_ms, bare.p50_ms),
            "p99_ms": (row.p99_ms, bare.p99_ms),
            "peak_rss_mib": (row.peak_rss_mib, bare.peak_rss_mib),
            "large_rss_mib": (row.large_rss_mib, bare.large_rss_mib),
        }
        out[row.name] = {
            key: round(mine / theirs, 3) for key, (mine, theirs) in pairs.items() if mine and theirs
        }
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB")
    w = report["workload"]
    print(
        f"workload: {w['agents']} agents x {w['rounds']} rounds x {w['duration_s']:g} s of "
        f"sts:GetCallerIdentity + dynamodb:GetItem (keep-alive; the ways take turns in each "
        f"round); then one {w['large_mib']} MiB S3 object up (multipart) and down (one GET)"
    )
    print(f"note: {ROUTE_CHOICE}")
    header = (
        f"{'way':<26}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'csw/req':>8}"
        f"{'idle ms/s':>10}"
        f"{'peak RSS':>10}{'RSS large':>10}{'up MiB/s':>9}{'down MiB/s':>11}{'errors':>7}"
    )
    print(
        "CPU ms/req: the proxy process only, all its threads (/proc/PID/stat), agents' calls "
        "divided in; csw/req: its threads' context switches per call; idle ms/s: its CPU with "
        "no traffic; RSS in MiB (peak: VmHWM; large: "
        "highest VmRSS while the large object streams)"
    )
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        large_ok = "" if row["large_ok"] in (None, True) else "  LARGE OBJECT MISMATCH"
        print(
            f"{row['name']:<26}{fmt(row['rps'], 0):>8}{fmt(row['p50_ms'], 2):>8}"
            f"{fmt(row['p99_ms'], 2):>8}{fmt(row['cpu_ms_per_request'], 2):>11}"
            f"{fmt(row['switches_per_request'], 1):>8}{fmt(row['idle_cpu_ms_per_s'], 1):>10}"
            f"{fmt(row['peak_rss_mib'], 0):>10}{fmt(row['large_rss_mib'], 0):>10}"
            f"{fmt(row['large_upload_mib_s'], 0):>9}{fmt(row['large_download_mib_s'], 0):>11}"
            f"{row['errors']:>7}{large_ok}"
        )
    for name, values in report["ratios"].items():
        text = ", ".join(f"{key} x{value:.2f}" for key, value in values.items())
        print(f"{name} / bare mitmdump: {text}")
    for row in report["rows"]:
        if row["cpu_ms_per_request_rounds"]:
            text = " ".join(f"{value:.2f}" for value in row["cpu_ms_per_request_rounds"])
            print(f"CPU ms/req by round, {row['name']}: {text}")
    for note in report["notes"]:
        print(f"note: {note}")


# -- main ----------------------------------------------------------------------------------


def measure_all(args: argparse.Namespace, workdir: Path, notes: list[str]) -> list[Figures]:
    """Every way at once against one upstream, one issuer and one large file.

    The ways take turns, round after round, so that the machine's drift falls on
    all of them alike; then the large object goes through each in turn.
    """
    from addons.auth.devidp import DevIdp

    large = None
    if args.large_mib:
        path = workdir / "large.bin"
        large = (path, write_large_file(path, args.large_mib * MIB))
    certs = workdir / "certs"
    make_ca(certs)
    with upstream(workdir) as moto, contextlib.ExitStack() as stack:
        seed(moto)
        dev_idp = DevIdp(workdir / "idp-keys")
        idp = dev_idp.serve("127.0.0.1", 0)
        stack.callback(idp.stop)
        token_file = workdir / "agent.token"
        token_file.write_text(dev_idp.token("bench-agent", groups=["agents"], aud="awsgate"))
        gateway_args = (moto, idp.url, token_file)
        keys = {"AWS_ACCESS_KEY_ID": moto.access_key, "AWS_SECRET_ACCESS_KEY": moto.secret_key}
        sqlite = "sqlite:///awsgate.sqlite"
        ways = [
            Way("direct", base_env(**keys), endpoint_url=moto.url),
            stack.enter_context(bare_mitmdump(workdir / "bare", moto, certs)),
            stack.enter_context(
                full_gateway("awsgate (SQLite)", workdir / "full", *gateway_args, sqlite)
            ),
        ]
        if args.breakdown:
            ways.append(
                stack.enter_context(
                    bare_mitmdump(workdir / "sigv4", moto, certs, verify_and_resign=True)
                )
            )
            notes.append(
                f"'{SIGV4_ONLY}': bare mitmdump plus checking the agent's SigV4 signature "
                "and re-signing, with the chain's own code (small calls only)"
            )
            ways.append(
                stack.enter_context(bare_mitmdump(workdir / "record", moto, certs, record=True))
            )
            notes.append(
                f"'{SIGV4_RECORD}': that plus a durable record of each call, begun before it "
                "is forwarded, by the chain's RecordWriter on SQLite (small calls only)"
            )
            name = "awsgate, no store writes"
            ways.append(
                stack.enter_context(
                    full_gateway(name, workdir / "nostore", *gateway_args, sqlite, True)
                )
            )
            notes.append(f"'{name}': record writes acknowledged but not made (small calls only)")
        pg_url = os.environ.get("AWSGATE_TEST_PG_URL")
        if args.no_postgres:
            notes.append("PostgreSQL row skipped (--no-postgres)")
        elif not pg_url:
            notes.append(
                "PostgreSQL row skipped: no server (scripts/bench starts one when "
                "PostgreSQL is installed or installable as root)"
            )
        else:
            store = stack.enter_context(throwaway_database(pg_url, "awsgate_bench"))
            ways.append(
                stack.enter_context(
                    full_gateway("awsgate (PostgreSQL)", workdir / "full-pg", *gateway_args, store)
                )
            )
        notes.append(
            "every proxy runs from the first round to the last; the idle ones spend their "
            "idle ms/s meanwhile"
        )
        agents = Agents(args.agents)
        stack.callback(agents.close)
        idle = {way.name: idle_cpu(way) for way in ways}
        rounds: dict[str, list[Round]] = {way.name: [] for way in ways}
        for _ in range(args.rounds):
            for way in ways:
                rounds[way.name].append(run_round(way, agents, args.duration))
        rows = []
        for way in ways:
            figures = summarize(way.name, rounds[way.name])
            figures.idle_cpu_ms_per_s = idle[way.name]
            if large is not None and way.large:
                run_large(way, figures, *large)
            if way.pid is not None:
                figures.peak_rss_mib = memory_kib(way.pid, "VmHWM") / 1024
            rows.append(figures)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--agents",
        type=int,
        default=8,
        help="concurrent agents, each with its own connections and credentials (default 8)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=3,
        help="seconds of small calls per way and round (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of small calls; the ways take turns in each (default 3)",
    )
    parser.add_argument(
        "--large-mib", type=int, default=1024, help="size of the large S3 object (0 to skip)"
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the row with PostgreSQL as the store"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="add three rows: bare mitmdump plus SigV4 verification and re-signing only, "
        "that plus a durable record per call, and the full chain with record writes "
        "acknowledged but not made",
    )
    args = parser.parse_args()
    if args.agents < 1 or args.rounds < 1 or args.duration <= 0 or args.large_mib < 0:
        parser.error("--agents, --rounds and --duration must be positive, --large-mib at least 0")
    workdir = Path(tempfile.mkdtemp(prefix="awsgate-bench-", dir="/tmp"))
    started = time.monotonic()
    notes: list[str] = []
    try:
        rows = measure_all(args, workdir, notes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": machine(),
        "workload": {
            "agents": args.agents,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "large_mib": args.large_mib,
            "calls": ["sts:GetCallerIdentity", "dynamodb:GetItem"],
        },
        "bare_mitmdump": ROUTE_CHOICE,
        "rows": [asdict(row) for row in rows],
        "ratios": ratios(rows),
        "notes": notes,
        "total_s": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"total: {report['total_s']} s")
    return 0 if all(row.large_ok in (None, True) for row in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_agents":
        bench_agents.main()
    elif len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        bench_upstream.serve(int(sys.argv[2]), threads=8, account=ACCOUNT)
    elif len(sys.argv) > 1 and sys.argv[1] == "_large":
        large_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
