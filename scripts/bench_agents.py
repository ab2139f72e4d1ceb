"""The bench's agents: concurrent callers in one asyncio process, light on CPU.

Each agent keeps its own keep-alive connection per AWS host, reached as the SDKs
reach it through ``HTTPS_PROXY`` (CONNECT, then TLS checked against the way's CA
bundle) or straight to an endpoint URL, and alternates sts:GetCallerIdentity and
dynamodb:GetItem, each signed by botocore's SigV4 signer with the agent's own
credentials (minted through the way, as boto3 does, when the way gives no key).
No SDK client stack on the hot path: boto3 spends about 2.7 ms of CPU per call here
(this 0.7 ms), more than half of what bare mitmdump spends, and on a two-core machine
agents that heavy, with moto answering every call, left the proxy short of a core.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

REGION = "us-east-1"
TABLE = "bench-table"
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Call:
    service: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def host(self) -> str:
        return f"{self.service}.{REGION}.amazonaws.com"

    def signed(self, credentials: ReadOnlyCredentials) -> list[tuple[str, str]]:
        """The call's headers with botocore's SigV4 (a fresh X-Amz-Date each time)."""
        request = AWSRequest(
            method="POST", url=f"https://{self.host}/", data=self.body, headers=dict(self.headers)
        )
        SigV4Auth(credentials, self.service, REGION).add_auth(request)
        return [("Host", self.host), ("Content-Length", str(len(self.body)))] + [
            (name, value) for name, value in request.headers.items()
        ]


CALLS = (
    Call(
        "sts",
        (("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),),
        b"Action=GetCallerIdentity&Version=2011-06-15",
    ),
    Call(
        "dynamodb",
        (
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
        ),
        json.dumps({"TableName": TABLE, "Key": {"pk": {"S": "item-1"}}}).encode(),
    ),
)


class Connection:
    """One keep-alive HTTP/1.1 connection to one AWS host (h11 keeps the framing right)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, env: dict[str, str], endpoint_url: str | None) -> Connection:
        if endpoint_url:
            endpoint = urlsplit(endpoint_url)
            return cls(*await asyncio.open_connection(endpoint.hostname, endpoint.port))
        proxy = urlsplit(env["HTTPS_PROXY"])
        reader, writer = await asyncio.open_connection(proxy.hostname, proxy.port)
        writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        answer = await reader.readuntil(b"\r\n\r\n")
        if answer.split(b" ", 2)[1:2] != [b"200"]:
            writer.close()
            raise ConnectionError(f"CONNECT {host}: {answer.splitlines()[0]!r}")
        context = ssl.create_default_context(cafile=env["AWS_CA_BUNDLE"])
        await writer.start_tls(context, server_hostname=host)
        return cls(reader, writer)

    async def call(self, headers: list[tuple[str, str]], body: bytes) -> int:
        """Send one request, read its whole response; its status."""
        request = h11.Request(method="POST", target="/", headers=headers)
        out = self.http.send(request) + self.http.send(h11.Data(data=body))
        self.writer.write(out + self.http.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(READ_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.http.start_next_cycle()
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the connection closed before the response ended")

    def close(self) -> None:
        self.writer.close()


class Agent:
    """One agent: its own credentials and connections, the calls in turn, its latencies."""

    def __init__(self, index: int, credentials: ReadOnlyCredentials, spec: dict[str, Any]):
        self.turn = index  # agents start on different calls
        self.credentials = credentials
        self.spec = spec
        self.connections: dict[str, Connection] = {}
        self.latencies: list[float] = []
        self.errors = 0

    async def call(self) -> None:
        """The next call; a failure is counted and its connection opened afresh."""
        call = CALLS[self.turn % len(CALLS)]
        self.turn += 1
        began = time.perf_counter()
        try:
            connection = self.connections.get(call.host)
            if connection is None:
                connection = await Connection.open(
                    call.host, self.spec["env"], self.spec.get("endpoint_url")
                )
                self.connections[call.host] = connection
            status = await connection.call(call.signed(self.credentials), call.body)
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            status = 0
            if (broken := self.connections.pop(call.host, None)) is not None:
                broken.close()
        self.latencies.append(time.perf_counter() - began)
        if status != 200:
            self.errors += 1

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.call()

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


def credentials_for(env: dict[str, str]) -> ReadOnlyCredentials:
    """The way's key, or credentials minted through the way (web identity), as boto3 does."""
    import boto3

    os.environ.clear()
    os.environ.update(env)
    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise RuntimeError("the way gives the agents no credentials")
    return credentials.get_frozen_credentials()


async def together(*coroutines: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(*coroutines)


def main() -> None:
    """Each round comes as one JSON line on stdin: warm up, say ready, wait for go, call."""
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        spec = json.loads(line)
        agents = [Agent(i, credentials_for(spec["env"]), spec) for i in range(spec["agents"])]
        for _ in range(2 * len(CALLS)):
            loop.run_until_complete(together(*(agent.call() for agent in agents)))
        warm_errors = sum(agent.errors for agent in agents)
        print("ready" if not warm_errors else f"warm-up failed: {warm_errors} calls", flush=True)
        sys.stdin.readline()
        for agent in agents:
            agent.latencies.clear()
            agent.errors = 0
        started = time.time()
        deadline = time.monotonic() + spec["duration"]
        loop.run_until_complete(together(*(agent.run(deadline) for agent in agents)))
        result = {
            "latencies": [value for agent in agents for value in agent.latencies],
            "errors": sum(agent.errors for agent in agents),
            "start": started,
            "end": time.time(),
        }
        for agent in agents:
            agent.close()
        print(json.dumps(result), flush=True)
