"""The awsgate addon chain, in order: ``mitmdump -s addons/gateway.py --set awsgate_config=FILE``.

Request path: scope (is this AWS traffic?), flow view (what mitmproxy may show of
it), identity (who?), operation (what?),
policy (may they?), request masking (the record's masked copy of the
request, which approval shows too), approval (held for a human?), signing
(re-sign with gateway credentials, route upstream), recording (commit the
request part before it leaves), and a last guard that refuses anything left
unsigned.
Response path: masking, then recording. The addons share nothing but the
typed context at ``flow.metadata["awsgate"]``.
"""

from __future__ import annotations

from addons.approval import Approval
from addons.flowview import FlowView
from addons.hooks import ForwardGuard
from addons.identity import Identity
from addons.logjson import JsonLogs
from addons.masking import Masking, RequestMasking
from addons.metrics import Metrics
from addons.operation import OperationResolver
from addons.policy import Policy
from addons.recording import Recording
from addons.scope import Scope
from addons.settings import Settings
from addons.signing import Signing

addons = [
    Settings(),
    JsonLogs(),  # first flow hook: log lines of later addons carry the call's ids
    Scope(),
    FlowView(),  # before identity and before mitmweb's view: credentials off the flow
    Identity(),
    OperationResolver(),
    Policy(),
    Metrics(),  # sees review decisions before approval holds the call
    RequestMasking(),  # before approval: approvers and the store see the masked copy
    Approval(),
    Signing(),
    Masking(),  # before recording: the record keeps its masked copies
    Recording(),
    ForwardGuard(),
]
