"""Endpoint name variants through the gateway: global and regional STS, S3 virtual-host
and path style, dual-stack and FIPS names."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e import harness

pytestmark = pytest.mark.e2e


def test_global_sts_endpoint(agent: dict[str, str]) -> None:
    """Older SDKs and AWS_STS_REGIONAL_ENDPOINTS=legacy call sts.amazonaws.com."""
    env = dict(agent, AWS_STS_REGIONAL_ENDPOINTS="legacy")
    sts = harness.agent_client(env, "sts")
    assert sts.meta.endpoint_url == "https://sts.amazonaws.com"
    assert sts.get_caller_identity()["Arn"].endswith(":user/awsgate-gateway")


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_s3_addressing_styles(agent: dict[str, str], moto: harness.Moto, style: str) -> None:
    s3 = harness.agent_client(agent, "s3", s3={"addressing_style": style})
    bucket = f"style-{style}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert moto.client("s3").head_object(Bucket=bucket, Key="k")["ContentLength"] == 1


@pytest.mark.parametrize(
    ("service", "options", "host"),
    [
        ("sts", {"use_fips_endpoint": True}, "sts-fips.us-east-1.amazonaws.com"),
        ("sts", {"use_dualstack_endpoint": True}, "sts.us-east-1.api.aws"),
        ("dynamodb", {"use_fips_endpoint": True}, "dynamodb-fips.us-east-1.amazonaws.com"),
    ],
)
def test_fips_and_dualstack_names(
    agent: dict[str, str], service: str, options: dict, host: str
) -> None:
    client = harness.agent_client(agent, service, **options)
    assert client.meta.endpoint_url == f"https://{host}"
    if service == "sts":
        assert client.get_caller_identity()["Arn"].endswith(":user/awsgate-gateway")
    else:
        assert "TableNames" in client.list_tables()
