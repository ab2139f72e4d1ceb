"""Policy files: load and validate them, check them, evaluate requests against them.

Plain Python (no mitmproxy), shared by the policy addon and the ``awsgate
policy`` commands. Semantics are documented in ``addons.rules.evaluate``.
"""

from addons.rules.check import check_policy
from addons.rules.evaluate import (
    CREDENTIAL_MINTING_RULE,
    DEFAULT_DENY,
    evaluate,
    masks_for,
    matching_rules,
)
from addons.rules.load import load_policy
from addons.rules.model import Mask, Policy, PolicyError, Problem, Rule
from addons.rules.watch import PolicyWatcher, ReloadResult

__all__ = [
    "CREDENTIAL_MINTING_RULE",
    "DEFAULT_DENY",
    "Mask",
    "Policy",
    "PolicyError",
    "PolicyWatcher",
    "Problem",
    "ReloadResult",
    "Rule",
    "check_policy",
    "evaluate",
    "load_policy",
    "masks_for",
    "matching_rules",
]
