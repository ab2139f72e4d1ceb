"""The approval page in a real headless Chromium, and its HTTP API, against a real gateway.

``awsgate serve`` runs as its own process on the gateway's store; approvers log
in through the dev IdP (authorization code with PKCE), see the held call, and
click approve; the held boto3 call then completes. Chromium is Debian's
(``/usr/bin/chromium``), driven by playwright's Python package; playwright's
own browser download is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from addons.auth.devidp import DevIdp, DevIdpServer
from addons.store import approvals
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings
from tests.e2e.test_approval import POLICY, open_store, pending_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--no-first-run",
]
WAIT = 30  # the browser steps take a few seconds; nothing here waits the hold out
CLIENT_ID = "awsgate-approvals"


def ensure_chromium() -> None:
    """Install Debian's chromium when missing and we may (CI runs as root), else skip."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs Debian's chromium: apt-get install -y chromium (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)} failed)")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    ensure_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def site_port() -> int:
    return harness.free_port()


@pytest.fixture(scope="module")
def web_gateway(
    tmp_path_factory: pytest.TempPathFactory, moto: harness.Moto, idp: DevIdpServer, site_port: int
) -> Iterator[harness.Gateway]:
    workdir = tmp_path_factory.mktemp("approval-web")
    (workdir / "policy.yaml").write_text(POLICY)
    settings = gateway_settings(idp.url, workdir / "policy.yaml")
    settings["approvals"] = {
        "wait": WAIT,
        "public_url": f"http://127.0.0.1:{site_port}",
        "oidc": {"issuer": idp.url, "client_id": CLIENT_ID},
    }
    gateway = harness.Gateway.configure(workdir, moto, settings)
    gateway.start(moto)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def store(web_gateway: harness.Gateway) -> Iterator[Any]:
    engine = open_store(web_gateway)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def site(web_gateway: harness.Gateway, store: Any, site_port: int) -> Iterator[str]:
    """``awsgate serve`` on the gateway's config: the page and API at the returned URL."""
    log = (web_gateway.workdir / "serve.log").open("ab")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "awsgate"), "serve", "--config",
         str(web_gateway.config_path), "--port", str(site_port)],
        stdout=log, stderr=subprocess.STDOUT, env=harness.base_env(),
    )  # fmt: skip
    try:
        harness.wait_for_port(site_port, process, timeout=60)
        yield f"http://127.0.0.1:{site_port}"
    finally:
        harness.stop(process)
        log.close()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def log_in(page: Any, site: str, subject: str, groups: str) -> None:
    page.goto(f"{site}/approvals")
    page.wait_for_selector("#sign-in")  # the dev IdP's sign-in form
    page.fill("#sub", subject)
    page.fill("#groups", groups)
    page.click("#sign-in")
    page.wait_for_selector("#who")
    assert page.inner_text("#who") == f"sub:{subject}"


def test_approver_logs_in_and_approves_a_held_call_in_chromium(
    browser_context: Any,
    site: str,
    web_gateway: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    bucket = unique("web-approve")
    moto.client("s3").create_bucket(Bucket=bucket)
    client = harness.agent_client(harness.agent_env(web_gateway, token_file=agent_token_file), "s3")
    held = pool.submit(client.delete_bucket, Bucket=bucket)
    request = pending_for(store, bucket)
    page = browser_context.new_page()

    # A non-approver sees the request but gets no buttons.
    log_in(page, site, "bob", "dev")
    page.click(f'a[href="/approvals/{request.id}"]')
    assert "is not an approver" in page.inner_text("#not-yours")
    assert page.query_selector("#approve") is None
    page.click("text=Log out")

    log_in(page, site, "alice", "sre")
    row = page.wait_for_selector(f'tr.approval[data-id="{request.id}"]')
    assert "s3:DeleteBucket" in row.inner_text() and "sub:agent-1" in row.inner_text()
    page.click(f'a[href="/approvals/{request.id}"]')
    assert page.inner_text("#f-rule") == "bucket-deletes-need-review"
    page.fill("#reason", "approved from the page")
    page.click("#approve")
    page.wait_for_selector("#note")
    assert page.inner_text("#f-status") in ("approved", "used")
    assert page.inner_text("#f-decided-by") == "sub:alice"

    held.result(timeout=WAIT + 10)  # the held call completes
    assert bucket not in [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]
    decided = approvals.get(store, request.id)
    assert decided is not None
    assert (decided.status, decided.decided_via, decided.reason) == (
        "used", "web", "approved from the page",
    )  # fmt: skip
    page.close()


def api(site: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{site}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_api_lists_and_denies_with_a_bearer_token(
    site: str,
    web_gateway: harness.Gateway,
    moto: harness.Moto,
    store: Any,
    dev_idp: DevIdp,
    agent_token_file: Path,
    pool: ThreadPoolExecutor,
) -> None:
    bucket = unique("web-api")
    moto.client("s3").create_bucket(Bucket=bucket)
    client = harness.agent_client(harness.agent_env(web_gateway, token_file=agent_token_file), "s3")
    held = pool.submit(client.delete_bucket, Bucket=bucket)
    request = pending_for(store, bucket)
    alice = dev_idp.token("alice", groups=["sre"], aud=AUDIENCE)

    assert api(site, "/api/approvals?status=pending")[0] == 401
    status, listed = api(site, "/api/approvals?status=pending", alice)
    assert status == 200 and request.id in [item["id"] for item in listed]
    status, shown = api(site, f"/api/approvals/{request.id}", alice)
    assert status == 200 and shown["parameters"] == {"Bucket": bucket}
    agent = agent_token_file.read_text()
    status, refused = api(site, f"/api/approvals/{request.id}/approve", agent, {"reason": "me"})
    assert status == 403 and "cannot decide its own request" in refusal_text(refused)
    status, denied = api(
        site, f"/api/approvals/{request.id}/deny", alice, {"reason": "api says no"}
    )
    assert status == 200 and denied["status"] == "denied"

    with pytest.raises(ClientError) as caught:
        held.result(timeout=WAIT + 10)
    assert "api says no" in caught.value.response["Error"]["Message"]
    deadline = time.monotonic() + 5
    while approvals.get(store, request.id).hold == "waiting" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert approvals.get(store, request.id).hold == "refused"


def refusal_text(document: Any) -> str:
    return str(document.get("error", ""))
