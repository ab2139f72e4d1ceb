"""The config file: defaults, and a clear error naming the key for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons import config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "awsgate.yaml"
    path.write_text(text)
    return path


def test_defaults_are_relative_to_the_config_file(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, "policies: policies/\n"))
    assert loaded.certs == tmp_path / "certs"
    assert loaded.store == f"sqlite:///{tmp_path / 'awsgate.sqlite'}"
    assert loaded.policies == tmp_path / "policies"
    assert loaded.upstream is None and not loaded.block_non_aws
    assert loaded.identity.session_key_file == tmp_path / "session.key"
    assert loaded.identity.max_session == 12 * 3600


def test_relative_sqlite_store_is_resolved_next_to_the_config(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, "store: sqlite:///data/records.sqlite\n"))
    assert loaded.store == f"sqlite:///{tmp_path / 'data' / 'records.sqlite'}"


def test_issuers_and_roles_are_parsed(tmp_path: Path) -> None:
    loaded = config.load(
        write(
            tmp_path,
            """
upstream: http://127.0.0.1:5000/
identity:
  issuers:
    - url: https://token.actions.githubusercontent.com/
      audience: sts.amazonaws.com
      claim_rules:
        - {claim: sub, match: "repo:acme/*", groups: [ci]}
roles:
  deployer: {assume_role_arn: "arn:aws:iam::123456789012:role/deploy"}
  reader: {}
""",
        )
    )
    assert loaded.upstream == "http://127.0.0.1:5000"
    [issuer] = loaded.identity.issuers
    assert issuer.url == "https://token.actions.githubusercontent.com"
    assert issuer.audience == ("sts.amazonaws.com",)
    assert issuer.algorithms == ("RS256", "ES256")
    assert issuer.claim_rules[0].groups == ("ci",)
    assert loaded.roles["deployer"].assume_role_arn.endswith(":role/deploy")
    assert loaded.roles["reader"].profile is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("upstream: [1\n", "not valid YAML"),
        ("- a list\n", "must be a mapping"),
        ("polices: x\n", "unknown key(s): polices"),
        ("upstream: ftp://example\n", "upstream must be an http(s) URL"),
        ("upstream: 5\n", "upstream must be a string"),
        ("non_aws: drop\n", "non_aws must be 'pass' or 'block'"),
        ("stream_threshold: -1\n", "stream_threshold must be a positive integer"),
        ("identity: [x]\n", "identity must be a mapping"),
        ("identity: {issuers: [{audience: a}]}\n", "needs a url"),
        ("identity: {issuers: [{url: 'http://idp.example.com', audience: a}]}\n", "must be https"),
        ("identity: {issuers: [{url: 'https://idp.example.com'}]}\n", "needs an audience"),
        (
            "identity: {issuers: [{url: 'https://i.example', audience: a, algorithms: [none]}]}\n",
            "'none' is never accepted",
        ),
        (
            "identity: {issuers: [{url: 'https://i.example', audience: a, claim_rules: [{}]}]}\n",
            "each rule needs claim, match and groups",
        ),
        ("identity: {max_session: 0}\n", "max_session must be a positive integer"),
        ("roles: [deployer]\n", "roles must be a mapping"),
        ("roles: {deployer: {arn: x}}\n", "roles.deployer takes only profile or assume_role_arn"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        config.load(write(tmp_path, text))
    assert message in str(refused.value)
    assert str(tmp_path / "awsgate.yaml") in str(refused.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "nowhere.yaml")


def test_loopback_issuers_may_use_plain_http(tmp_path: Path) -> None:
    text = "identity: {issuers: [{url: 'http://127.0.0.1:9000', audience: a}]}\n"
    assert config.load(write(tmp_path, text)).identity.issuers[0].url == "http://127.0.0.1:9000"
