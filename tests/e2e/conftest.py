"""Fixtures for the end-to-end tests: one moto, one issuer and one gateway per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from addons.auth.devidp import DevIdp, DevIdpServer
from tests.e2e import harness

HERE = Path(__file__).parent
AUDIENCE = "awsgate"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def moto(workdir: Path) -> Iterator[harness.Moto]:
    with harness.Moto.running(workdir) as server:
        yield server


@pytest.fixture(scope="session")
def idp(workdir: Path) -> Iterator[DevIdpServer]:
    dev = DevIdp(workdir / "idp-keys")
    server = dev.serve("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dev_idp(workdir: Path, idp: DevIdpServer) -> DevIdp:
    return DevIdp(workdir / "idp-keys")


def gateway_settings(idp_url: str, policies: Path) -> dict:
    return {
        "policies": str(policies),
        "identity": {
            "issuers": [
                {"url": idp_url, "audience": AUDIENCE, "groups_claim": "groups"},
            ]
        },
    }


@pytest.fixture(scope="session")
def gateway(workdir: Path, moto: harness.Moto, idp: DevIdpServer) -> Iterator[harness.Gateway]:
    policies = workdir / "policies"
    shutil.copytree(HERE / "policies", policies)
    gw = harness.Gateway.configure(
        workdir / "gateway", moto, gateway_settings(idp.url, policies / "base.yaml")
    )
    gw.start(moto)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def agent_token_file(workdir: Path, dev_idp: DevIdp) -> Path:
    path = workdir / "agent.token"
    path.write_text(dev_idp.token("agent-1", groups=["agents"], aud=AUDIENCE, ttl=3600))
    return path


@pytest.fixture(scope="session")
def agent(gateway: harness.Gateway, agent_token_file: Path) -> dict[str, str]:
    """The environment of an SDK-native agent: web identity through the gateway."""
    return harness.agent_env(gateway, token_file=agent_token_file)


NO_POSTGRES = (
    "needs AWSGATE_TEST_PG_URL=postgresql://USER@127.0.0.1:PORT/DB, a server where USER may "
    "create databases (scripts/test starts one when PostgreSQL is installed or installable)"
)


@pytest.fixture(scope="module")
def pg_store() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module; its URL."""
    base = os.environ.get("AWSGATE_TEST_PG_URL")
    if not base:
        pytest.skip(NO_POSTGRES)
    with harness.throwaway_database(base, "awsgate_e2e") as url:
        yield url
