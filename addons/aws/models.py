"""Access to botocore's service models: the catalogue of every AWS operation.

Everything awsgate knows about a service (its protocol, signing name, endpoint
prefix, operations and their input shapes) comes from here, so that a new
botocore release teaches the gateway new services without code changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import botocore
import botocore.loaders
import botocore.model

SUMMARY_VERSION = 1


@cache
def loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


@cache
def service_names() -> tuple[str, ...]:
    """Every botocore service name (the AWS CLI's, e.g. ``elbv2``, ``lambda``)."""
    return tuple(sorted(loader().list_available_services("service-2")))


@cache
def service_model(service: str) -> botocore.model.ServiceModel:
    """The parsed service model; raises ``KeyError`` for an unknown service."""
    if service not in service_names():
        raise KeyError(service)
    data = loader().load_service_model(service, "service-2")
    return botocore.model.ServiceModel(data, service_name=service)


def metadata(service: str) -> dict[str, Any]:
    """The service's model metadata (protocol, signingName, endpointPrefix, ...)."""
    try:
        return _summary()[service]["metadata"]
    except KeyError:
        raise KeyError(service) from None


@cache
def operation_names(service: str) -> frozenset[str]:
    try:
        return frozenset(_summary()[service]["host_prefixes"])
    except KeyError:
        raise KeyError(service) from None


def host_prefixes(service: str) -> dict[str, str | None]:
    """Operation name -> its ``endpoint.hostPrefix`` (None when it has none)."""
    return _summary()[service]["host_prefixes"]


def cache_path(name: str) -> Path:
    """Where data derived from this botocore release's models is kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    release = f"botocore-{botocore.__version__}-v{SUMMARY_VERSION}"
    return Path(base) / "awsgate" / f"{name}-{release}.json"


def per_service_cached(name: str, derive: Callable[[str], Any]) -> dict[str, Any]:
    """``{service: derive(service)}`` for every service, cached on disk per botocore release.

    Decoding all 445 full models takes many seconds; what the gateway derives
    from them is small, so it is computed once per botocore release.
    """
    path = cache_path(name)
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and set(cached) == set(service_names()):
            return cached
    except (OSError, ValueError):
        pass
    derived = {service: derive(service) for service in service_names()}
    _write_atomically(path, json.dumps(derived, separators=(",", ":")))
    return derived


@cache
def _summary() -> dict[str, dict[str, Any]]:
    """Metadata and operation names of every service, without their shapes."""
    return per_service_cached("models", _summarise)


def _summarise(service: str) -> dict[str, Any]:
    model = service_model(service)
    host_prefixes = {
        name: (model.operation_model(name).endpoint or {}).get("hostPrefix")
        for name in model.operation_names
    }
    return {"metadata": dict(model.metadata), "host_prefixes": host_prefixes}


def _write_atomically(path: Path, text: str) -> None:
    """Best effort: a cache that cannot be written is rebuilt next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            handle.write(text)
        os.replace(handle.name, path)
    except OSError:
        pass


def protocol(service: str) -> str:
    """The wire protocol botocore uses for the service (first of ``protocols``)."""
    meta = metadata(service)
    protocols = meta.get("protocols") or [meta["protocol"]]
    return protocols[0]


@cache
def services_by_signing_name() -> dict[str, tuple[str, ...]]:
    """Signing name (the SigV4 credential scope's service) -> botocore service names.

    Several services share one signing name (``execute-api``, ``es``, ``s3``...);
    callers disambiguate by host or operation.
    """
    index: dict[str, list[str]] = {}
    for name in service_names():
        meta = metadata(name)
        signing = meta.get("signingName") or meta.get("endpointPrefix") or name
        index.setdefault(signing, []).append(name)
    return {key: tuple(value) for key, value in index.items()}
