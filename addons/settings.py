"""The ``awsgate_config`` option: loads the gateway's YAML config for every addon.

It also points mitmproxy at the config's CA directory and sets the proxy
options the gateway depends on (lazy upstream connections: AWS names need not
resolve when an ``upstream`` stands in for AWS).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Set

from mitmproxy import ctx, exceptions

from addons import config
from addons.config import GatewayConfig
from addons.store import db

OPTION = "awsgate_config"
READY = "awsgate: gateway ready"

logger = logging.getLogger("awsgate")


def reloaded(updated: Set[str]) -> GatewayConfig | None:
    """The freshly loaded config when ``awsgate_config`` changed, else None.

    Raises ``OptionsError`` so that a bad config stops the gateway from starting.
    """
    if OPTION not in updated:
        return None
    path = getattr(ctx.options, OPTION)
    if not path:
        raise exceptions.OptionsError(f"awsgate: set {OPTION}=FILE (the gateway's YAML config)")
    try:
        return config.load(path)
    except config.ConfigError as exc:
        raise exceptions.OptionsError(f"awsgate: {exc}") from exc


class Settings:
    def load(self, loader) -> None:
        loader.add_option(
            OPTION,
            str,
            "",
            "Path to the awsgate YAML config (certs, upstream, store, policies, identity).",
        )

    def configure(self, updated: Set[str]) -> None:
        gateway_config = reloaded(updated)
        if gateway_config is None:
            return
        try:
            # Once, first in the chain: every later addon finds the store at its schema.
            db.migrate(gateway_config.store)
        except db.StoreUnavailable as exc:
            raise exceptions.OptionsError(f"awsgate: store: {exc}") from exc
        gateway_config.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        wanted = {"confdir": str(gateway_config.certs), "connection_strategy": "lazy"}
        changes = {
            key: value for key, value in wanted.items() if getattr(ctx.options, key) != value
        }
        if changes:
            ctx.options.update(**changes)

    def running(self) -> None:
        # botocore's model summaries, the endpoint catalogue and the operation index
        # live as long as the process: out of the garbage collector's way, every
        # collection no longer walks them (about 0.3 ms of CPU per call measured).
        gc.collect()
        gc.freeze()
        # Under `mitmdump -s` the proxy listens before the script has loaded: callers
        # (and the tests) wait for this line, not for the port.
        logger.warning(READY)
