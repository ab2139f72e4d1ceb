"""Recognise AWS endpoint host names.

The gateway re-signs requests with credentials only it holds, so it must know
that a host is a genuine AWS endpoint before it signs anything for it. All the
knowledge here comes from botocore's data: the partitions (DNS suffixes and
region patterns), ``endpoints.json`` (explicit and legacy host names), the
service models (``endpointPrefix``, ``signingName``, ``endpoint.hostPrefix``)
and the endpoint rule sets (host templates such as ``{Bucket}.s3.{Region}...``
or ``{AccountId}.ddb.{Region}...`` and the signing names their auth schemes
declare). A short table covers the few customer-resource endpoints that
botocore does not model because SDKs get them from the resource itself.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from addons.aws import models

_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ACCOUNT_RE = re.compile(r"\d{12}")
_ACCESS_POINT_RE = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?)-(\d{12})")
_PLACEHOLDER_RE = re.compile(r"\{([^}]*)\}")
_LEGACY_S3_RE = re.compile(r"s3-(fips-)?(.+)")

# What the labels left of a service label may be.
BUCKET = "bucket"  # S3 virtual-host style: any bucket name, dots allowed
ACCESS_POINT = "access-point"  # "{name}-{account}"
ACCOUNT = "account"  # a 12-digit account id
LABEL = "label"  # one resource label (API id, graph id, endpoint id, ...)

# Customer-resource endpoints botocore has no template for: the SDK is handed
# the host (API Gateway invoke URLs, IoT device endpoints, OpenSearch domain
# and collection endpoints). service label -> (leading kind, extra signing names).
_CUSTOMER_ENDPOINTS: dict[str, tuple[str, frozenset[str]]] = {
    "execute-api": (LABEL, frozenset({"execute-api"})),
    "iot": (LABEL, frozenset({"iotdata", "iot-jobs-data"})),
    "es": (LABEL, frozenset({"es"})),
    "aoss": (LABEL, frozenset({"aoss"})),
    # WriteGetObjectResponse goes to "{RequestRoute}.s3-object-lambda.{region}".
    "s3-object-lambda": (LABEL, frozenset({"s3-object-lambda"})),
}
_IOT_DEVICE_LABEL = re.compile(r"[a-z0-9]+-ats")


@dataclass(frozen=True)
class Endpoint:
    """What an AWS host name says about the request sent to it."""

    host: str
    endpoint_prefix: str  # the service part of the name: "s3", "runtime.sagemaker", "ddb"
    region: str | None  # None for global endpoints (iam.amazonaws.com)
    partition: str  # "aws", "aws-cn", "aws-us-gov", ...
    fips: bool = False
    dualstack: bool = False
    bucket: str | None = None  # S3 virtual-host style bucket
    access_point: str | None = None  # S3 access point name
    account: str | None = None  # account id carried in the name
    resource_label: str | None = None  # API id, graph id, OpenSearch domain label, ...
    services: tuple[str, ...] = ()  # botocore services this name serves
    signing_names: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Prefix:
    """One service label as it appears in host names."""

    services: set[str] = field(default_factory=set)
    signing_names: set[str] = field(default_factory=set)
    leading: set[str] = field(default_factory=set)  # allowed kinds of leading labels


@dataclass(frozen=True)
class _Suffix:
    suffix: str
    dualstack: bool
    partitions: tuple[tuple[str, re.Pattern[str], frozenset[str]], ...]  # id, regex, regions

    def partition_for(self, region: str | None) -> str | None:
        for name, pattern, regions in self.partitions:
            if region is None or region in regions or pattern.fullmatch(region):
                return name
        return None


@dataclass
class _Catalogue:
    suffixes: list[_Suffix]
    prefixes: dict[str, _Prefix]
    patterns: list[tuple[re.Pattern[str], _Prefix]]  # service labels with a variable part
    exact: dict[str, tuple[str, str | None, bool, bool]]  # host -> prefix, region, fips, dual
    max_prefix_labels: int


@cache
def _suffixes() -> list[_Suffix]:
    grouped: dict[tuple[str, bool], list[tuple[str, re.Pattern[str], frozenset[str]]]] = (
        defaultdict(list)
    )
    for part in models.loader().load_data("partitions")["partitions"]:
        outputs = part["outputs"]
        entry = (part["id"], re.compile(part["regionRegex"]), frozenset(part.get("regions", {})))
        grouped[(outputs["dnsSuffix"], False)].append(entry)
        grouped[(outputs["dualStackDnsSuffix"], True)].append(entry)
    found = [_Suffix(s, dual, tuple(parts)) for (s, dual), parts in grouped.items()]
    return sorted(found, key=lambda s: -len(s.suffix))


def _add_model_prefixes(prefixes: dict[str, _Prefix]) -> None:
    for service in models.service_names():
        meta = models.metadata(service)
        prefix = meta.get("endpointPrefix") or service
        signing = meta.get("signingName") or prefix
        entry = prefixes[prefix]
        entry.services.add(service)
        entry.signing_names.add(signing)
        for host_prefix in models.host_prefixes(service).values():
            if not host_prefix:
                continue
            if "{" in host_prefix:
                entry.leading.add(ACCOUNT if "AccountId" in host_prefix else LABEL)
                continue
            combined = prefixes[host_prefix + prefix]
            combined.services.add(service)
            combined.signing_names.add(signing)


def _add_endpoints_json(
    prefixes: dict[str, _Prefix], suffixes: list[_Suffix]
) -> dict[str, tuple[str, str | None, bool, bool]]:
    exact: dict[str, tuple[str, str | None, bool, bool]] = {}
    for part in models.loader().load_data("endpoints")["partitions"]:
        regions = set(part.get("regions", {}))
        for key, service in part["services"].items():
            entry = prefixes[key]
            default_scope = service.get("defaults", {}).get("credentialScope", {})
            if "service" in default_scope:
                entry.signing_names.add(default_scope["service"])
            common_name = service.get("defaults", {}).get("sslCommonName")
            for region_key, endpoint in service.get("endpoints", {}).items():
                # Legacy names some clients still call, e.g. the AWS CLI v1's SQS
                # {region}.queue.amazonaws.com (botocore's sslCommonName).
                template = endpoint.get("sslCommonName", common_name)
                if template and region_key in regions:
                    legacy = template.format(
                        region=region_key, service=key, dnsSuffix=part["dnsSuffix"]
                    )
                    if _known_suffix(legacy, suffixes):
                        exact.setdefault(legacy, (key, region_key, False, False))
                scope = endpoint.get("credentialScope", {})
                if "service" in scope:
                    entry.signing_names.add(scope["service"])
                region = region_key if region_key in regions else None
                if region is None and scope.get("region") in regions and "fips" in region_key:
                    region = scope["region"]
                variants = endpoint.get("variants", [])
                names = [(endpoint.get("hostname"), ())]
                names += [(v.get("hostname"), tuple(v["tags"])) for v in variants]
                for host, tags in names:
                    if not host or "{" in host or not _known_suffix(host, suffixes):
                        continue
                    fips = "fips" in tags or "fips" in host
                    exact[host] = (key, region, fips, "dualstack" in tags)
    return exact


def _known_suffix(host: str, suffixes: list[_Suffix]) -> bool:
    return any(host.endswith("." + s.suffix) for s in suffixes)


def _walk_rule_urls(node: Any, found: list[tuple[str, str | None]]) -> None:
    """Collect (url template, signing name of its auth scheme) from a rule set."""
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str):
            schemes = (node.get("properties") or {}).get("authSchemes") or [{}]
            found.append((url, schemes[0].get("signingName")))
        for key, value in node.items():
            if key != "url":
                _walk_rule_urls(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk_rule_urls(value, found)


@cache
def _rule_set_urls() -> dict[str, list[tuple[str, str | None]]]:
    """Every service's endpoint URL templates, cached on disk with the model summary."""
    return models.per_service_cached("endpoint-urls", _service_rule_set_urls)


def _service_rule_set_urls(service: str) -> list[tuple[str, str | None]]:
    try:
        rules = models.loader().load_service_model(service, "endpoint-rule-set-1")
    except Exception:  # a service without rule set: endpoints.json covers it
        return []
    found: list[tuple[str, str | None]] = []
    _walk_rule_urls(rules, found)
    return found


def _leading_kind(placeholder: str) -> str:
    if "bucket" in placeholder.lower() and "accesspoint" not in placeholder.lower():
        return BUCKET
    if "accessPointName" in placeholder:
        return ACCESS_POINT
    if placeholder.lower().endswith("accountid"):
        return ACCOUNT
    return LABEL


def _rule_set_labels(authority: str, suffixes: list[_Suffix]) -> list[str] | None:
    """The labels naming the service (and what precedes it) in a host template."""
    host = _PLACEHOLDER_RE.sub(_placeholder_token, authority)
    for suffix in [*(s.suffix for s in suffixes), *_EXTRA_SUFFIXES]:
        if host.endswith("." + suffix):
            host = host[: -len(suffix)] + "SUFFIX"
            break
    labels = host.split(".")
    if labels[-1] != "SUFFIX":
        return None
    labels.pop()
    while labels and (labels[-1] in ("REGION", "dualstack", "global") or _is_region(labels[-1])):
        labels.pop()
    return labels or None


_EXTRA_SUFFIXES = ("on.aws",)  # Lambda function URLs, Aurora DSQL, ... (AWS-owned)


def _placeholder_token(match: re.Match[str]) -> str:
    name = match.group(1)
    if "egion" in name:
        return "REGION"
    if "nsSuffix" in name:
        return "SUFFIX"
    return "{" + name + "}"


def _is_region(label: str) -> bool:
    return "-" in label and any(s.partition_for(label) for s in _suffixes())


def _add_rule_set_hosts(
    prefixes: dict[str, _Prefix], patterns: dict[str, _Prefix], service: str, signing: str
) -> None:
    """Learn service labels and their leading labels from one service's rule set."""
    for url, scheme_signing in _rule_set_urls()[service]:
        authority = url.split("://", 1)[-1].split("/", 1)[0]
        if authority.startswith(("{Endpoint", "{url#")):
            continue
        raw_labels = _rule_set_labels(authority, _suffixes())
        if not raw_labels:
            continue
        variable = [i for i, label in enumerate(raw_labels) if "{" in label]
        start = variable[-1] + 1 if variable else 0
        key, _ = _service_key(raw_labels[start:])
        if key:
            entry = prefixes[key]
        else:
            # The service label itself is variable ("s3express-{zone}"): keep a pattern.
            template = authority.split(".")[variable.pop()].replace("-fips", "")
            pattern = _PLACEHOLDER_RE.sub("[a-z0-9-]+", template.replace("-", r"\-"))
            if pattern == "[a-z0-9-]+":
                continue
            entry = patterns[pattern]
        entry.services.add(service)
        entry.signing_names.add(scheme_signing or signing)
        if variable:
            first = _PLACEHOLDER_RE.search(authority.split(".")[0])
            entry.leading.add(_leading_kind(first.group(1)) if first else LABEL)


@cache
def _catalogue() -> _Catalogue:
    suffixes = _suffixes()
    prefixes: dict[str, _Prefix] = defaultdict(_Prefix)
    _add_model_prefixes(prefixes)
    exact = _add_endpoints_json(prefixes, suffixes)
    patterns: dict[str, _Prefix] = defaultdict(_Prefix)
    for service in models.service_names():
        meta = models.metadata(service)
        signing = meta.get("signingName") or meta.get("endpointPrefix") or service
        _add_rule_set_hosts(prefixes, patterns, service, signing)
    for label, (kind, signing_names) in _CUSTOMER_ENDPOINTS.items():
        prefixes[label].leading.add(kind)
        prefixes[label].signing_names.update(signing_names)
    longest = max(key.count(".") + 1 for key in prefixes)
    compiled = [(re.compile(pattern), entry) for pattern, entry in patterns.items()]
    return _Catalogue(suffixes, dict(prefixes), compiled, exact, longest)


@cache
def global_region(partition: str) -> str:
    """The region that signs for a partition's global endpoints (us-east-1 for aws)."""
    for part in models.loader().load_data("partitions")["partitions"]:
        if part["id"] == partition:
            return part["outputs"]["implicitGlobalRegion"]
    return "us-east-1"


def warm() -> None:
    """Build the host catalogue now rather than on the first request."""
    _catalogue()


def _split_suffix(host: str, catalogue: _Catalogue) -> tuple[_Suffix, list[str]] | None:
    for suffix in catalogue.suffixes:
        if host.endswith("." + suffix.suffix):
            rest = host[: -len(suffix.suffix) - 1]
            return suffix, rest.split(".")
    return None


def _service_key(labels: list[str]) -> tuple[str, bool]:
    """The endpoint prefix spelled by ``labels`` without FIPS markers."""
    fips = False
    if len(labels) > 1 and labels[0] == "fips":
        labels, fips = labels[1:], True
    cleaned = []
    for label in labels:
        if label.endswith("-fips"):
            label, fips = label[: -len("-fips")], True
        cleaned.append(label)
    return ".".join(cleaned), fips


def _match_service(
    labels: list[str], catalogue: _Catalogue
) -> tuple[str, _Prefix, bool, list[str]] | None:
    """Longest known service label sequence at the end of ``labels``."""
    for count in range(min(len(labels), catalogue.max_prefix_labels + 1), 0, -1):
        key, fips = _service_key(labels[-count:])
        if key in catalogue.prefixes:
            return key, catalogue.prefixes[key], fips, labels[:-count]
    key, fips = _service_key(labels[-1:])
    for pattern, entry in catalogue.patterns:
        if pattern.fullmatch(key):
            return key, entry, fips, labels[:-1]
    return None


def _find_region(labels: list[str], suffix: _Suffix) -> int | None:
    for index in range(len(labels) - 1, -1, -1):
        if suffix.partition_for(labels[index]) is not None and "-" in labels[index]:
            return index
    return None


def _leading_fields(kind_set: set[str], leading: list[str], prefix: str) -> dict[str, str] | None:
    """Interpret the labels left of the service label, or None if not allowed."""
    if not leading:
        return {}
    joined = ".".join(leading)
    if BUCKET in kind_set and 3 <= len(joined) <= 63 and all(map(_LABEL_RE.fullmatch, leading)):
        return {"bucket": joined}
    if len(leading) != 1:
        return None
    label = leading[0]
    if ACCESS_POINT in kind_set and (match := _ACCESS_POINT_RE.fullmatch(label)):
        return {"access_point": match.group(1), "account": match.group(2)}
    if ACCOUNT in kind_set and _ACCOUNT_RE.fullmatch(label):
        return {"account": label}
    if LABEL in kind_set and _LABEL_RE.fullmatch(label):
        if prefix == "iot" and not _IOT_DEVICE_LABEL.fullmatch(label):
            return None
        return {"resource_label": label}
    return None


def _endpoint(
    host: str,
    prefix: str,
    entry: _Prefix,
    region: str | None,
    partition: str,
    flags: tuple[bool, bool],
    extra: dict[str, str],
) -> Endpoint:
    signing = set(entry.signing_names)
    if prefix in _CUSTOMER_ENDPOINTS and "resource_label" not in extra:
        # The bare service name serves only the service's own API.
        signing -= _CUSTOMER_ENDPOINTS[prefix][1] - _model_signing_names(entry)
    return Endpoint(
        host=host,
        endpoint_prefix=prefix,
        region=region,
        partition=partition,
        fips=flags[0],
        dualstack=flags[1],
        services=tuple(sorted(entry.services)),
        signing_names=frozenset(signing),
        **extra,  # type: ignore[arg-type]
    )


def _model_signing_names(entry: _Prefix) -> set[str]:
    names = set()
    for service in entry.services:
        meta = models.metadata(service)
        names.add(meta.get("signingName") or meta.get("endpointPrefix") or service)
    return names


def _normalise(host: str) -> str:
    host = host.strip().lower()
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():  # "[::1]", "aws-name:443@evil.com"
        return ""
    return name.rstrip(".")


@lru_cache(maxsize=4096)
def classify_host(host: str) -> Endpoint | None:
    """What AWS endpoint ``host`` names, or None if it is not an AWS endpoint name."""
    name = _normalise(host)
    if not _HOST_RE.fullmatch(name) or ".." in name:
        return None
    catalogue = _catalogue()
    split = _split_suffix(name, catalogue)
    if split is None:
        return None
    suffix, labels = split
    return _from_labels(name, labels, suffix, catalogue) or _from_exact(
        name, labels, suffix, catalogue
    )


def _from_exact(
    name: str, labels: list[str], suffix: _Suffix, catalogue: _Catalogue
) -> Endpoint | None:
    """A host name endpoints.json spells out (global and legacy names), maybe with a bucket."""
    for index in range(len(labels)):
        known = catalogue.exact.get(".".join([*labels[index:], suffix.suffix]))
        if known is None:
            continue
        prefix, region, fips, dualstack = known
        entry = catalogue.prefixes[prefix]
        extra = _leading_fields(entry.leading, labels[:index], prefix)
        partition = suffix.partition_for(region)
        if extra is None or partition is None:
            return None
        return _endpoint(name, prefix, entry, region, partition, (fips, dualstack), extra)
    return None


def _from_labels(
    name: str, labels: list[str], suffix: _Suffix, catalogue: _Catalogue
) -> Endpoint | None:
    """A host name built from a service label, a region and a DNS suffix."""
    dualstack = suffix.dualstack
    region_index = _find_region(labels, suffix)
    region = labels[region_index] if region_index is not None else None
    if region_index is None or region_index == len(labels) - 1:
        service_labels = labels if region_index is None else labels[:-1]
        if service_labels and service_labels[-1] == "dualstack":
            service_labels, dualstack = service_labels[:-1], True
        if region is None and service_labels and service_labels[-1] == "global":
            service_labels = service_labels[:-1]
        legacy = _LEGACY_S3_RE.fullmatch(service_labels[-1]) if service_labels else None
        if region is None and legacy and suffix.partition_for(legacy.group(2)):
            # Legacy S3 names put the region in the service label: s3-us-west-2.
            region = legacy.group(2)
            service_labels = [*service_labels[:-1], "s3-fips" if legacy.group(1) else "s3"]
        matched = _match_service(service_labels, catalogue) if service_labels else None
        if matched is None:
            return None
        prefix, entry, fips, leading = matched
    else:
        # Region before the service label: OpenSearch domains and collections,
        # Neptune Analytics graphs ("search-x.us-east-1.es.amazonaws.com").
        prefix, fips = _service_key(labels[region_index + 1 :])
        leading = labels[:region_index]
        if prefix not in catalogue.prefixes:
            return None
        entry = catalogue.prefixes[prefix]
    extra = _leading_fields(entry.leading, leading, prefix)
    partition = suffix.partition_for(region)
    if extra is None or partition is None:
        return None
    return _endpoint(name, prefix, entry, region, partition, (fips, dualstack), extra)


def is_endpoint_for(host: str, signing_service: str) -> bool:
    """True only if ``host`` is a genuine AWS endpoint for ``signing_service`` (SigV4 name)."""
    endpoint = classify_host(host)
    return endpoint is not None and signing_service in endpoint.signing_names
