"""Recognising AWS endpoint names, and refusing everything that only looks like one."""

from __future__ import annotations

import pytest

from addons.aws.endpoints import classify_host, is_endpoint_for


@pytest.mark.parametrize(
    ("host", "prefix", "region", "partition", "extra"),
    [
        ("sts.amazonaws.com", "sts", None, "aws", {}),
        ("sts.us-east-1.amazonaws.com", "sts", "us-east-1", "aws", {}),
        ("sts-fips.us-east-1.amazonaws.com", "sts", "us-east-1", "aws", {"fips": True}),
        ("STS.US-EAST-1.AMAZONAWS.COM:443", "sts", "us-east-1", "aws", {}),
        ("iam.amazonaws.com", "iam", None, "aws", {}),
        ("iam.global.api.aws", "iam", None, "aws", {"dualstack": True}),
        ("s3.amazonaws.com", "s3", None, "aws", {}),
        ("mybucket.s3.us-east-1.amazonaws.com", "s3", "us-east-1", "aws", {"bucket": "mybucket"}),
        ("my.dotted.bucket.s3.amazonaws.com", "s3", None, "aws", {"bucket": "my.dotted.bucket"}),
        ("bucket.s3-us-west-2.amazonaws.com", "s3", "us-west-2", "aws", {"bucket": "bucket"}),
        ("bucket.s3-external-1.amazonaws.com", "s3", None, "aws", {"bucket": "bucket"}),
        ("s3.dualstack.us-east-1.amazonaws.com", "s3", "us-east-1", "aws", {"dualstack": True}),
        (
            "bucket.s3.dualstack.eu-west-1.amazonaws.com",
            "s3",
            "eu-west-1",
            "aws",
            {"dualstack": True, "bucket": "bucket"},
        ),
        ("s3-fips.us-east-1.amazonaws.com", "s3", "us-east-1", "aws", {"fips": True}),
        (
            "reports-123456789012.s3-accesspoint.us-west-2.amazonaws.com",
            "s3-accesspoint",
            "us-west-2",
            "aws",
            {"access_point": "reports", "account": "123456789012"},
        ),
        (
            "123456789012.s3-control.us-east-1.amazonaws.com",
            "s3-control",
            "us-east-1",
            "aws",
            {"account": "123456789012"},
        ),
        ("ec2.us-east-1.api.aws", "ec2", "us-east-1", "aws", {"dualstack": True}),
        ("lambda.us-east-1.api.aws", "lambda", "us-east-1", "aws", {"dualstack": True}),
        ("dynamodb-fips.us-east-1.amazonaws.com", "dynamodb", "us-east-1", "aws", {"fips": True}),
        ("fips.transcribe.ca-central-1.amazonaws.com", "transcribe", "ca-central-1", "aws", {}),
        ("s3.cn-north-1.amazonaws.com.cn", "s3", "cn-north-1", "aws-cn", {}),
        ("sts.cn-northwest-1.amazonaws.com.cn", "sts", "cn-northwest-1", "aws-cn", {}),
        ("ec2.us-gov-west-1.amazonaws.com", "ec2", "us-gov-west-1", "aws-us-gov", {}),
        (
            "123456789012.ddb.us-east-1.amazonaws.com",
            "ddb",
            "us-east-1",
            "aws",
            {"account": "123456789012"},
        ),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "runtime.sagemaker", "us-east-1", "aws", {}),
        ("api.ecr.us-east-1.amazonaws.com", "api.ecr", "us-east-1", "aws", {}),
        ("data-ats.iot.us-east-1.amazonaws.com", "data-ats.iot", "us-east-1", "aws", {}),
        (
            "a1b2c3-ats.iot.us-east-1.amazonaws.com",
            "iot",
            "us-east-1",
            "aws",
            {"resource_label": "a1b2c3-ats"},
        ),
        (
            "abcdef1234.execute-api.eu-west-1.amazonaws.com",
            "execute-api",
            "eu-west-1",
            "aws",
            {"resource_label": "abcdef1234"},
        ),
        (
            "search-logs-abc123.us-east-1.es.amazonaws.com",
            "es",
            "us-east-1",
            "aws",
            {"resource_label": "search-logs-abc123"},
        ),
    ],
)
def test_classifies_aws_endpoints(
    host: str, prefix: str, region: str | None, partition: str, extra: dict[str, object]
) -> None:
    endpoint = classify_host(host)
    assert endpoint is not None
    assert (endpoint.endpoint_prefix, endpoint.region, endpoint.partition) == (
        prefix,
        region,
        partition,
    )
    for name, value in extra.items():
        assert getattr(endpoint, name) == value, name


@pytest.mark.parametrize(
    "host",
    [
        "evil.example.com",
        "s3.amazonaws.com.evil.com",
        "sts.us-east-1.amazonaws.com.attacker.net",
        "amazonaws.com",
        "evil.amazonaws.com",
        "foo.ec2.us-east-1.amazonaws.com",  # no leading label on a plain service name
        "my-lb-123.us-east-1.elb.amazonaws.com",  # a customer's load balancer
        "ec2-1-2-3-4.compute-1.amazonaws.com",  # a customer's instance
        "bucket.s3-website-us-east-1.amazonaws.com",  # static website hosting, not the API
        "sts.xx-nowhere-1.amazonaws.com",
        "sts..amazonaws.com",
        "notanaccount.ddb.us-east-1.amazonaws.com",
        "bucket.s3.us-east-1.amazonaws.com:443@evil.com",
        "[::1]",
        "127.0.0.1",
        "",
    ],
)
def test_rejects_names_that_are_not_aws_endpoints(host: str) -> None:
    assert classify_host(host) is None


@pytest.mark.parametrize(
    ("host", "signing_name"),
    [
        ("sts.amazonaws.com", "sts"),
        ("sts.us-west-2.amazonaws.com", "sts"),
        ("email.us-east-1.amazonaws.com", "ses"),
        ("monitoring.us-east-1.amazonaws.com", "monitoring"),
        ("sqs.eu-west-1.amazonaws.com", "sqs"),
        ("states.us-east-1.amazonaws.com", "states"),
        ("logs.us-east-1.amazonaws.com", "logs"),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "sagemaker"),
        ("es.us-east-1.amazonaws.com", "es"),
        ("search-logs-abc123.us-east-1.es.amazonaws.com", "es"),
        ("entitlement.marketplace.us-east-1.amazonaws.com", "aws-marketplace"),
        ("metering.marketplace.us-east-1.amazonaws.com", "aws-marketplace"),
        ("abcdef1234.execute-api.us-east-1.amazonaws.com", "execute-api"),
        ("data-ats.iot.us-east-1.amazonaws.com", "iotdata"),
        ("a1b2c3-ats.iot.us-east-1.amazonaws.com", "iotdata"),
        ("iot.us-east-1.amazonaws.com", "iot"),
        ("mybucket.s3.us-east-1.amazonaws.com", "s3"),
        ("123456789012.s3-control.us-east-1.amazonaws.com", "s3"),
        ("123456789012.ddb.us-east-1.amazonaws.com", "dynamodb"),
        ("dynamodb.us-east-1.amazonaws.com", "dynamodb"),
        ("iam.amazonaws.com", "iam"),
        ("lambda.us-east-1.api.aws", "lambda"),
    ],
)
def test_endpoint_serves_signing_name(host: str, signing_name: str) -> None:
    assert is_endpoint_for(host, signing_name)


@pytest.mark.parametrize(
    ("host", "signing_name"),
    [
        ("evil.example.com", "s3"),
        ("s3.amazonaws.com.evil.com", "s3"),
        ("sts.amazonaws.com", "s3"),  # a genuine endpoint, but of another service
        ("email.us-east-1.amazonaws.com", "email"),  # SES signs as "ses"
        ("iot.us-east-1.amazonaws.com", "iotdata"),  # the control plane, not the data plane
        ("monitoring.us-east-1.amazonaws.com", "cloudwatch"),
        ("dynamodb.us-east-1.amazonaws.com", "sts"),
    ],
)
def test_endpoint_refuses_other_signing_names(host: str, signing_name: str) -> None:
    assert not is_endpoint_for(host, signing_name)
