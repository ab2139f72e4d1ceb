"""The recording addon inside mitmproxy's addon manager, writing to a real SQLite store."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils
from sqlalchemy import Engine, select

from addons import recording, settings
from addons.aws import chunked
from addons.aws.credentials import Credentials
from addons.context import METADATA_KEY, Decision, GateContext, Operation, Principal, Refusal
from addons.recording import BodyDigest, Recording, digest_stream
from addons.store import chain, db
from addons.store.models import calls

AGENT = Principal(
    "https://issuer.example", "agent-1", frozenset({"agents"}), "agent", session_id="sess-1"
)
ALLOWED = Decision("allow", "agents-work")
# Fake credentials, distinctive so a test can prove none reaches the store.
MINTED_SECRET = "FAKE-minted-secret-7d3b0e"
MINTED_TOKEN = "FAKE-minted-session-token-41aa9c"
UPSTREAM = ("http", "127.0.0.1", 5000)
WAIT = 30  # seconds for the writer to catch up (never reached when healthy)


# -- the stream wrapper --------------------------------------------------------------


def upper(data: bytes) -> bytes:
    return data.upper()


def split_in_two(data: bytes) -> list[bytes]:
    return [data[: len(data) // 2], data[len(data) // 2 :]] if data else []


def test_body_digest_passes_bytes_through_and_hashes_them() -> None:
    digest = BodyDigest()
    assert [digest(b"hello "), digest(b"world"), digest(b"")] == [b"hello ", b"world", b""]
    assert (digest.size, digest.sha256) == (11, hashlib.sha256(b"hello world").hexdigest())


def test_body_digest_composes_with_the_stream_already_set() -> None:
    sent = BodyDigest(upper)  # a request: what the agent sent
    assert sent(b"abc") == b"ABC"
    assert sent.sha256 == hashlib.sha256(b"abc").hexdigest()

    received = BodyDigest(split_in_two, hash_output=True)  # a response: what the agent got
    assert received(b"abcd") == [b"ab", b"cd"]
    assert received(b"") == []
    assert (received.size, received.sha256) == (4, hashlib.sha256(b"abcd").hexdigest())

    received_upper = BodyDigest(upper, hash_output=True)
    assert received_upper(b"abc") == [b"ABC"]
    assert received_upper.sha256 == hashlib.sha256(b"ABC").hexdigest()


def test_digest_stream_wraps_plain_and_callable_streams_once() -> None:
    request = tutils.treq()
    digest_stream(request, hash_output=False)
    assert request.stream is False  # buffered: nothing to wrap

    request.stream = True
    digest_stream(request, hash_output=False)
    assert isinstance(request.stream, BodyDigest) and request.stream.inner is None
    wrapped = request.stream
    digest_stream(request, hash_output=False)
    assert request.stream is wrapped

    request.stream = upper
    digest_stream(request, hash_output=False)
    assert isinstance(request.stream, BodyDigest) and request.stream.inner is upper


def test_digest_stream_keeps_a_chunk_resigner_reachable_for_the_signing_addon() -> None:
    signed = {
        "X-Amz-Date": "20250101T000000Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=x, Signature=" + "0" * 64,
    }
    resigner = chunked.chunk_resigner(
        Credentials("AKIDEXAMPLE", "fake-secret"),
        signed,
        "us-east-1",
        "s3",
        next(iter(chunked.CHUNK_SIGNED_MODES)),
    )
    request = tutils.treq()
    request.stream = resigner
    digest_stream(request, hash_output=False)
    assert request.stream.inner is resigner  # signing looks through the wrapper


# -- what a record says ----------------------------------------------------------------


def aws_flow(
    host: str = "dynamodb.us-east-1.amazonaws.com",
    method: str = "POST",
    path: str = "/",
    content: bytes = b'{"TableName": "jobs"}',
    headers: Mapping[str, str] | None = None,
    **gate: Any,
) -> http.HTTPFlow:
    request = tutils.treq(
        host=host,
        port=443,
        scheme=b"https",
        method=method.encode(),
        path=path.encode(),
        authority=b"",
        headers=http.Headers(
            host=host,
            **{"content-length": str(len(content))},
            **(headers or {}),
        ),
        content=content,
    )
    flow = tflow.tflow(req=request)
    flow.metadata[METADATA_KEY] = GateContext(**gate)
    return flow


def get_item(**gate: Any) -> http.HTTPFlow:
    operation = Operation(
        "dynamodb", "GetItem", "us-east-1", "dynamodb", "json", {"TableName": "jobs"},
        ["arn:aws:dynamodb:us-east-1:*:table/jobs"],
    )  # fmt: skip
    return aws_flow(
        headers={"x-amz-target": "DynamoDB_20120810.GetItem"},
        principal=AGENT,
        operation=operation,
        decision=ALLOWED,
        **gate,
    )


def route_upstream(flow: http.HTTPFlow) -> None:
    """What the signing addon does: send to the upstream, keep the AWS Host header."""
    host_header = flow.request.host_header
    flow.request.scheme, flow.request.host, flow.request.port = UPSTREAM
    flow.request.host_header = host_header


def test_the_record_keeps_the_masked_copies_not_the_wire() -> None:
    flow = get_item(
        record_request_body=b'{"TableName": "jobs", "Key": "[masked]"}',
        record_params={"TableName": "jobs", "Key": "[masked]"},
    )
    flow.request.content = b'{"TableName": "jobs", "Key": "wire-value"}'
    record = recording.call_record(flow, recording.context.get(flow))
    assert record.request_body == b'{"TableName": "jobs", "Key": "[masked]"}'
    assert record.parameters == {"TableName": "jobs", "Key": "[masked]"}
    assert record.request_body_size is None  # the writer measures the body it keeps


def test_the_record_names_the_aws_url_after_routing_to_an_upstream() -> None:
    flow = get_item()
    flow.request.path = "/some/path?x=1"
    route_upstream(flow)
    record = recording.call_record(flow, recording.context.get(flow))
    assert record.url == "https://dynamodb.us-east-1.amazonaws.com/some/path?x=1"


def test_a_refused_identity_records_what_it_attempted_without_parameters() -> None:
    flow = aws_flow(
        host="lambda.us-east-1.amazonaws.com",
        path="/2015-03-31/functions/build/invocations",
        content=b'{"secret": "in the payload"}',
        credential_scope=("lambda", "us-east-1"),
    )
    gate = recording.context.get(flow)
    gate.refusal = Refusal(
        403, "AccessDeniedException", "awsgate: token expired", "refused-identity"
    )
    record = recording.call_record(flow, gate)
    assert (record.action, record.decision, record.subject) == (
        "lambda:Invoke", "refused-identity", None,
    )  # fmt: skip
    assert record.resources == ["arn:aws:lambda:us-east-1:*:function:build"]
    assert record.parameters == {} and record.request_body is None
    assert record.request_body_size == len(b'{"secret": "in the payload"}')


# -- the addon with a store ----------------------------------------------------------------


def write_config(tmp_path: Path, store: str | None = None) -> Path:
    config = {
        "certs": str(tmp_path / "certs"),
        "store": store or f"sqlite:///{tmp_path / 'store.sqlite'}",
    }
    path = tmp_path / "awsgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


Test = Callable[[Recording], Awaitable[None]]


def run(config: Path, test: Test) -> None:
    """Run ``test`` on a running loop with the recording addon configured under a test master."""

    async def main() -> None:
        addon = Recording()
        with taddons.context() as tctx:
            # Settings first, as in the chain: it migrates the store the addon writes to.
            tctx.master.addons.add(settings.Settings(), addon)
            tctx.options.update(**{settings.OPTION: str(config)})
            try:
                await test(addon)
            finally:
                addon.done()

    asyncio.run(main())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def engine(tmp_path: Path, config: Path) -> Iterator[Engine]:
    engine = db.open_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    yield engine
    engine.dispose()


def stored(engine: Engine) -> list[Mapping[str, Any]]:
    with engine.connect() as connection:
        return [row._mapping for row in connection.execute(select(calls).order_by(calls.c.id))]


def as_bytes(chunks: bytes | Iterable[bytes]) -> bytes:
    """What a stream callable returned, as mitmproxy sends it on: bytes or several chunks."""
    return chunks if isinstance(chunks, bytes) else b"".join(chunks)


def respond(flow: http.HTTPFlow, status: int, content: bytes, **headers: str) -> None:
    flow.response = tutils.tresp(
        status_code=status, content=content, headers=http.Headers(**headers)
    )
    flow.response.timestamp_end = time.time()


async def forward(addon: Recording, flow: http.HTTPFlow) -> None:
    """The request phase of a forwarded call, as the chain runs it after signing."""
    gate = recording.context.get(flow)
    gate.signed = True
    route_upstream(flow)
    stage = addon.requestheaders(flow) if gate.streamed else addon.request(flow)
    assert stage is not None
    await stage


def test_a_forwarded_call_is_begun_before_it_leaves_then_finished(
    config: Path, engine: Engine
) -> None:
    flow = get_item(
        record_request_body=b'{"TableName": "jobs"}', record_params={"TableName": "jobs"}
    )

    async def test(addon: Recording) -> None:
        await forward(addon, flow)
        assert flow.response is None and recording.context.get(flow).recorded
        (begun,) = stored(engine)  # committed before the call left
        assert begun["chain_seq"] is None and begun["decision"] == "allow"
        respond(flow, 200, b'{"Item": {}}', **{"x-amzn-RequestId": "REQ-1"})
        recording.context.get(flow).record_response_body = b'{"Item": {}}'
        addon.responseheaders(flow)
        addon.response(flow)

    run(config, test)
    (row,) = stored(engine)
    assert (row["action"], row["status"], row["upstream_status"]) == ("dynamodb:GetItem", 200, 200)
    assert row["upstream_request_id"] == "REQ-1"
    assert row["url"] == "https://dynamodb.us-east-1.amazonaws.com/"
    assert row["request_body"] == b'{"TableName": "jobs"}'
    assert row["response_body"] == b'{"Item": {}}'
    assert row["session_id"] == "sess-1" and row["chain_seq"] == 1
    assert chain.verify(engine).ok


def test_streamed_bodies_are_recorded_as_size_and_sha256(config: Path, engine: Engine) -> None:
    upload = [b"a" * 70_000, b"b" * 50_000, b""]
    download = [b"c" * 80_000, b"d" * 1000, b""]
    flow = aws_flow(
        host="s3.amazonaws.com",
        method="PUT",
        path="/bucket/key",
        content=b"",
        principal=AGENT,
        operation=Operation("s3", "PutObject", "us-east-1", "s3", "rest-xml"),
        decision=ALLOWED,
        streamed=True,
    )
    flow.request.headers["content-length"] = str(sum(map(len, upload)))
    flow.request.stream = True

    async def test(addon: Recording) -> None:
        await forward(addon, flow)
        assert isinstance(flow.request.stream, BodyDigest)
        assert [flow.request.stream(chunk) for chunk in upload] == upload  # as mitmproxy streams
        respond(flow, 200, b"")
        flow.response.stream = True  # the masking addon decided to stream it
        addon.responseheaders(flow)
        sent = [flow.response.stream(chunk) for chunk in download]
        assert [as_bytes(chunks) for chunks in sent] == download
        addon.response(flow)

    run(config, test)
    (row,) = stored(engine)
    assert row["request_body"] is None and row["response_body"] is None
    assert row["request_body_size"] == 120_000
    assert row["request_body_sha256"] == hashlib.sha256(b"".join(upload)).hexdigest()
    assert row["response_body_size"] == 81_000
    assert row["response_body_sha256"] == hashlib.sha256(b"".join(download)).hexdigest()
    assert chain.verify(engine).ok


STS_ANSWER = f"""<AssumeRoleWithWebIdentityResponse>
  <AssumeRoleWithWebIdentityResult><Credentials>
    <AccessKeyId>ASIAFAKEMINTEDKEY01</AccessKeyId>
    <SecretAccessKey>{MINTED_SECRET}</SecretAccessKey>
    <SessionToken>{MINTED_TOKEN}</SessionToken>
  </Credentials></AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>""".encode()


def test_a_minted_session_is_recorded_without_its_secrets(
    config: Path, engine: Engine, tmp_path: Path
) -> None:
    """Even when the record's copy of the answer was not masked, the store scrubs it."""
    flow = aws_flow(
        host="sts.us-east-1.amazonaws.com",
        content=b"Action=AssumeRoleWithWebIdentity&WebIdentityToken=FAKE.JWT.TOKEN",
        principal=AGENT,
        operation=Operation("sts", "AssumeRoleWithWebIdentity", "us-east-1", "sts", "query"),
        record_request_body=b"Action=AssumeRoleWithWebIdentity&WebIdentityToken=FAKE.JWT.TOKEN",
        record_response_body=STS_ANSWER,
    )
    respond(flow, 200, STS_ANSWER)  # answered by the gateway: never signed, never forwarded

    async def test(addon: Recording) -> None:
        addon.response(flow)

    run(config, test)
    (row,) = stored(engine)
    assert (row["action"], row["decision"], row["upstream_status"]) == (
        "sts:AssumeRoleWithWebIdentity", "allow", None,
    )  # fmt: skip
    assert b"<AccessKeyId>ASIAFAKEMINTEDKEY01</AccessKeyId>" in row["response_body"]
    assert b"<SecretAccessKey>[redacted]</SecretAccessKey>" in row["response_body"]
    assert b"<SessionToken>[redacted]</SessionToken>" in row["response_body"]
    assert row["request_body"].endswith(b"WebIdentityToken=[redacted]")
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("store.sqlite*"))
    for secret in (MINTED_SECRET, MINTED_TOKEN, "FAKE.JWT.TOKEN"):
        assert secret.encode() not in raw


def test_a_refused_call_is_recorded_in_one_step(config: Path, engine: Engine) -> None:
    flow = get_item(record_params={"TableName": "jobs"})
    gate = recording.context.get(flow)
    gate.decision = Decision("deny", "no-tables", "awsgate: denied by rule 'no-tables'")
    gate.refusal = Refusal(403, "AccessDeniedException", gate.decision.message, "deny")
    respond(flow, 403, b'{"__type": "AccessDeniedException"}')
    gate.record_response_body = flow.response.content

    async def test(addon: Recording) -> None:
        assert addon.request(flow) is None  # skipped: the flow already has its answer
        addon.response(flow)

    run(config, test)
    (row,) = stored(engine)
    assert (row["decision"], row["rule"], row["status"]) == ("deny", "no-tables", 403)
    assert row["upstream_status"] is None and row["message"].startswith("awsgate: denied")
    assert row["chain_seq"] == 1


def test_a_failed_upstream_connection_is_recorded_with_its_error(
    config: Path, engine: Engine
) -> None:
    flow = get_item()

    async def test(addon: Recording) -> None:
        await forward(addon, flow)
        flow.error = tflow.terr("server refused the connection")
        addon.error(flow)

    run(config, test)
    (row,) = stored(engine)
    assert row["error"] == "server refused the connection"
    assert row["status"] is None and row["duration_ms"] >= 0 and row["chain_seq"] == 1


def test_calls_are_refused_when_the_store_cannot_be_written(
    config: Path, engine: Engine, tmp_path: Path
) -> None:
    flow = get_item()

    async def test(addon: Recording) -> None:
        await forward(addon, get_item())  # the store works, and the writer knows its file
        database = tmp_path / "store.sqlite"
        database.rename(tmp_path / "aside.sqlite")
        database.mkdir()
        await forward(addon, flow)

    run(config, test)
    gate = recording.context.get(flow)
    assert flow.response is not None and flow.response.status_code == 503
    assert not gate.signed and not gate.recorded and gate.refusal is not None
    body = flow.response.get_text()
    assert "awsgate: the record store cannot be written" in body and "was replaced" in body


def test_the_gateway_refuses_to_start_without_a_store(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'a-directory'}")
    # mitmproxy rolls the option back after the error, so the message that surfaces may be
    # the rollback's; the e2e tests check the gateway's log names the store.
    with pytest.raises(exceptions.OptionsError):
        run(config, lambda addon: asyncio.sleep(0))


def test_migrating_logs_nothing_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db.migrate(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
    assert logging.getLogger("alembic").level == logging.NOTSET  # put back as it was
