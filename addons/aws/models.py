"""Access to botocore's service models: the catalogue of every AWS operation.

Everything awsgate knows about a service (its protocol, signing name, endpoint
prefix, operations and their input shapes) comes from here, so that a new
botocore release teaches the gateway new services without code changes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import botocore.loaders
import botocore.model


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
    return service_model(service).metadata


@cache
def operation_names(service: str) -> frozenset[str]:
    return frozenset(service_model(service).operation_names)


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
        meta = loader().load_service_model(name, "service-2")["metadata"]
        signing = meta.get("signingName") or meta.get("endpointPrefix") or name
        index.setdefault(signing, []).append(name)
    return {key: tuple(value) for key, value in index.items()}
