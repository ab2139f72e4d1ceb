"""The chain hosted by mitmweb: agents work as under mitmdump, the UI never sees a secret.

A real ``mitmweb -s addons/gateway.py`` with its web UI; an agent with a
minted session creates and reads a secret (``scope: record`` mask: the agent
gets the value, the record does not), signs a presigned URL, and uploads an
object large enough to stream. Everything the UI can get is collected: every
message pushed on its websocket while the calls ran, the flow list, every
body, and the saved-flows dump. None holds a canary, the minted secret key or
session token, or the agent's signature; the only signature ever pushed is
the gateway's own for a call in flight (mitmproxy pushes the request it is
about to send), replaced once its response starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tornado import websocket
from tornado.httpclient import HTTPRequest

from addons.auth.devidp import DevIdp, DevIdpServer
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings

pytestmark = pytest.mark.e2e

POLICY = """\
rules:
  - name: agents-work
    effect: allow
    principals: ["group:agents"]
    actions: ["secretsmanager:*", "s3:*", "sts:GetCallerIdentity"]
masks:
  - name: agents-read-their-secrets
    principals: ["group:agents"]
    actions: ["secretsmanager:GetSecretValue"]
    fields: ["$.SecretString"]
    scope: record
"""
BUCKET = "mitmweb-bucket"
STREAMED_SIZE = 3 * 1024 * 1024  # above the 1 MiB stream threshold


class WebUi:
    """mitmweb's UI as a browser sees it: the pushed updates and the REST API."""

    def __init__(self, port: int, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {password}"}
        self.pushed: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        assert self._connected.wait(15), "the UI's websocket did not connect"

    async def _listen(self) -> None:
        request = HTTPRequest(f"ws://127.0.0.1:{self.base.rsplit(':', 1)[1]}/updates")
        request.headers.update(self.headers)
        connection = await websocket.websocket_connect(request)
        self._connected.set()
        while (message := await connection.read_message()) is not None:
            self.pushed.append(message if isinstance(message, str) else message.decode())

    def get(self, path: str) -> requests.Response:
        response = requests.get(self.base + path, headers=self.headers, timeout=15)
        response.raise_for_status()
        return response

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory, moto: harness.Moto, idp: DevIdpServer
) -> Iterator[tuple[harness.Gateway, WebUi]]:
    workdir = tmp_path_factory.mktemp("mitmweb-gateway")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    gateway = harness.Gateway.configure(workdir, moto, gateway_settings(idp.url, policy))
    web_port, password = harness.free_port(), secrets.token_hex(16)
    gateway.start(
        moto,
        program="mitmweb",
        extra_args=(
            "--web-host", "127.0.0.1",
            "--web-port", str(web_port),
            "--no-web-open-browser",
            "--set", f"web_password={password}",
        ),
    )  # fmt: skip
    ui = WebUi(web_port, password)
    try:
        yield gateway, ui
    finally:
        ui.close()
        gateway.stop()


@pytest.fixture(scope="module")
def calls(
    web: tuple[harness.Gateway, WebUi],
    dev_idp: DevIdp,
    moto: harness.Moto,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One agent's work through mitmweb; what it saw, and what must never show in the UI."""
    gateway, _ = web
    moto.client("s3").create_bucket(Bucket=BUCKET)
    directory = tmp_path_factory.mktemp("mitmweb-agent")
    token_file = directory / "agent.token"
    token_file.write_text(dev_idp.token("web-agent", groups=["agents"], aud=AUDIENCE))
    env = harness.agent_env(gateway, token_file=token_file)
    with harness.environment(env):
        import boto3

        session = boto3.Session()
        minted = session.get_credentials().get_frozen_credentials()
    secret_value = f"canary-{uuid.uuid4()}"
    secretsmanager = harness.agent_client(env, "secretsmanager")
    name = f"web-{uuid.uuid4().hex[:8]}"
    secretsmanager.create_secret(Name=name, SecretString=secret_value)
    read = secretsmanager.get_secret_value(SecretId=name)["SecretString"]
    identity = harness.agent_client(env, "sts").get_caller_identity()

    s3 = harness.agent_client(env, "s3")
    s3.put_object(Bucket=BUCKET, Key="small.txt", Body=b"small object")
    presigner = harness.agent_client(env, "s3", signature_version="s3v4")
    presigned = presigner.generate_presigned_url(
        "get_object", {"Bucket": BUCKET, "Key": "small.txt"}
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": gateway.proxy_url}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=gateway.ca_bundle)),
    )
    with opener.open(presigned, timeout=30) as answer:
        fetched = answer.read()
    large = secrets.token_bytes(STREAMED_SIZE)
    s3.put_object(Bucket=BUCKET, Key="large.bin", Body=large)
    downloaded = s3.get_object(Bucket=BUCKET, Key="large.bin")["Body"].read()
    return {
        "read": read,
        "secret_value": secret_value,
        "identity": identity,
        "fetched": fetched,
        "large_ok": hashlib.sha256(downloaded).digest() == hashlib.sha256(large).digest(),
        "never_shown": [secret_value, minted.secret_key, minted.token, presigned.split("?")[1]],
    }


def test_agents_work_under_mitmweb(calls: dict[str, Any], moto: harness.Moto) -> None:
    agent_got_it = calls["read"] == calls["secret_value"]
    assert agent_got_it  # scope: record: the agent gets the value
    assert calls["identity"]["Arn"] == moto.client("sts").get_caller_identity()["Arn"]  # re-signed
    assert calls["fetched"] == b"small object"  # presigned URL, re-signed
    assert calls["large_ok"]  # streamed both ways


def flows(ui: WebUi) -> list[dict[str, Any]]:
    listed = ui.get("/flows").json()
    return [flow for flow in listed if flow["request"]["pretty_host"].endswith("amazonaws.com")]


def test_the_ui_never_gets_a_secret(
    web: tuple[harness.Gateway, WebUi], calls: dict[str, Any], moto: harness.Moto
) -> None:
    _, ui = web
    listed = flows(ui)
    assert len(listed) >= 7, [flow["request"]["path"] for flow in listed]
    shown = [ui.get("/flows").text, ui.get("/flows/dump").content.decode("latin-1")]
    for flow in listed:
        for part in ("request", "response"):
            if flow[part]["contentLength"] is None:
                continue  # streamed: never held (and mitmweb cannot serve "no content")
            shown.append(
                ui.get(f"/flows/{flow['id']}/{part}/content.data").content.decode("latin-1")
            )
    # (Bools throughout: a failing assertion must not print a secret.)
    everything = "\n".join(shown)  # what the UI holds once the calls are over
    held = [index for index, value in enumerate(calls["never_shown"]) if value in everything]
    assert held == []  # indexes into never_shown
    signature_held = "Signature=" in everything
    assert not signature_held
    pushed = [json.loads(message) for message in ui.pushed]
    assert any(message["type"] == "flows/add" for message in pushed)
    pushed_text = "\n".join(ui.pushed)
    pushed_secrets = [i for i, value in enumerate(calls["never_shown"]) if value in pushed_text]
    assert pushed_secrets == []
    # While a call is in flight the UI may see the gateway's own signature for it (what
    # goes to AWS), never the agent's.
    agents_signatures = 0
    for message in pushed:
        request = message.get("payload", {}).get("flow", {}).get("request", {})
        for name, value in request.get("headers", []):
            gateways = f"Credential={moto.access_key}/" in value
            if name.lower() == "authorization" and value != "[redacted]" and not gateways:
                agents_signatures += 1
    assert agents_signatures == 0
    assert "[redacted]" in everything  # the credentials were there, and replaced


def test_the_ui_shows_the_record_copy_of_bodies(
    web: tuple[harness.Gateway, WebUi], calls: dict[str, Any]
) -> None:
    _, ui = web
    by_target = {}
    for flow in flows(ui):
        target = next(
            (value for name, value in flow["request"]["headers"] if name.lower() == "x-amz-target"),
            None,
        )
        by_target[target] = flow
    read = by_target["secretsmanager.GetSecretValue"]
    body = ui.get(f"/flows/{read['id']}/response/content.data").json()
    shown_unmasked = body["SecretString"] == calls["secret_value"]
    assert not shown_unmasked and "SecretString" in body
    created = by_target["secretsmanager.CreateSecret"]
    sent = ui.get(f"/flows/{created['id']}/request/content.data").json()
    sent_unmasked = sent["SecretString"] == calls["secret_value"]
    assert not sent_unmasked


def test_a_saved_flow_carries_the_call_summary(
    web: tuple[harness.Gateway, WebUi], tmp_path: Path
) -> None:
    from mitmproxy import io

    _, ui = web
    dump = tmp_path / "flows"
    dump.write_bytes(ui.get("/flows/dump").content)
    with dump.open("rb") as file:
        saved = [flow for flow in io.FlowReader(file).stream() if "awsgate" in flow.metadata]
    summaries = {flow.metadata["awsgate"].get("action") for flow in saved}
    assert "secretsmanager:GetSecretValue" in summaries
    assert all(flow.metadata["awsgate"]["decision"] == "allow" for flow in saved)
