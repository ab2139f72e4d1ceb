"""Resolve a raw AWS request to the API operation it calls, and its parameters.

Everything comes from botocore's service models: the credential scope (or the
host) names the candidate services, the wire protocol names the operation
(``Action=`` for query/ec2, ``X-Amz-Target`` for json, the method and URI
template for rest-json/rest-xml, the ``/service/S/operation/O`` path for
smithy-rpc-v2-cbor) and the input shape turns the wire form back into named
parameters. Each service's index (target names, compiled URI templates) is
built on first use, so resolving a request is a few dictionary look-ups and,
for REST services, a handful of regular-expression matches.

This is the gateway's hot path and it sees hostile input: nothing here raises
for a malformed request; what cannot be resolved is ``Operation.UNKNOWN``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.etree import ElementTree

import botocore.model
import cbor2

from addons.aws import arns, endpoints, models, sigv4
from addons.context import Operation

# Bodies larger than this are not parsed for parameters (the operation is
# still resolved): policy needs identifiers, not bulk data.
MAX_PARSED_BODY = 1 << 20  # DeleteObjects' 1,000 keys of up to 1,024 bytes fit

_REST_PROTOCOLS = ("rest-json", "rest-xml")
_QUERY_PROTOCOLS = ("query", "ec2")
_SIGV4_CREDENTIAL = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_SIGV4A_CREDENTIAL = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/aws4_request")
_CBOR_PATH = re.compile(r"/service/([^/]+)/operation/([^/?]+)")
_LABEL = re.compile(r"\{([^}]+)\}")
_SKIPPED_QUERY_KEYS = ("Action", "Version")


@dataclass(frozen=True)
class RawRequest:
    """The parts of an HTTP request that say which AWS operation it calls."""

    method: str
    host: str
    path: str  # raw, percent-encoded, without the query
    query: str = ""  # raw query string, without "?"
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive
    body: bytes | None = b""  # None when the body is streamed and not available


def credential_scope(headers: Mapping[str, str], query: str) -> tuple[str, str | None] | None:
    """(signing name, region) from a SigV4/SigV4a Authorization header or presigned query."""
    text = headers.get("authorization") or ""
    if not text and "X-Amz-Credential" in query:
        text = "Credential=" + unquote(dict(parse_qsl(query)).get("X-Amz-Credential", ""))
    if match := _SIGV4_CREDENTIAL.search(text):
        return match.group(2), match.group(1)
    if match := _SIGV4A_CREDENTIAL.search(text):
        return match.group(1), None
    return None


def resolve(
    req: RawRequest,
    signing_service: str | None,
    region: str | None,
    account: str | None = None,
) -> Operation:
    """The operation ``req`` calls; ``Operation.UNKNOWN`` when no model explains it.

    ``signing_service`` and ``region`` come from the verified SigV4 credential
    scope; when they are None the request's own scope or its host is used.
    """
    headers = _lower_headers(req.headers)
    if signing_service is None and (scope := credential_scope(headers, req.query)):
        signing_service, region = scope[0], region or scope[1]
    endpoint = endpoints.classify_host(req.host)
    if not region and endpoint is not None:
        region = endpoint.region or endpoints.global_region(endpoint.partition)
    region = region or ""
    candidates = _candidates(signing_service, endpoint)
    wire = _Wire(req, headers, endpoint)
    found = _match(candidates, wire)
    if found is None:
        service = candidates[0].service if candidates else (signing_service or "unknown")
        signing = signing_service or (candidates[0].signing_name if candidates else "")
        return Operation(service, Operation.UNKNOWN, region, signing)
    index, operation, params_of = found
    try:
        params = params_of()
    except (_Unreadable, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        params, wire.unread = {}, True
    result = Operation(
        service=index.service,
        name=operation.name,
        region=region,
        signing_name=signing_service or index.signing_name,
        protocol=wire.protocol or index.protocol,
        params=params,
        unread=wire.unread,
    )
    try:
        result.resources = arns.resources_for(result, params, region, account)
    except arns.ResourcesUnknown:
        result.unread = True
    return result


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased names, repeated fields joined with ", " as a multi-dict's ``get`` does.

    Read in one pass over the fields: looking each name up in mitmproxy's
    headers is a scan of all of them (a third of a small call's resolution).
    """
    merged: dict[str, str] = {}
    for name, value in sigv4.header_pairs(headers):
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


# --- candidate services --------------------------------------------------------------


def _candidates(
    signing_service: str | None, endpoint: endpoints.Endpoint | None
) -> list[_ServiceIndex]:
    """Services that may have received the request, the host's own first."""
    if len(signing_service or "") > _MAX_NAME or len(_candidates_cache) >= _MAX_CANDIDATE_KEYS:
        return _find_candidates(signing_service, endpoint)  # hostile input: never cached
    key = (
        (signing_service, endpoint.endpoint_prefix, endpoint.services)
        if endpoint
        else signing_service
    )
    found = _candidates_cache.get(key)
    if found is None:
        found = _candidates_cache[key] = tuple(_find_candidates(signing_service, endpoint))
    return list(found)


# By signing name and what the host names (its service label and services): the only
# parts of the endpoint the choice reads. Signing names come from the agent's signature,
# so the cache is bounded.
_candidates_cache: dict[object, tuple[_ServiceIndex, ...]] = {}
_MAX_CANDIDATE_KEYS = 4096
_MAX_NAME = 64


def _find_candidates(
    signing_service: str | None, endpoint: endpoints.Endpoint | None
) -> list[_ServiceIndex]:
    by_signing = models.services_by_signing_name().get(signing_service or "", ())
    by_host = endpoint.services if endpoint else ()
    if by_signing and by_host:
        names = [name for name in by_host if name in by_signing] or list(by_signing)
    else:
        names = list(by_signing or by_host)
    # Where models share an API (rds, docdb and neptune all answer rds's
    # actions), the service named like the signing name or host comes first.
    preferred = {signing_service, endpoint.endpoint_prefix if endpoint else None}
    names.sort(key=lambda name: name not in preferred)
    return [_index(name) for name in names]


# --- the request as the resolver reads it --------------------------------------------


class _Wire:
    """Lazily parsed views of one request, shared by all candidate services."""

    def __init__(
        self, req: RawRequest, headers: dict[str, str], endpoint: endpoints.Endpoint | None
    ) -> None:
        self.req = req
        self.method = req.method.upper()
        self.headers = headers
        self.endpoint = endpoint
        self.protocol = ""
        # Set when the body carries parameters the resolver could not read.
        self.unread = False
        self._query: list[tuple[str, str]] | None = None
        self._form: list[tuple[str, str]] | None = None

    @property
    def query_pairs(self) -> list[tuple[str, str]]:
        if self._query is None:
            # The gateway forwards a raw "+" in the query as "%2B" (sigv4.strip_auth), so
            # AWS reads it as a plus: resolve it the same way, not as parse_qsl's space.
            query = self.req.query.replace("+", "%2B")
            self._query = parse_qsl(query, keep_blank_values=True)
        return self._query

    @property
    def is_form(self) -> bool:
        """Whether the body is an urlencoded form (media types ignore case)."""
        return "x-www-form-urlencoded" in self.headers.get("content-type", "").lower()

    @property
    def form_unreadable(self) -> bool:
        """A form body that is streamed or too large to read."""
        body = self.req.body
        return self.is_form and (body is None or len(body) > MAX_PARSED_BODY)

    @property
    def form_pairs(self) -> list[tuple[str, str]]:
        """The urlencoded form body of a query-protocol POST, else empty."""
        if self._form is None:
            self._form = []
            body = self.req.body
            if body and self.is_form and not self.form_unreadable:
                self._form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return self._form

    def actions(self) -> set[str]:
        """Every ``Action`` the form body and the query string name."""
        return {value for key, value in [*self.form_pairs, *self.query_pairs] if key == "Action"}


# --- per-service index ----------------------------------------------------------------


@dataclass
class _Route:
    """One compiled REST request URI template."""

    operation: botocore.model.OperationModel
    first_segment: str | None  # the literal first path segment, for the index
    regex: re.Pattern[str]
    labels: dict[str, str]  # regex group -> member name
    query_literals: tuple[tuple[str, str | None], ...]
    hint: str | None  # "x-id" value: a tie-breaker only, never decisive
    rank: tuple[int, int, int]
    required_query: tuple[str, ...]
    required_headers: tuple[str, ...]
    current: int  # 0 for a deprecated operation that shares its URI with its successor
    express_control: bool  # preferred on s3express-control (ListDirectoryBuckets, ...)

    def accepts(self, query_keys: dict[str, str]) -> bool:
        """Whether the query carries this template's literals (``?uploads``, ``?list-type=2``)."""
        for key, value in self.query_literals:
            if key not in query_keys or (value is not None and query_keys[key] != value):
                return False
        return True

    def score(self, wire: _Wire, query_keys: dict[str, str]) -> tuple[int, ...]:
        """How well a request that matches the template fits it; higher is better."""
        on_express_control = (
            wire.endpoint is not None and wire.endpoint.endpoint_prefix == "s3express-control"
        )
        present = sum(key in query_keys for key in self.required_query)
        present += sum(name in wire.headers for name in self.required_headers)
        missing = len(self.required_query) + len(self.required_headers) - present
        hint = int(self.hint is not None and query_keys.get("x-id") == self.hint)
        express = int(self.express_control == on_express_control)
        return (*self.rank, -missing, present, express, self.current, hint)


class _ServiceIndex:
    """Everything needed to resolve requests for one botocore service."""

    def __init__(self, service: str) -> None:
        model = models.service_model(service)
        meta = model.metadata
        self.service = service
        self.model = model
        self.protocols: tuple[str, ...] = tuple(meta.get("protocols") or [meta["protocol"]])
        self.protocol = self.protocols[0]
        self.signing_name: str = meta.get("signingName") or meta.get("endpointPrefix") or service
        self.query_compatible = "awsQueryCompatible" in meta
        self.api_version = meta.get("apiVersion")
        operations = [model.operation_model(name) for name in model.operation_names]
        self.by_name = {op.name: op for op in operations}
        prefix = meta.get("targetPrefix")
        self.by_target = {f"{prefix}.{op.name}": op for op in operations} if prefix else {}
        self.cbor_service = prefix
        # method -> first path segment (None when it is a label) -> routes
        self.routes: dict[str, dict[str | None, list[_Route]]] = {}
        if any(p in _REST_PROTOCOLS for p in self.protocols):
            for op in operations:
                route = _compile_route(op)
                by_segment = self.routes.setdefault(_route_method(op), {})
                by_segment.setdefault(route.first_segment, []).append(route)

    def routes_for(self, method: str, path: str) -> list[_Route]:
        by_segment = self.routes.get(method)
        if not by_segment:
            return []
        first = path.split("/", 2)[1] if path.startswith("/") and len(path) > 1 else ""
        return by_segment.get(first, []) + by_segment.get(None, [])

    @property
    def speaks_query(self) -> bool:
        return self.query_compatible or any(p in _QUERY_PROTOCOLS for p in self.protocols)

    @property
    def ec2(self) -> bool:
        return self.protocol == "ec2"


def _route_method(op: botocore.model.OperationModel) -> str:
    return op.http.get("method", "POST").upper()


@cache
def _index(service: str) -> _ServiceIndex:
    return _ServiceIndex(service)


def warm(services: Iterable[str] | None = None) -> None:
    """Build the indexes now (all services by default) instead of on first use."""
    endpoints.warm()
    for service in services if services is not None else models.service_names():
        _index(service)


def _compile_route(op: botocore.model.OperationModel) -> _Route:
    uri = op.http.get("requestUri", "/")
    path, _, query = uri.partition("?")
    pattern: list[str] = []
    labels: dict[str, str] = {}
    literal_chars = 0
    greedy = 0
    position = 0
    for number, match in enumerate(_LABEL.finditer(path)):
        literal = path[position : match.start()]
        pattern.append(re.escape(literal))
        literal_chars += len(literal)
        name = match.group(1)
        group = f"g{number}"
        if name.endswith("+"):
            pattern.append(f"(?P<{group}>.+)")
            greedy += 1
            name = name[:-1]
        else:
            pattern.append(f"(?P<{group}>[^/]+)")
        labels[group] = _uri_member(op, name)
        position = match.end()
    tail = path[position:]
    literal_chars += len(tail)
    pattern.append(re.escape(tail.rstrip("/")))
    regex = re.compile("^" + "".join(pattern) + "/?$")
    literals: list[tuple[str, str | None]] = []
    hint = None
    for item in filter(None, query.split("&")):
        key, has_value, value = item.partition("=")
        if key == "x-id":
            hint = value
        elif "{" not in value:
            literals.append((key, value if has_value else None))
    required_query, required_headers = _required_locations(op)
    first = path.split("/", 2)[1] if len(path) > 1 else ""
    return _Route(
        operation=op,
        first_segment=None if "{" in first else first,
        regex=regex,
        labels=labels,
        query_literals=tuple(literals),
        hint=hint,
        rank=(len(literals), literal_chars, -greedy),
        required_query=required_query,
        required_headers=required_headers,
        current=int(not op.deprecated),
        express_control=any(
            param.name == "UseS3ExpressControlEndpoint" and param.value
            for param in op.static_context_parameters
        ),
    )


def _uri_member(op: botocore.model.OperationModel, wire_name: str) -> str:
    shape = op.input_shape
    if shape is not None:
        for name, member in shape.members.items():
            if member.serialization.get("location") == "uri" and (
                member.serialization.get("name", name) == wire_name
            ):
                return name
    return wire_name


def _required_locations(op: botocore.model.OperationModel) -> tuple[tuple[str, ...], ...]:
    shape = op.input_shape
    if shape is None:
        return (), ()
    query, headers = [], []
    for name in shape.required_members:
        member = shape.members[name]
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "querystring" and member.type_name != "map":
            query.append(wire_name)
        elif location == "header":
            headers.append(wire_name.lower())
    return tuple(query), tuple(headers)


# --- matching -------------------------------------------------------------------------

_Found = tuple[_ServiceIndex, botocore.model.OperationModel, Any]


def _match(candidates: list[_ServiceIndex], wire: _Wire) -> _Found | None:
    if not candidates:
        return None
    target = wire.headers.get("x-amz-target")
    cbor = wire.req.path.startswith("/service/")
    if _speaks_two_protocols(wire, target, cbor):
        return None
    if target:
        return _match_json(candidates, wire, target)
    if cbor and (found := _match_cbor(candidates, wire)):
        return found
    if any(c.speaks_query for c in candidates):
        actions = wire.actions()
        if len(actions) > 1:
            return None  # the query string and the form body disagree: named two ways
        if actions and (found := _match_query(candidates, wire, actions.pop())):
            return found
    return _match_rest(candidates, wire)


def _speaks_two_protocols(wire: _Wire, target: str | None, cbor: bool) -> bool:
    """An operation named two ways (a JSON target, a CBOR path, a query ``Action``).

    No SDK sends that, and which name AWS obeys is not the gateway's guess to
    make: such a request resolves to ``unknown``, which policy refuses.
    """
    rpc = bool(target) + bool(cbor and _CBOR_PATH.fullmatch(wire.req.path))
    return rpc > 1 or (rpc == 1 and (wire.is_form or bool(wire.actions())))


def _match_json(candidates: list[_ServiceIndex], wire: _Wire, target: str) -> _Found | None:
    for index in candidates:
        op = index.by_target.get(target.strip())
        if op is not None:
            wire.protocol = "json"
            return index, op, partial(_json_params, wire.req.body, op.input_shape)
    return None


def _match_cbor(candidates: list[_ServiceIndex], wire: _Wire) -> _Found | None:
    match = _CBOR_PATH.fullmatch(wire.req.path)
    if match is None:
        return None
    service_name, name = match.groups()
    for index in candidates:
        op = index.by_name.get(name)
        if (
            op is not None
            and "smithy-rpc-v2-cbor" in index.protocols
            and (index.cbor_service in (None, service_name))
        ):
            wire.protocol = "smithy-rpc-v2-cbor"
            return index, op, partial(_cbor_params, wire.req.body, op.input_shape)
    return None


def _match_query(candidates: list[_ServiceIndex], wire: _Wire, action: str) -> _Found | None:
    version = next((v for k, v in [*wire.form_pairs, *wire.query_pairs] if k == "Version"), None)
    # elb and elbv2 share an endpoint and action names; the API version tells them apart.
    candidates = sorted(candidates, key=lambda index: index.api_version != version)
    for index in candidates:
        op = index.by_name.get(action)
        if op is not None and index.speaks_query:
            wire.protocol = "ec2" if index.ec2 else "query"
            # Query APIs take their parameters at "/": another path (SQS's legacy
            # queue URL) names a resource that the parameters may not.
            wire.unread = wire.form_unreadable or wire.req.path not in ("", "/")
            pairs = [*wire.query_pairs, *wire.form_pairs]
            return index, op, partial(_query_params, pairs, op.input_shape, index.ec2)
    return None


def _match_rest(candidates: list[_ServiceIndex], wire: _Wire) -> _Found | None:
    query_keys = dict(wire.query_pairs)
    best: tuple[tuple[int, ...], int] | None = None
    chosen: tuple[_ServiceIndex, _Route, re.Match[str]] | None = None
    for order, index in enumerate(candidates):
        if wire.method not in index.routes:
            continue
        path = _rest_path(index, wire)
        for route in index.routes_for(wire.method, path):
            if not route.accepts(query_keys) or not (match := route.regex.match(path)):
                continue
            score = (route.score(wire, query_keys), -order)
            if best is None or score > best:
                best, chosen = score, (index, route, match)
    if chosen is None:
        return None
    index, route, match = chosen
    wire.protocol = "rest-xml" if "rest-xml" in index.protocols else "rest-json"
    return index, route.operation, partial(_rest_params, index, route, match, wire)


def _rest_path(index: _ServiceIndex, wire: _Wire) -> str:
    """The request path as the URI templates see it (a virtual-host bucket moved in)."""
    path = wire.req.path or "/"
    endpoint = wire.endpoint
    bucket = _host_bucket(endpoint) if index.service == "s3" and endpoint else None
    if bucket is None:
        return path
    return "/" + bucket + (path if path != "/" else "")


def _host_bucket(endpoint: endpoints.Endpoint) -> str | None:
    if endpoint.bucket:
        return endpoint.bucket
    if endpoint.access_point and endpoint.account:
        arn = (
            f"arn:{arns.partition_of(endpoint.region)}:s3:{endpoint.region}:"
            f"{endpoint.account}:accesspoint/{endpoint.access_point}"
        )
        return arn.replace("/", "%2F")
    return None


# --- parameters -----------------------------------------------------------------------


def _scalar(value: str, shape: botocore.model.Shape) -> Any:
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(value)
        if kind in ("float", "double"):
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return value.lower() == "true"
    return value


class _Unreadable(Exception):
    """The body carries parameters the resolver cannot read: streamed, too large or
    malformed. The operation is still known; its parameters and resources are not."""


def _readable(body: bytes | None, shape: botocore.model.Shape | None) -> bytes | None:
    """The body to parse, None when there is nothing to parse; raises ``_Unreadable``."""
    if shape is None or not _body_names(shape) or body == b"":
        return None
    if body is None or len(body) > MAX_PARSED_BODY:
        raise _Unreadable
    return body


def _json_params(body: bytes | None, shape: botocore.model.Shape | None) -> dict[str, Any]:
    if (readable := _readable(body, shape)) is None or not readable.strip():
        return {}
    assert shape is not None
    try:
        data = json.loads(readable, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Unreadable from exc
    if not isinstance(data, dict):
        raise _Unreadable
    return _renamed(data, shape)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a repeated key makes it unreadable, as parsers differ on which wins."""
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a repeated key")
    return data


def _cbor_params(body: bytes | None, shape: botocore.model.Shape | None) -> dict[str, Any]:
    if (readable := _readable(body, shape)) is None:
        return {}
    assert shape is not None
    try:
        data = cbor2.loads(readable)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError) as exc:
        raise _Unreadable from exc
    if not isinstance(data, dict):
        raise _Unreadable
    return _renamed(data, shape)


def _renamed(data: dict[str, Any], shape: botocore.model.Shape) -> dict[str, Any]:
    """Top-level wire names (``locationName``) back to member names."""
    names = _body_names(shape)
    return {names[key]: value for key, value in data.items() if key in names}


@cache
def _body_names(shape: botocore.model.Shape) -> dict[str, str]:
    return {
        member.serialization.get("name", name): name
        for name, member in shape.members.items()
        if not member.serialization.get("location")
    }


# Query protocol: "A.member.1.B=x" -> {"A": {"member": {"1": {"B": "x"}}}} -> shape walk.


def _query_params(
    pairs: list[tuple[str, str]], shape: botocore.model.Shape | None, ec2: bool
) -> dict[str, Any]:
    if shape is None:
        return {}
    tree: dict[str, Any] = {}
    for key, value in pairs:
        if key in _SKIPPED_QUERY_KEYS or key.startswith("X-Amz-"):
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    result = _from_query(tree, shape, ec2)
    return result if isinstance(result, dict) else {}


def _from_query(node: Any, shape: botocore.model.Shape, ec2: bool) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(node, dict):
            return {}
        names = _query_names(shape, ec2)
        out = {}
        for wire_name, child in node.items():
            member = names.get(wire_name) or names.get(wire_name + "s")
            if member is not None:
                out[member] = _from_query(child, shape.members[member], ec2)
        return out
    if kind == "list":
        if not isinstance(node, dict):
            return []
        if not ec2 and not shape.serialization.get("flattened"):
            node = node.get(shape.member.serialization.get("name", "member"), {})
        return [_from_query(child, shape.member, ec2) for _, child in _numbered(node)]
    if kind == "map":
        if not isinstance(node, dict):
            return {}
        if not shape.serialization.get("flattened") and "entry" in node:
            node = node["entry"]
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        out = {}
        for _, entry in _numbered(node):
            if isinstance(entry, dict):
                key = entry.get(key_name, entry.get("Name"))
                value = entry.get(value_name, entry.get("Value"))
                if isinstance(key, str):
                    out[key] = _from_query(value, shape.value, ec2)
        return out
    return _scalar(node, shape) if isinstance(node, str) else node


def _numbered(node: Any) -> list[tuple[int, Any]]:
    if not isinstance(node, dict):
        return []
    return sorted((int(key), value) for key, value in node.items() if key.isdigit())


@cache
def _query_names(shape: botocore.model.Shape, ec2: bool) -> dict[str, str]:
    names = {}
    for name, member in shape.members.items():
        serialization = member.serialization
        if ec2:
            wire = serialization.get("queryName") or (
                serialization["name"][:1].upper() + serialization["name"][1:]
                if "name" in serialization
                else name
            )
        elif (
            member.type_name == "list"
            and serialization.get("flattened")
            and member.member.serialization.get("name")
        ):
            wire = member.member.serialization["name"]
        else:
            wire = serialization.get("name", name)
        names[wire] = name
        if member.type_name == "list" and serialization.get("flattened"):
            # Query-compatible JSON models lost the member's wire name, but
            # their member shape keeps it (SQS "SendMessageBatchRequestEntry.1").
            names.setdefault(member.member.name, name)
    return names


# REST: labels, query string, headers, host labels and the body.


@dataclass(frozen=True)
class _RestPlan:
    query: tuple[tuple[str, str, botocore.model.Shape], ...]
    query_map: tuple[str, botocore.model.Shape] | None
    headers: tuple[tuple[str, str, botocore.model.Shape], ...]
    header_maps: tuple[tuple[str, str], ...]
    host_labels: tuple[str, ...]
    payload: str | None
    body_members: bool


@cache
def _rest_plan(op: botocore.model.OperationModel) -> _RestPlan:
    shape = op.input_shape
    query, headers, header_maps, host_labels = [], [], [], []
    query_map = None
    body_members = False
    members = shape.members if shape is not None else {}
    for name, member in members.items():
        serialization = member.serialization
        location = serialization.get("location")
        wire = serialization.get("name", name)
        if serialization.get("hostLabel"):
            host_labels.append(name)
        if location == "querystring":
            if member.type_name == "map":
                query_map = (name, member)
            else:
                query.append((name, wire, member))
        elif location == "header":
            headers.append((name, wire.lower(), member))
        elif location == "headers":
            header_maps.append((name, wire.lower()))
        elif location is None:
            body_members = True
    payload = shape.serialization.get("payload") if shape is not None else None
    return _RestPlan(
        tuple(query),
        query_map,
        tuple(headers),
        tuple(header_maps),
        tuple(host_labels),
        payload,
        body_members,
    )


def _rest_params(
    index: _ServiceIndex, route: _Route, match: re.Match[str], wire: _Wire
) -> dict[str, Any]:
    op = route.operation
    shape = op.input_shape
    if shape is None:
        return {}
    plan = _rest_plan(op)
    members = shape.members
    params: dict[str, Any] = {}
    for group, name in route.labels.items():
        if name in members:
            params[name] = _scalar(unquote(match.group(group)), members[name])
    _add_query_params(params, plan, route, wire.query_pairs)
    for name, header, member in plan.headers:
        if header in wire.headers:
            params[name] = _header_value(wire.headers[header], member)
    for name, prefix in plan.header_maps:
        found = {k[len(prefix) :]: v for k, v in wire.headers.items() if k.startswith(prefix)}
        if found:
            params[name] = found
    if plan.host_labels and wire.endpoint is not None:
        label = wire.endpoint.account or wire.endpoint.resource_label
        for name in plan.host_labels:
            if label and name not in params:
                params[name] = label
    if plan.payload or plan.body_members:
        xml = "rest-xml" in index.protocols
        try:
            params.update(_rest_body(wire.req.body, shape, plan.payload, xml))
        except _Unreadable:
            wire.unread = True  # the path, query and headers still count
    return params


def _add_query_params(
    params: dict[str, Any], plan: _RestPlan, route: _Route, pairs: list[tuple[str, str]]
) -> None:
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    used = {key for key, _ in route.query_literals} | {"x-id"}
    for name, wire_name, member in plan.query:
        if wire_name in values:
            used.add(wire_name)
            found = values[wire_name]
            if member.type_name == "list":
                params[name] = [_scalar(v, member.member) for v in found]
            else:
                params[name] = _scalar(found[0], member)
    if plan.query_map is not None:
        name, member = plan.query_map
        rest = {
            key: found if member.value.type_name == "list" else found[0]
            for key, found in values.items()
            if key not in used and not key.startswith("X-Amz-")
        }
        if rest:
            params[name] = rest


def _header_value(value: str, shape: botocore.model.Shape) -> Any:
    if shape.type_name == "list":
        return [_scalar(item.strip(), shape.member) for item in value.split(",")]
    return _scalar(value, shape)


def _rest_body(
    body: bytes | None, shape: botocore.model.Shape, payload: str | None, xml: bool
) -> dict[str, Any]:
    target = shape.members[payload] if payload else shape
    if target.type_name != "structure":
        return {}  # blob or string payload: data, not parameters
    value = _xml_body(body, target) if xml else _json_params(body, target)
    if not value:
        return {}
    return {payload: value} if payload else value


def _xml_body(body: bytes | None, shape: botocore.model.Shape) -> dict[str, Any]:
    if (readable := _readable(body, shape)) is None:
        return {}
    if b"<!DOCTYPE" in readable or b"<!ENTITY" in readable:
        raise _Unreadable
    try:
        root = ElementTree.fromstring(readable)
    except (ElementTree.ParseError, ValueError) as exc:
        raise _Unreadable from exc
    value = _from_xml(root, shape)
    if not isinstance(value, dict):
        raise _Unreadable
    return value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _from_xml(element: ElementTree.Element, shape: botocore.model.Shape) -> Any:
    kind = shape.type_name
    if kind == "structure":
        names = _xml_names(shape)
        out: dict[str, Any] = {}
        for child in element:
            name = names.get(_local(child.tag))
            if name is None:
                continue
            member = shape.members[name]
            if member.type_name == "list" and member.serialization.get("flattened"):
                out.setdefault(name, []).append(_from_xml(child, member.member))
            elif member.type_name == "map" and member.serialization.get("flattened"):
                out.setdefault(name, {}).update(_xml_map_entries([child], member))
            else:
                out[name] = _from_xml(child, member)
        return out
    if kind == "list":
        return [_from_xml(child, shape.member) for child in element]
    if kind == "map":
        return _xml_map_entries(list(element), shape)
    return _scalar(element.text or "", shape)


def _xml_map_entries(
    entries: list[ElementTree.Element], shape: botocore.model.Shape
) -> dict[str, Any]:
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    out = {}
    for entry in entries:
        key = value = None
        for part in entry:
            tag = _local(part.tag)
            if tag == key_name:
                key = part.text or ""
            elif tag == value_name:
                value = _from_xml(part, shape.value)
        if key is not None:
            out[key] = value
    return out


@cache
def _xml_names(shape: botocore.model.Shape) -> dict[str, str]:
    names = {}
    for name, member in shape.members.items():
        if member.serialization.get("location") or member.serialization.get("xmlAttribute"):
            continue
        names[member.serialization.get("name", name)] = name
    return names
