"""Reloading a policy when its files change, keeping the last good one on errors.

A broken edit must neither open the gateway nor take it down: the watcher
keeps serving the previous policy and reports the problems once, until the
files change again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from addons.rules.load import load_policy, policy_files
from addons.rules.model import Policy, PolicyError, Problem

ReloadStatus = Literal["unchanged", "reloaded", "failed"]

Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class ReloadResult:
    status: ReloadStatus
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class PolicyWatcher:
    """Holds the current policy for ``path`` (a file or a directory of them).

    The first load happens in the constructor and raises ``PolicyError``: a
    gateway must not start on a policy it cannot read.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fingerprint = _fingerprint(self.path)
        self._policy = load_policy(self.path)
        self._problems: tuple[Problem, ...] = ()

    def current(self) -> Policy:
        return self._policy

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Why the files on disk are not in force (empty when they are)."""
        return self._problems

    def reload_if_changed(self) -> ReloadResult:
        """Reload when a file's size, mtime or inode changed, or files came or went."""
        fingerprint = _fingerprint(self.path)
        if fingerprint == self._fingerprint:
            return ReloadResult("unchanged")
        self._fingerprint = fingerprint
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self._problems = tuple(exc.problems)
            return ReloadResult("failed", self._problems)
        self._policy = policy
        self._problems = ()
        return ReloadResult("reloaded")


def _fingerprint(path: Path) -> Fingerprint:
    entries = []
    files = policy_files(path) if path.exists() else []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue  # removed between listing and stat: the next poll sees it gone
        entries.append((str(file), stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(entries)
