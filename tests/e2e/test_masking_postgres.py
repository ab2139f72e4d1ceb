"""Masked secrets never reach a PostgreSQL store either: a ``pg_dump`` of it holds no canary."""

from __future__ import annotations

import glob
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from addons.auth.devidp import DevIdp, DevIdpServer
from addons.aws.wiredoc import MARKER
from addons.store import db
from addons.store.models import calls
from tests.e2e import harness
from tests.e2e.conftest import AUDIENCE, gateway_settings
from tests.e2e.test_masking import POLICY

pytestmark = pytest.mark.e2e


def pg_dump_binary() -> str:
    found = shutil.which("pg_dump") or max(
        glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), default=""
    )
    if not found:
        pytest.skip("pg_dump is not installed")
    return found


@pytest.fixture(scope="module")
def pg_gateway(
    tmp_path_factory: pytest.TempPathFactory, moto: harness.Moto, idp: DevIdpServer, pg_store: str
) -> Iterator[harness.Gateway]:
    workdir = tmp_path_factory.mktemp("masking-pg-gateway")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    settings = gateway_settings(idp.url, policy)
    settings["store"] = pg_store
    gateway = harness.Gateway.configure(workdir, moto, settings)
    gateway.start(moto)
    yield gateway
    gateway.stop()


def test_canaries_are_not_in_a_postgresql_dump(
    pg_gateway: harness.Gateway, pg_store: str, moto: harness.Moto, dev_idp: DevIdp, tmp_path: Path
) -> None:
    read_secret, sent_secret = f"canary-{uuid.uuid4()}", f"canary-{uuid.uuid4()}"
    name = f"masked-{uuid.uuid4().hex[:10]}"
    moto.client("secretsmanager").create_secret(Name=name, SecretString=read_secret)
    token = tmp_path / "agent.token"
    token.write_text(dev_idp.token("pg-agent", groups=["agents"], aud=AUDIENCE))
    client = harness.agent_client(harness.agent_env(pg_gateway, token_file=token), "secretsmanager")
    assert client.get_secret_value(SecretId=name)["SecretString"] == MARKER
    client.create_secret(Name=f"sent-{uuid.uuid4().hex[:8]}", SecretString=sent_secret)

    engine = db.open_engine(pg_store)
    unfinished = select(func.count()).select_from(calls).where(calls.c.chain_seq.is_(None))
    deadline = time.monotonic() + 30
    with engine.connect() as connection:
        while connection.execute(unfinished).scalar_one() and time.monotonic() < deadline:
            time.sleep(0.1)
        recorded = connection.execute(select(func.count()).select_from(calls)).scalar_one()
    engine.dispose()
    assert recorded >= 3  # the session exchange, the read and the create

    dump = subprocess.run(
        [pg_dump_binary(), "--data-only", pg_store], capture_output=True, check=True, timeout=60
    ).stdout
    assert b"secretsmanager" in dump  # the records are there
    for value in (read_secret, sent_secret):
        assert value.encode() not in dump
