"""The one typed object the addons share, kept at ``flow.metadata["awsgate"]``.

Addons never reach into each other; each reads what earlier addons wrote here
and adds its own part. Everything in it must be safe to record, no secrets,
but the agent's credentials identity verifies (``agent_auth``): the context
gives way to a plain summary when the call is over (see ``addons.flowview``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

METADATA_KEY = "awsgate"

Effect = Literal["allow", "deny", "review"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an OIDC identity, possibly through a minted session."""

    issuer: str
    subject: str
    groups: frozenset[str] = frozenset()
    role: str | None = None
    session_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The proxy-token session (``tok-...``) of the web identity token these session
    # credentials were minted from: revoking it revokes them.
    parent_session_id: str | None = None

    @property
    def name(self) -> str:
        return f"sub:{self.subject}"


@dataclass
class Operation:
    """What the request does, resolved from botocore's service models."""

    service: str  # botocore service name, e.g. "lambda", "s3", "elbv2"
    name: str  # API operation name as CloudTrail's eventName, or "unknown"
    region: str
    signing_name: str
    protocol: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    # The body carries parameters the gateway could not read (streamed, too large,
    # malformed): ``params`` and ``resources`` may be missing some.
    unread: bool = False

    UNKNOWN = "unknown"

    @property
    def action(self) -> str:
        return f"{self.service}:{self.name}"

    @property
    def known(self) -> bool:
        return self.name != self.UNKNOWN


@dataclass(frozen=True)
class Decision:
    """The policy outcome and the rule that made it."""

    effect: Effect
    rule: str
    message: str = ""
    approvers: tuple[str, ...] = ()


@dataclass
class Refusal:
    """Why the gateway answered the request itself instead of forwarding it."""

    status: int
    code: str
    message: str  # starts with "awsgate:"; never contains a secret
    kind: str  # decision label for the record: deny, refused-identity, error, ...


@dataclass(frozen=True)
class AgentAuth:
    """The agent's request head as sent, credentials included, kept off mitmproxy's flow."""

    header_fields: tuple[tuple[bytes, bytes], ...]
    path: str


@dataclass
class GateContext:
    """Per-flow state, written by the addons in chain order."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    streamed: bool = False
    credential_scope: tuple[str, str] | None = (
        None  # (signing service, region) the agent signed for
    )
    agent_auth: AgentAuth | None = None
    principal: Principal | None = None
    operation: Operation | None = None
    decision: Decision | None = None
    approval_id: str | None = None
    refusal: Refusal | None = None
    signed: bool = False
    recorded: bool = False  # the request part is in the store
    masked: list[str] = field(default_factory=list)  # "part path by rule (scope)", no values
    # The policy's masks (addons.rules.Mask) that apply to this call, set by the policy addon.
    masks: list[Any] = field(default_factory=list)
    # What the record keeps instead of the wire, set by the masking addon: the
    # request body and parameters and the response body with every masked
    # value replaced (None: no body to keep; streamed, unparsable or absent).
    record_request_body: bytes | None = None
    record_params: dict[str, Any] = field(default_factory=dict)
    record_response_body: bytes | None = None
    request_shown_as_recorded: bool = False  # the flow's request now shows the record's copy
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def forwarded(self) -> bool:
        """Signed and sent on: its response comes from AWS, not from the gateway."""
        return self.signed and self.refusal is None

    @property
    def outcome(self) -> str:
        """allow, deny, review, refused-identity or error: the call's outcome as the
        record, the metrics and the logs name it."""
        if self.refusal is not None:
            return self.refusal.kind
        if self.decision is not None:
            return self.decision.effect
        return "allow" if self.principal is not None else "error"

    @property
    def store_failed(self) -> bool:
        """Refused because the store could not be read or written (a 503)."""
        refusal = self.refusal
        return refusal is not None and refusal.kind == "error" and refusal.status == 503


def get(flow: Any) -> GateContext:
    """The flow's context, created on first use."""
    gate = find(flow)
    if gate is None:
        gate = flow.metadata[METADATA_KEY] = GateContext()
    return gate


def find(flow: Any) -> GateContext | None:
    """The flow's context if the gateway has the flow in hand, else None (a finished
    call's summary, or a copy of one replayed from mitmweb, is not a context)."""
    gate = flow.metadata.get(METADATA_KEY)
    return gate if isinstance(gate, GateContext) else None
