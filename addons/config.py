"""The gateway's YAML config file: parsing and validation, no mitmproxy.

Fixed keys: ``certs``, ``upstream``, ``store``, ``policies``, ``identity``;
the rest are awsgate's own. Relative paths are relative to the config file.
Every problem is reported as a ``ConfigError`` naming the key, so the gateway
refuses to start instead of running on a half-understood config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG_NAME = "awsgate.yaml"
CONFIG_ENV = "AWSGATE_CONFIG"


class ConfigError(ValueError):
    """The config file is missing, unparsable or has a bad value."""


@dataclass(frozen=True)
class ClaimRule:
    """Assigns ``groups`` when claim ``claim`` matches the glob ``match``."""

    claim: str
    match: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class IssuerConfig:
    url: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    groups_claim: str | None = None
    claim_rules: tuple[ClaimRule, ...] = ()


@dataclass(frozen=True)
class RoleConfig:
    """How the gateway obtains upstream AWS credentials for one role name."""

    name: str
    profile: str | None = None
    assume_role_arn: str | None = None


@dataclass(frozen=True)
class IdentityConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    session_key_file: Path | None = None
    max_session: int = 12 * 3600
    clock_skew: int = 300


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    certs: Path
    upstream: str | None
    store: str
    policies: Path | None
    identity: IdentityConfig
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    block_non_aws: bool = False
    stream_threshold: int = 1024 * 1024

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def default_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)


def load(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a config file."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys")
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> GatewayConfig:
    base = path.parent
    known = {
        "certs",
        "upstream",
        "store",
        "policies",
        "identity",
        "roles",
        "non_aws",
        "stream_threshold",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)}")
    upstream = _optional_str(raw, "upstream", path)
    if upstream is not None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{path}: upstream must be an http(s) URL, got {upstream!r}")
    non_aws = raw.get("non_aws", "pass")
    if non_aws not in ("pass", "block"):
        raise ConfigError(f"{path}: non_aws must be 'pass' or 'block', got {non_aws!r}")
    policies = _optional_str(raw, "policies", path)
    return GatewayConfig(
        path=path,
        certs=_resolve(base, _optional_str(raw, "certs", path) or "certs"),
        upstream=upstream.rstrip("/") if upstream else None,
        store=_store_url(_optional_str(raw, "store", path), base),
        policies=_resolve(base, policies) if policies else None,
        identity=_identity(raw.get("identity") or {}, base, path),
        roles=_roles(raw.get("roles") or {}, path),
        block_non_aws=non_aws == "block",
        stream_threshold=_positive_int(raw, "stream_threshold", 1024 * 1024, path),
    )


def _resolve(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()


def _store_url(value: str | None, base: Path) -> str:
    if not value:
        return f"sqlite:///{base / 'awsgate.sqlite'}"
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        relative = value.removeprefix("sqlite:///")
        if relative and relative != ":memory:":
            return f"sqlite:///{_resolve(base, relative)}"
    return value


def _optional_str(raw: dict[str, Any], key: str, path: Path) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: {key} must be a string")
    return value


def _positive_int(raw: dict[str, Any], key: str, default: int, path: Path) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{path}: {key} must be a positive integer")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} must be a string or a list of strings")
    return tuple(value)


def _identity(raw: Any, base: Path, path: Path) -> IdentityConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: identity must be a mapping")
    issuers = []
    for index, item in enumerate(raw.get("issuers") or []):
        where = f"{path}: identity.issuers[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError(f"{where} needs a url")
        if not _secure_issuer_url(item["url"]):
            raise ConfigError(f"{where}.url must be https (plain http only on loopback)")
        if "none" in [alg.lower() for alg in _str_list(item.get("algorithms", []), where)]:
            raise ConfigError(f"{where}.algorithms: 'none' is never accepted")
        rules = tuple(
            ClaimRule(
                claim=str(rule.get("claim", "sub")),
                match=str(rule["match"]),
                groups=_str_list(rule.get("groups", []), f"{where}.claim_rules"),
            )
            for rule in item.get("claim_rules") or []
            if isinstance(rule, dict) and "match" in rule
        )
        if len(rules) != len(item.get("claim_rules") or []):
            raise ConfigError(f"{where}.claim_rules: each rule needs claim, match and groups")
        issuers.append(
            IssuerConfig(
                url=item["url"].rstrip("/"),
                audience=_str_list(item.get("audience", []), f"{where}.audience"),
                algorithms=_str_list(
                    item.get("algorithms", ["RS256", "ES256"]), f"{where}.algorithms"
                ),
                groups_claim=item.get("groups_claim"),
                claim_rules=rules,
            )
        )
        if not issuers[-1].audience:
            raise ConfigError(f"{where} needs an audience")
    key_file = raw.get("session_key_file") or "session.key"
    return IdentityConfig(
        issuers=tuple(issuers),
        session_key_file=_resolve(base, key_file),
        max_session=_positive_int(raw, "max_session", 12 * 3600, path),
        clock_skew=_positive_int(raw, "clock_skew", 300, path),
    )


def _secure_issuer_url(url: str) -> bool:
    """Keys fetched over plain http could be swapped in transit; loopback is the exception."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _roles(raw: Any, path: Path) -> dict[str, RoleConfig]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: roles must be a mapping of role name to settings")
    roles = {}
    for name, item in raw.items():
        item = item or {}
        if not isinstance(item, dict) or set(item) - {"profile", "assume_role_arn"}:
            raise ConfigError(f"{path}: roles.{name} takes only profile or assume_role_arn")
        roles[str(name)] = RoleConfig(str(name), item.get("profile"), item.get("assume_role_arn"))
    return roles
