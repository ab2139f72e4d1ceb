"""Policy: allow, deny or hold each call by the rules in the policy files.

Every decision names the rule that made it; nothing matching means deny. The
files are polled for changes: a good edit takes effect within a second, a
broken one keeps the last good policy in force and is reported loudly. A bad
policy at start stops the gateway with the file, line and problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set

from mitmproxy import exceptions, http

from addons import rules, settings
from addons.context import GateContext
from addons.hooks import RequestStage, deny

logger = logging.getLogger("awsgate")

RELOAD_INTERVAL = 1.0


def describe_problems(problems: tuple[rules.Problem, ...] | list[rules.Problem]) -> str:
    return "\n".join(str(problem) for problem in problems)


class Policy(RequestStage):
    def __init__(self) -> None:
        self.watcher: rules.PolicyWatcher | None = None
        self._reloader: asyncio.Task[None] | None = None

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        if gateway_config.policies is None:
            raise exceptions.OptionsError(
                "awsgate: the config needs 'policies' (a file or directory)"
            )
        try:
            self.watcher = rules.PolicyWatcher(gateway_config.policies)
        except rules.PolicyError as exc:
            problems = describe_problems(exc.problems)
            raise exceptions.OptionsError(
                f"awsgate: invalid policy; the gateway will not start:\n{problems}"
            ) from exc

    def running(self) -> None:
        if self._reloader is None:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())

    def done(self) -> None:
        # Synchronous: mitmproxy calls ``done`` from sync code when it unloads a
        # script, and an async hook there would abort the unload.
        if self._reloader is not None:
            self._reloader.cancel()
            self._reloader = None

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            # Checking globs against botocore's catalogue can take a large
            # fraction of a second: never on the event loop, which serves every agent.
            await asyncio.to_thread(self.reload)

    def reload(self) -> None:
        """Pick up changed files; a broken edit keeps the last good policy, loudly."""
        watcher = self.watcher
        if watcher is None:
            return
        try:
            result = watcher.reload_if_changed()
        except Exception as exc:  # a reload must never stop the reloader
            logger.error("awsgate: policy reload failed (%s); the last good policy stays", exc)
            return
        if result.status == "reloaded":
            logger.warning("awsgate: policy reloaded from %s", watcher.path)
        elif result.status == "failed":
            logger.error(
                "awsgate: POLICY NOT RELOADED, the last good policy stays in force:\n%s",
                describe_problems(result.problems),
            )

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        assert self.watcher is not None and gate.principal is not None
        assert gate.operation is not None
        policy = self.watcher.current()
        decision = rules.evaluate(policy, gate.principal, gate.operation)
        gate.decision = decision
        gate.masks = rules.masks_for(policy, gate.principal, gate.operation)
        if decision.effect == "deny":
            deny(flow, decision.message)
