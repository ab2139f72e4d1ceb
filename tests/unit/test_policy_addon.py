"""The policy addon inside mitmproxy's addon manager: start, decide, reload, unload."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from mitmproxy import exceptions, hooks
from mitmproxy.test import taddons, tflow

from addons import policy as policy_addon
from addons import settings
from addons.context import METADATA_KEY, GateContext, Operation, Principal
from addons.policy import Policy

ALLOW_LISTS = """\
rules:
  - name: agents-list
    effect: allow
    principals: ["group:agents"]
    actions: ["sqs:List*"]
"""

AGENT = Principal("https://issuer.example", "agent-1", frozenset({"agents"}))


def write_config(tmp_path: Path, policies: Path | None) -> Path:
    config = {"certs": str(tmp_path / "certs"), "store": "sqlite:///:memory:"}
    if policies is not None:
        config["policies"] = str(policies)
    path = tmp_path / "awsgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, test: Callable[[taddons.context, Policy], Awaitable[None]]) -> None:
    """Run ``test`` on a running loop with the policy addon under a test master."""

    async def main() -> None:
        addon = Policy()
        with taddons.context() as tctx:
            # The option alone: the settings addon also sets proxy options that
            # this bare test master does not have.
            tctx.options.add_option(settings.OPTION, str, str(config), "the awsgate config")
            tctx.master.addons.add(addon)
            await test(tctx, addon)

    asyncio.run(main())


def configure(tctx: taddons.context, addon: Policy) -> None:
    """Configure as mitmproxy does when it loads the gateway script (errors propagate)."""
    tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook({settings.OPTION}))


def flow_for(operation: Operation) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.metadata[METADATA_KEY] = GateContext(principal=AGENT, operation=operation)
    return flow


def list_queues() -> Operation:
    return Operation("sqs", "ListQueues", "us-east-1", "sqs", protocol="json")


def test_start_refuses_an_invalid_policy_with_file_and_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ALLOW_LISTS.replace("sqs:List*", "sqs:Lsit*"))
    config = write_config(tmp_path, policy_file)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        with pytest.raises(exceptions.OptionsError) as refused:
            configure(tctx, addon)
        assert "the gateway will not start" in str(refused.value)
        assert f"{policy_file}:5:" in str(refused.value)
        assert addon.watcher is None

    run(config, test)


def test_start_needs_a_policy(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        with pytest.raises(exceptions.OptionsError, match="needs 'policies'"):
            configure(tctx, addon)

    run(config, test)


def test_decisions(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ALLOW_LISTS)
    config = write_config(tmp_path, policy_file)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        configure(tctx, addon)
        allowed = flow_for(list_queues())
        await addon.request(allowed)
        assert allowed.response is None
        assert allowed.metadata[METADATA_KEY].decision.rule == "agents-list"

        denied = flow_for(Operation("sqs", "DeleteQueue", "us-east-1", "sqs", protocol="json"))
        await addon.request(denied)
        assert denied.response is not None and denied.response.status_code == 403
        body = json.loads(denied.response.content)
        assert body["__type"] == "AccessDeniedException"
        assert body["message"].startswith("awsgate: denied by rule 'default-deny'")
        assert denied.metadata[METADATA_KEY].refusal.kind == "deny"

    run(config, test)


def test_reload_keeps_the_last_good_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ALLOW_LISTS)
    config = write_config(tmp_path, policy_file)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        configure(tctx, addon)
        assert addon.watcher is not None
        first = addon.watcher.current()
        caplog.set_level(logging.INFO, logger="awsgate")

        addon.reload()
        assert addon.watcher.current() is first and not caplog.records

        policy_file.write_text(ALLOW_LISTS.replace("sqs:List*", "sqs:Lsit*"))
        addon.reload()
        assert addon.watcher.current() is first
        [report] = caplog.records
        assert report.levelno == logging.ERROR
        assert "POLICY NOT RELOADED" in report.getMessage()
        assert f"{policy_file}:5:" in report.getMessage()

        caplog.clear()
        addon.reload()  # unchanged since the broken edit: reported once
        assert not caplog.records

        policy_file.write_text(ALLOW_LISTS.replace("group:agents", "group:others"))
        addon.reload()
        assert addon.watcher.current() is not first
        assert "policy reloaded" in caplog.records[-1].getMessage()

    run(config, test)


def test_running_polls_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task started by ``running`` reloads on its own, off the event loop."""
    monkeypatch.setattr(policy_addon, "RELOAD_INTERVAL", 0.01)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ALLOW_LISTS)
    config = write_config(tmp_path, policy_file)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        configure(tctx, addon)
        assert addon.watcher is not None
        first = addon.watcher.current()
        reload, threads = addon.reload, []

        def reload_and_note_thread() -> None:
            threads.append(threading.get_ident())
            reload()

        addon.reload = reload_and_note_thread  # type: ignore[method-assign]
        await tctx.master.addons.trigger_event(hooks.RunningHook())
        policy_file.write_text(ALLOW_LISTS.replace("group:agents", "group:others"))
        for _ in range(500):  # bounded: 5 s at the patched interval
            if addon.watcher.current() is not first:
                break
            await asyncio.sleep(0.01)
        assert addon.watcher.current() is not first
        assert threads and threading.get_ident() not in threads

    run(config, test)


def test_unloading_the_script_stops_the_reloader(tmp_path: Path) -> None:
    """mitmproxy unloads a changed script with a synchronous ``done``."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ALLOW_LISTS)
    config = write_config(tmp_path, policy_file)

    async def test(tctx: taddons.context, addon: Policy) -> None:
        configure(tctx, addon)
        await tctx.master.addons.trigger_event(hooks.RunningHook())
        reloader = addon._reloader
        assert reloader is not None
        tctx.master.addons.remove(addon)
        await asyncio.sleep(0)
        assert reloader.cancelled()

    run(config, test)
