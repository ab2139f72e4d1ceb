"""AWS-shaped error responses, so a refused call reads like any AWS error.

The SDKs parse errors by the service's protocol; an error in the wrong shape
turns into an unhelpful generic failure, so we render the one each expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from xml.sax.saxutils import escape

import cbor2

from addons.aws import models


@dataclass(frozen=True)
class ErrorResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def access_denied_code(protocol: str) -> str:
    """``AccessDenied`` for XML protocols, ``AccessDeniedException`` for JSON and CBOR."""
    return (
        "AccessDeniedException"
        if protocol in ("json", "rest-json", "smithy-rpc-v2-cbor")
        else "AccessDenied"
    )


def protocol_for(service: str | None) -> str:
    """The service's protocol, or rest-xml (S3's) when the service is unknown."""
    if service:
        try:
            return models.protocol(service)
        except KeyError:
            pass
    return "rest-xml"


def render(protocol: str, status: int, code: str, message: str, request_id: str) -> ErrorResponse:
    """An error body and headers in the shape botocore's parser for ``protocol`` reads."""
    headers = {"x-amzn-RequestId": request_id, "x-amz-request-id": request_id}
    if protocol in ("json", "rest-json"):
        headers["Content-Type"] = (
            "application/x-amz-json-1.1" if protocol == "json" else "application/json"
        )
        headers["x-amzn-ErrorType"] = code
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
    elif protocol == "smithy-rpc-v2-cbor":
        headers["Content-Type"] = "application/cbor"
        headers["smithy-protocol"] = "rpc-v2-cbor"
        body = cbor2.dumps({"__type": code, "message": message})
    else:
        headers["Content-Type"] = "text/xml"
        body = _xml(protocol, code, message, request_id).encode()
    return ErrorResponse(status, headers, body)


def _xml(protocol: str, code: str, message: str, request_id: str) -> str:
    code, message, request_id = escape(code), escape(message), escape(request_id)
    if protocol == "ec2":
        return (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    if protocol == "query":
        return (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    )
