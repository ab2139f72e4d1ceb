"""What the gateway hands the store about one call: plain, JSON-safe dataclasses.

A call is recorded in two phases so that no action happens unrecorded: a
``CallRecord`` (the request and the decision) is written before the call is
forwarded, a ``CallOutcome`` (the response) when it completes. Bodies are the
only bytes; everything else is str, int, float, bool, None, lists and dicts.
The writer redacts credentials again and caps body sizes, so a caller's slip
does not end up in the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DecisionLabel = Literal["allow", "deny", "review", "refused-identity", "error"]
DECISIONS: tuple[str, ...] = ("allow", "deny", "review", "refused-identity", "error")

# A header as sent, in order, duplicates kept: ("Host", "s3.amazonaws.com").
HeaderPairs = list[tuple[str, str]] | list[list[str]]


@dataclass
class CallRecord:
    """The request side of one call, written before the gateway forwards or refuses it."""

    request_id: str  # unique per call (GateContext.request_id)
    time: float  # epoch seconds when the request arrived
    decision: DecisionLabel | str  # allow | deny | review | refused-identity | error
    method: str = ""
    url: str = ""  # as the agent sent it; credential query parameters are redacted
    http_version: str = "HTTP/1.1"
    source: str | None = None  # the agent's address, "ip:port"
    # who (None when the identity was refused)
    session_id: str | None = None  # minted credential or proxy-token session
    issuer: str | None = None
    subject: str | None = None
    groups: list[str] = field(default_factory=list)
    role: str | None = None
    # what
    service: str | None = None  # botocore service name, "lambda"
    operation: str | None = None  # API operation name, "Invoke"
    region: str | None = None
    resources: list[str] = field(default_factory=list)  # ARNs or names
    parameters: dict[str, Any] = field(default_factory=dict)  # masked input parameters
    # why
    rule: str | None = None  # the policy rule (or refusal reason code) that decided
    message: str | None = None  # the refusal message sent to the agent, if any
    approval_id: str | None = None
    # the request as received, masked, without credentials
    request_headers: HeaderPairs = field(default_factory=list)
    request_body: bytes | None = None  # None when not buffered (streamed)
    request_body_size: int | None = None  # size of a body not given, when known
    user_agent: str | None = None  # defaults to the User-Agent request header

    @property
    def action(self) -> str | None:
        if self.service and self.operation:
            return f"{self.service}:{self.operation}"
        return None


@dataclass
class CallOutcome:
    """The response side of one call, written when it completes or fails."""

    duration: float  # seconds from arrival to the end of the response
    status: int | None = None  # HTTP status the agent received
    upstream_status: int | None = None  # HTTP status from AWS; None when not forwarded
    upstream_request_id: str | None = None  # x-amzn-RequestId / x-amz-request-id
    decision: DecisionLabel | str | None = None  # final decision when it changed after begin
    approval_id: str | None = None  # when the call was held for approval after begin
    error: str | None = None  # why the call failed (no secrets)
    masked: list[str] = field(default_factory=list)  # paths of fields masked in the bodies
    response_headers: HeaderPairs = field(default_factory=list)
    response_body: bytes | None = None  # masked; None when streamed
    response_body_size: int | None = None  # size of a body not given, when known
    response_body_sha256: str | None = None  # of a streamed body, hashed as it passed
    # A streamed request body is only known once it has passed, after ``begin``.
    request_body_size: int | None = None
    request_body_sha256: str | None = None
