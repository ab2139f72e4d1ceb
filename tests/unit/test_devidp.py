"""The development OIDC issuer (addons.auth.devidp) and its ``awsgate dev-idp`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from addons.auth.devidp import KEYS_KEPT_PER_ALGORITHM, DevIdp, DevIdpError, DevIdpServer
from addons.auth.oidc import TokenValidator
from addons.config import IssuerConfig

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000


def get_json(url: str) -> tuple[dict[str, Any], Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read()), response.headers


def claims_of(token: str) -> dict[str, Any]:
    import base64

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def server(keys_dir: Path) -> Iterator[DevIdpServer]:
    with DevIdp(keys_dir).serve() as running:
        yield running


def validator_for(server: DevIdpServer, **kwargs: Any) -> TokenValidator:
    return TokenValidator([IssuerConfig(server.url, ("awsgate",), groups_claim="groups")], **kwargs)


def test_serves_discovery_and_jwks_on_loopback(server: DevIdpServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    discovery, headers = get_json(server.url + "/.well-known/openid-configuration")
    assert discovery["issuer"] == server.url
    assert discovery["jwks_uri"] == server.url + "/jwks"
    jwks, headers = get_json(discovery["jwks_uri"])
    assert "max-age=300" in headers["Cache-Control"]
    [key] = jwks["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert "d" not in key and "p" not in key  # public halves only
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "/no-such-endpoint", timeout=5)
    assert info.value.code == 404


def test_start_is_logged_as_a_development_tool(keys_dir: Path, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING), DevIdp(keys_dir).serve():
        pass
    assert "development" in caplog.text
    assert "never use it in production" in caplog.text


def test_keys_are_private_on_disk(server: DevIdpServer, keys_dir: Path) -> None:
    DevIdp(keys_dir).current("ES256")
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    pems = sorted(keys_dir.glob("*.pem"))
    assert len(pems) == 2
    assert all(stat.S_IMODE(pem.stat().st_mode) == 0o600 for pem in pems)


def test_token_claims(keys_dir: Path) -> None:
    idp = DevIdp(keys_dir)
    token = idp.token(
        "agent",
        groups=["a", "b"],
        aud=["x", "y"],
        ttl=120,
        now=NOW,
        extra_claims={"repository": "acme/infra"},
        issuer="http://127.0.0.1:9",
    )
    claims = claims_of(token)
    assert claims["iss"] == "http://127.0.0.1:9"
    assert (claims["sub"], claims["groups"], claims["aud"]) == ("agent", ["a", "b"], ["x", "y"])
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (NOW, NOW, NOW + 120)
    assert claims["repository"] == "acme/infra"
    assert "groups" not in claims_of(idp.token("agent", issuer="http://127.0.0.1:9"))


def test_token_needs_an_issuer(keys_dir: Path) -> None:
    with pytest.raises(DevIdpError, match="no issuer known"):
        DevIdp(keys_dir).token("agent")


def test_unsupported_algorithm_refused(keys_dir: Path) -> None:
    with pytest.raises(DevIdpError, match="unsupported algorithm"):
        DevIdp(keys_dir).token("agent", alg="HS256", issuer="http://127.0.0.1:9")


def test_token_from_another_instance_verifies_against_running_server(
    server: DevIdpServer, keys_dir: Path
) -> None:
    """Another process minting with the same key directory: the server's issuer is remembered."""
    later = DevIdp(keys_dir)
    assert later.issuer == server.url
    for alg in ("RS256", "ES256"):
        token = later.token("agent", groups=["ops"], alg=alg)
        issuer = IssuerConfig(server.url, ("awsgate",), algorithms=(alg,), groups_claim="groups")
        assert TokenValidator([issuer]).validate(token).groups == {"ops"}


def test_rotation_without_restart(server: DevIdpServer, keys_dir: Path) -> None:
    idp = DevIdp(keys_dir)
    old_kid = idp.current().kid
    old_token = idp.token("old")
    [new] = idp.rotate()
    assert new.kid != old_kid
    assert idp.current().kid == new.kid
    published = {key["kid"] for key in get_json(server.url + "/jwks")[0]["keys"]}
    assert published == {old_kid, new.kid}
    new_token = idp.token("new")
    assert json.loads(_header(new_token))["kid"] == new.kid
    validator = validator_for(server)
    assert validator.validate(old_token).subject == "old"
    assert validator.validate(new_token).subject == "new"


def _header(token: str) -> bytes:
    import base64

    segment = token.split(".")[0]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_rotation_retires_old_keys(keys_dir: Path) -> None:
    idp = DevIdp(keys_dir)
    first = idp.current()
    for _ in range(KEYS_KEPT_PER_ALGORITHM):
        idp.rotate()
    kids = [entry.kid for entry in idp.entries()]
    assert len(kids) == KEYS_KEPT_PER_ALGORITHM
    assert first.kid not in kids
    assert not (keys_dir / f"{first.kid}.pem").exists()
    assert {pem.stem for pem in keys_dir.glob("*.pem")} == set(kids)


def test_rotate_covers_every_algorithm_in_use(keys_dir: Path) -> None:
    idp = DevIdp(keys_dir)
    before = {idp.current("RS256").kid, idp.current("ES256").kid}
    added = idp.rotate()
    assert sorted(entry.alg for entry in added) == ["ES256", "RS256"]
    assert {entry.kid for entry in added}.isdisjoint(before)


def test_kid_override_keeps_the_real_signature(keys_dir: Path) -> None:
    idp = DevIdp(keys_dir)
    token = idp.token("agent", kid="other", issuer="http://127.0.0.1:9")
    assert json.loads(_header(token))["kid"] == "other"


# -- the command -------------------------------------------------------------------


@pytest.fixture
def cli() -> Any:
    return pytest.importorskip("addons.cli").main


def test_cli_token_and_rotate(cli: Any, server: DevIdpServer, keys_dir: Path, capsys: Any) -> None:
    assert (
        cli(
            [
                "dev-idp",
                "token",
                "--keys",
                str(keys_dir),
                "--sub",
                "agent",
                "--groups",
                "a,b",
                "--claim",
                "run_attempt=2",
                "--claim",
                "repository=acme/infra",
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    result = validator_for(server).validate(token)
    assert result.groups == {"a", "b"}
    assert (result.claims["run_attempt"], result.claims["repository"]) == (2, "acme/infra")
    assert cli(["dev-idp", "rotate", "--keys", str(keys_dir)]) == 0
    assert capsys.readouterr().out.startswith("RS256 rs256-")


def test_cli_reports_bad_claims_and_missing_issuer(cli: Any, tmp_path: Path, capsys: Any) -> None:
    keys = str(tmp_path / "fresh")
    assert cli(["dev-idp", "token", "--keys", keys, "--sub", "a"]) != 0
    assert "no issuer known" in capsys.readouterr().err
    assert (
        cli(
            [
                "dev-idp",
                "token",
                "--keys",
                keys,
                "--sub",
                "a",
                "--issuer",
                "http://x",
                "--claim",
                "novalue",
            ]
        )
        != 0
    )
    assert "NAME=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serve_in_another_process(
    cli: Any, keys_dir: Path, capsys: Any, stop_signal: signal.Signals
) -> None:
    """Serves until SIGINT or SIGTERM, whichever thread the kernel hands the signal to."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from addons.cli import main; sys.exit(main())",
            "dev-idp",
            "serve",
            "--keys",
            str(keys_dir),
            "--ec",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=ROOT,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        jwks = get_json(url + "/jwks")[0]
        assert sorted(key["kty"] for key in jwks["keys"]) == ["EC", "RSA"]
        assert cli(["dev-idp", "token", "--keys", str(keys_dir), "--sub", "agent"]) == 0
        token = capsys.readouterr().out.strip()
        issuer = IssuerConfig(url, ("awsgate",))
        assert TokenValidator([issuer]).validate(token).subject == "agent"
    finally:
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "never use it in production" in stderr.lower()
