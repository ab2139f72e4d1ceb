"""A local stand-in stack for the demo and the end-to-end tests (development only).

moto as AWS with signature checking on, a real gateway process with the addon
chain, and agents going through ``HTTPS_PROXY``. Loopback only: moto and the
gateway listen on 127.0.0.1, and the gateway's ``upstream`` sends every AWS
request to moto; no traffic ever goes to a real AWS endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from addons.settings import READY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REGION = "us-east-1"
ACCOUNT = "123456789012"

# Variables that would let an agent or the gateway reach somewhere else.
_SCRUBBED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def base_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_DEFAULT_REGION=REGION,
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before listening on {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _moto_server(port: int) -> list[str]:
    return [sys.executable, "-m", "addons.devstack_moto", "-H", "127.0.0.1", "-p", str(port)]


@dataclass
class Moto:
    """moto in server mode, with IAM signature checking switched on."""

    port: int
    process: subprocess.Popen[bytes]
    access_key: str = ""
    secret_key: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str, **kwargs: Any) -> Any:
        """A client straight to moto with the gateway's own key (the 'admin' view)."""
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=kwargs.pop("access_key", self.access_key),
            aws_secret_access_key=kwargs.pop("secret_key", self.secret_key),
            config=Config(proxies={}, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
            **kwargs,
        )

    def enable_auth(self) -> None:
        """Create the gateway's IAM user and key, then turn signature checking on."""
        iam = self.client("iam", access_key="bootstrap", secret_key="bootstrap")
        iam.create_user(UserName="awsgate-gateway")
        iam.put_user_policy(
            UserName="awsgate-gateway",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="awsgate-gateway")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body from moto
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, log_dir: Path, serve: Callable[[int], list[str]] | None = None
    ) -> Iterator[Moto]:
        """moto's server on a free loopback port, with the gateway's IAM user and auth on.

        ``serve`` gives the command serving moto on a port (default: moto's own server
        with addons/devstack_moto.py's fix for bodiless requests, such as Lambda GETs).
        """
        port = free_port()
        log = (log_dir / "moto.log").open("wb")
        command = (serve or _moto_server)(port)
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=base_env(), cwd=ROOT
        )
        try:
            wait_for_port(port, process)
            moto = cls(port, process)
            moto.enable_auth()
            yield moto
        finally:
            stop(process)
            log.close()


@contextlib.contextmanager
def throwaway_database(base_url: str, prefix: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the server at ``base_url``; its URL. Dropped after."""
    from sqlalchemy import make_url, text

    from addons.store.db import open_engine

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = open_engine(base_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Gateway:
    """A real ``mitmdump`` running ``addons/gateway.py`` with a config file."""

    port: int
    workdir: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        settings = yaml.safe_load(self.config_path.read_text())
        return (self.workdir / settings.get("certs", "certs")).resolve() / "mitmproxy-ca-cert.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(
        self,
        moto: Moto,
        extra_args: tuple[str, ...] = (),
        wait: bool = True,
        via_cli: bool = False,
        scripts_before: tuple[str, ...] = (),
        program: str = "mitmdump",
    ) -> None:
        """Start ``mitmdump -s addons/gateway.py`` (or ``awsgate run`` with ``via_cli``).

        ``scripts_before`` are mitmproxy scripts loaded ahead of the gateway (tests only);
        ``program`` may be ``mitmweb`` (give it ``--web-port`` in ``extra_args``).
        """
        if via_cli:
            command = [
                str(BIN / "awsgate"),
                "run",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *extra_args,
            ]
        else:
            command = [
                str(BIN / program),
                *(arg for script in scripts_before for arg in ("-s", script)),
                "-s",
                str(ROOT / "addons" / "gateway.py"),
                "--set",
                f"awsgate_config={self.config_path}",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(self.port),
                *extra_args,
            ]
        env = base_env(AWS_ACCESS_KEY_ID=moto.access_key, AWS_SECRET_ACCESS_KEY=moto.secret_key)
        self.process = subprocess.Popen(
            command,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        if wait:
            wait_for_port(self.port, self.process)
            self.wait_until_ready()

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Wait for the gateway's ready line: under ``mitmdump -s`` the port opens first."""
        deadline = time.monotonic() + timeout
        while READY not in self.log_text():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway was not ready after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    @classmethod
    def configure(cls, workdir: Path, moto: Moto, settings: Mapping[str, Any]) -> Gateway:
        workdir.mkdir(parents=True, exist_ok=True)
        config = {"certs": "certs", "upstream": moto.url, "store": "sqlite:///awsgate.sqlite"}
        config.update(settings)
        config_path = workdir / "awsgate.yaml"
        config_path.write_text(yaml.safe_dump(config))
        return cls(free_port(), workdir, config_path)


def agent_env(
    gateway: Gateway, token_file: Path | None = None, proxy_token: str | None = None, **extra: str
) -> dict[str, str]:
    """What an agent sets: HTTPS_PROXY, its CA bundle, and its OIDC identity; no AWS key."""
    proxy = gateway.proxy_url
    if proxy_token is not None:
        proxy = f"http://awsgate:{proxy_token}@127.0.0.1:{gateway.port}"
    # A HOME of its own: the AWS CLI caches minted credentials under ~/.aws/cli/cache.
    home = gateway.workdir / "agent-home"
    home.mkdir(exist_ok=True)
    env = base_env(HOME=str(home), HTTPS_PROXY=proxy, AWS_CA_BUNDLE=str(gateway.ca_bundle))
    env.update(extra)
    if token_file is not None:
        env.update(
            AWS_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/agent",
            AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file),
            AWS_ROLE_SESSION_NAME="agent",
        )
    return env


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run in-process boto3 as an agent would: with exactly ``env`` as the environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def agent_client(env: Mapping[str, str], service: str, **config: Any) -> Any:
    """An unmodified boto3 client built inside the agent's environment.

    botocore reads proxies, the CA bundle and the web identity settings when a
    client is created, so the credentials are resolved here too, inside ``env``.
    """
    with environment(env):
        session = boto3.Session()
        client = session.client(service, config=Config(retries={"max_attempts": 1}, **config))
        credentials = session.get_credentials()
        if credentials is not None:
            credentials.get_frozen_credentials()
        return client


def aws_cli(
    env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the AWS CLI v1 as an agent; returns the completed process (never raises on failure)."""
    return subprocess.run(
        [str(BIN / "aws"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
