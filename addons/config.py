"""The gateway's YAML config file: parsing and validation, no mitmproxy.

Fixed keys: ``certs``, ``upstream``, ``store``, ``policies``, ``identity``;
the rest are awsgate's own. Relative paths are relative to the config file.
Every problem is reported as a ``ConfigError`` naming the key, so the gateway
refuses to start instead of running on a half-understood config.
"""

from __future__ import annotations

import os
import re
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
class WebhookConfig:
    """Where approval notifications are posted: Slack incoming-webhook or generic JSON."""

    url: str
    format: str = "json"  # "slack" or "json"


@dataclass(frozen=True)
class WebLoginConfig:
    """The approval page's OIDC client: approvers log in with authorization code + PKCE."""

    issuer: str  # one of identity.issuers, whose groups mapping applies
    client_id: str
    client_secret_file: Path | None = None
    scopes: tuple[str, ...] = ("openid",)


@dataclass(frozen=True)
class ApprovalsConfig:
    """How calls under review are held and decided (the ``approvals:`` section)."""

    # Seconds a call is held open for a decision: below the SDKs' 60 s read
    # timeout, which starts before the hold does.
    wait: float = 55.0
    expire: int = 3600  # seconds a pending request may still be decided
    grant_window: int = 900  # seconds an approved request stays usable by its retry
    max_window: int = 24 * 3600  # longest time-window grant an approver may give
    public_url: str | None = None  # the approval page, for links in messages
    webhooks: tuple[WebhookConfig, ...] = ()
    oidc: WebLoginConfig | None = None


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
    mask_patterns: tuple[str, ...] = ()  # masking.patterns: regexes scrubbed from the record
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    metrics_listen: tuple[str, int] | None = None  # metrics.listen: Prometheus endpoint
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    replica_id: str | None = None  # names this replica in logs, metrics and its record chain


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
        "masking",
        "approvals",
        "metrics",
        "log_format",
        "replica_id",
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
    identity = _identity(raw.get("identity") or {}, base, path)
    return GatewayConfig(
        path=path,
        certs=_resolve(base, _optional_str(raw, "certs", path) or "certs"),
        upstream=upstream.rstrip("/") if upstream else None,
        store=_store_url(_optional_str(raw, "store", path), base),
        policies=_resolve(base, policies) if policies else None,
        identity=identity,
        roles=_roles(raw.get("roles") or {}, path),
        block_non_aws=non_aws == "block",
        stream_threshold=_positive_int(raw, "stream_threshold", 1024 * 1024, path),
        mask_patterns=_mask_patterns(raw.get("masking") or {}, path),
        approvals=_approvals(raw.get("approvals") or {}, identity, base, path),
        metrics_listen=_metrics_listen(raw.get("metrics"), path),
        log_format=_log_format(raw.get("log_format", "text"), path),
        replica_id=_replica_id(raw.get("replica_id"), path),
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


def _approvals(raw: Any, identity: IdentityConfig, base: Path, path: Path) -> ApprovalsConfig:
    known = {"wait", "expire", "grant_window", "max_window", "public_url", "webhooks", "oidc"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ConfigError(f"{path}: approvals takes only {', '.join(sorted(known))}")
    wait = raw.get("wait", ApprovalsConfig.wait)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 < wait <= 3600:
        raise ConfigError(f"{path}: approvals.wait must be a number of seconds (0-3600]")
    public_url = _optional_str(raw, "public_url", path)
    if public_url is not None and not _http_url(public_url):
        raise ConfigError(f"{path}: approvals.public_url must be an http(s) URL")
    webhooks = []
    for index, item in enumerate(raw.get("webhooks") or []):
        where = f"{path}: approvals.webhooks[{index}]"
        if not isinstance(item, dict) or not _http_url(item.get("url")):
            raise ConfigError(f"{where} needs an http(s) url")
        if item.get("format", "json") not in ("slack", "json"):
            raise ConfigError(f"{where}.format must be 'slack' or 'json'")
        webhooks.append(WebhookConfig(item["url"], item.get("format", "json")))
    return ApprovalsConfig(
        wait=float(wait),
        expire=_positive_int(raw, "expire", ApprovalsConfig.expire, path),
        grant_window=_positive_int(raw, "grant_window", ApprovalsConfig.grant_window, path),
        max_window=_positive_int(raw, "max_window", ApprovalsConfig.max_window, path),
        public_url=public_url.rstrip("/") if public_url else None,
        webhooks=tuple(webhooks),
        oidc=_web_login(raw.get("oidc"), identity, base, path),
    )


def _web_login(raw: Any, identity: IdentityConfig, base: Path, path: Path) -> WebLoginConfig | None:
    if raw is None:
        return None
    where = f"{path}: approvals.oidc"
    if not isinstance(raw, dict) or not isinstance(raw.get("client_id"), str):
        raise ConfigError(f"{where} needs a client_id")
    issuers = [issuer.url for issuer in identity.issuers]
    issuer = raw.get("issuer") or (issuers[0] if len(issuers) == 1 else None)
    if not isinstance(issuer, str) or issuer.rstrip("/") not in issuers:
        raise ConfigError(f"{where}.issuer must be one of identity.issuers")
    secret_file = _optional_str(raw, "client_secret_file", path)
    return WebLoginConfig(
        issuer=issuer.rstrip("/"),
        client_id=raw["client_id"],
        client_secret_file=_resolve(base, secret_file) if secret_file else None,
        scopes=_str_list(raw.get("scopes", ["openid"]), f"{where}.scopes"),
    )


def _http_url(value: Any) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)


def _mask_patterns(raw: Any, path: Path) -> tuple[str, ...]:
    """``masking: {patterns: [regex, ...]}``: extra secret shapes kept out of the record."""
    if not isinstance(raw, dict) or set(raw) - {"patterns"}:
        raise ConfigError(f"{path}: masking takes only patterns")
    patterns = _str_list(raw.get("patterns") or [], f"{path}: masking.patterns")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{path}: masking.patterns: {pattern!r}: {exc}") from exc
    return patterns


def _metrics_listen(raw: Any, path: Path) -> tuple[str, int] | None:
    """``metrics: {listen: HOST:PORT}``: where Prometheus scrapes; absent means no endpoint."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"listen"} or not isinstance(raw["listen"], str):
        raise ConfigError(f"{path}: metrics takes only listen: HOST:PORT")
    host, sep, port = raw["listen"].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{path}: metrics.listen must be HOST:PORT, got {raw['listen']!r}")
    return host, int(port)


def _log_format(raw: Any, path: Path) -> str:
    if raw not in ("text", "json"):
        raise ConfigError(f"{path}: log_format must be 'text' or 'json', got {raw!r}")
    return raw


def _replica_id(raw: Any, path: Path) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", raw):
        raise ConfigError(f"{path}: replica_id must be 1-64 letters, digits, '.', '_' or '-'")
    return raw
