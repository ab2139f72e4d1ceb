"""Fail closed: an exception in any stage refuses the call; nothing half-checked leaves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.e2e import harness
from tests.e2e.conftest import HERE, gateway_settings

pytestmark = pytest.mark.e2e

REQUEST_STAGES = ["scope", "flowview", "identity", "operation", "policy", "signing", "recording"]


@pytest.fixture(scope="module")
def faulty_gateway(workdir: Path, moto: harness.Moto, idp) -> Iterator[harness.Gateway]:
    gateway = harness.Gateway.configure(
        workdir / "faulty-gateway", moto, gateway_settings(idp.url, HERE / "policies" / "base.yaml")
    )
    gateway.start(moto, scripts_before=(str(HERE / "fault_injection.py"),))
    yield gateway
    gateway.stop()


def s3_with_fault(env: dict[str, str], stage: str):
    s3 = harness.agent_client(env, "s3")

    def add_header(request, **_kwargs) -> None:
        request.headers["x-awsgate-test-fault"] = stage

    s3.meta.events.register_first("before-sign.s3", add_header)
    return s3


@pytest.mark.parametrize("stage", REQUEST_STAGES)
def test_an_exception_in_a_request_stage_refuses_the_call(
    faulty_gateway: harness.Gateway, agent_token_file: Path, moto: harness.Moto, stage: str
) -> None:
    env = harness.agent_env(faulty_gateway, token_file=agent_token_file)
    bucket = f"fault-{stage}-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as refused:
        s3_with_fault(env, stage).create_bucket(Bucket=bucket)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "awsgate: internal error" in refused.value.response["Error"]["Message"]
    names = [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]
    assert bucket not in names, "a call whose checks raised reached AWS"


def test_an_exception_in_the_response_path_withholds_the_response(
    faulty_gateway: harness.Gateway, agent_token_file: Path
) -> None:
    env = harness.agent_env(faulty_gateway, token_file=agent_token_file)
    with pytest.raises(ClientError) as refused:
        s3_with_fault(env, "response").list_buckets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_without_a_fault_the_same_gateway_works(
    faulty_gateway: harness.Gateway, agent_token_file: Path
) -> None:
    env = harness.agent_env(faulty_gateway, token_file=agent_token_file)
    assert "Buckets" in s3_with_fault(env, "none").list_buckets()
