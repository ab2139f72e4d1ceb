"""Token validation (addons.auth.oidc) and claims -> groups (addons.auth.groups).

Keys are discovered and fetched over real HTTP from the dev IdP on loopback;
the key cache's clock is a fake one so expiry and rate limits need no sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from addons import config
from addons.auth.devidp import DevIdp, DevIdpServer
from addons.auth.groups import claim_value, groups_for
from addons.auth.oidc import (
    Fetched,
    IssuerKeys,
    TokenError,
    TokenValidator,
    _max_age,
    _parse_jwks,
    fetch_url,
)
from addons.config import ClaimRule, IssuerConfig

NOW = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingFetch:
    """The real HTTP fetch, counting the URLs it was asked for."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str) -> Fetched:
        self.urls.append(url)
        return fetch_url(url)


@pytest.fixture
def idp(tmp_path: Path) -> DevIdp:
    return DevIdp(tmp_path / "keys")


@pytest.fixture
def server(idp: DevIdp) -> Iterator[DevIdpServer]:
    with idp.serve("127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def issuer(server: DevIdpServer) -> IssuerConfig:
    return IssuerConfig(url=server.url, audience=("awsgate",), groups_claim="groups")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fetch() -> CountingFetch:
    return CountingFetch()


@pytest.fixture
def validator(issuer: IssuerConfig, fetch: CountingFetch, clock: FakeClock) -> TokenValidator:
    return TokenValidator([issuer], clock_skew=60, fetch=fetch, clock=clock)


# -- crafting bad tokens (tests only) -----------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(header), decode(payload), signature


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{signature}"


def hs256_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = unsigned(header, claims).rstrip(".")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def refused(validator: TokenValidator, token: str, now: float = NOW) -> str:
    with pytest.raises(TokenError) as info:
        validator.validate(token, now=now)
    assert len(token) < 16 or token not in str(info.value)
    return info.value.reason


# -- the happy path over real HTTP ---------------------------------------------


def test_valid_token_through_discovery_and_jwks(
    idp: DevIdp, validator: TokenValidator, fetch: CountingFetch, server: DevIdpServer
) -> None:
    token = idp.token("agent-1", groups=["deployers", "readers"], now=NOW)
    result = validator.validate(token, now=NOW + 10)
    assert result.subject == "agent-1"
    assert result.groups == {"deployers", "readers"}
    assert result.audience == "awsgate"
    assert result.expires == NOW + 3600
    assert fetch.urls == [server.url + "/.well-known/openid-configuration", server.url + "/jwks"]
    principal = result.principal(role="deployer")
    assert (principal.issuer, principal.subject) == (server.url, "agent-1")
    assert principal.role == "deployer"


def test_es256_token_and_audience_list(idp: DevIdp, server: DevIdpServer) -> None:
    issuer = IssuerConfig(server.url, audience=("other", "awsgate"), algorithms=("ES256",))
    token = idp.token("agent", aud=["sts.amazonaws.com", "awsgate"], alg="ES256", now=NOW)
    assert TokenValidator([issuer]).validate(token, now=NOW).audience == "awsgate"


def test_token_without_kid_uses_the_only_key(idp: DevIdp, validator: TokenValidator) -> None:
    header, claims, _ = segments(idp.token("agent", now=NOW))
    del header["kid"]
    token = _resign_rs256(idp, header, claims)
    assert validator.validate(token, now=NOW).subject == "agent"


def _resign_rs256(idp: DevIdp, header: dict[str, Any], claims: dict[str, Any]) -> str:
    from joserfc import jws

    key = idp._key(idp.current("RS256"))
    payload = json.dumps(claims).encode()
    return jws.serialize_compact(header, payload, key, algorithms=["RS256"])


def test_validations_are_cached_until_expiry(
    idp: DevIdp, validator: TokenValidator, fetch: CountingFetch
) -> None:
    token = idp.token("agent", ttl=600, now=NOW)
    first = validator.validate(token, now=NOW)
    assert validator.cached(token, now=NOW + 1) is first
    assert validator.validate(token, now=NOW + 2) is first
    assert len(fetch.urls) == 2
    assert validator.cached(idp.token("other", now=NOW), now=NOW) is None
    assert validator.cached(token, now=NOW + 600 + 60) is None
    assert refused(validator, token, now=NOW + 600 + 60) == "token expired"


def test_cache_is_bounded(idp: DevIdp, issuer: IssuerConfig) -> None:
    validator = TokenValidator([issuer], cache_size=2)
    tokens = [idp.token(f"agent-{index}", now=NOW) for index in range(3)]
    for token in tokens:
        validator.validate(token, now=NOW)
    assert validator.cached(tokens[0], now=NOW) is None
    assert validator.cached(tokens[2], now=NOW) is not None


# -- every refusal reason ------------------------------------------------------


def test_expired_token_refused_beyond_skew(idp: DevIdp, validator: TokenValidator) -> None:
    token = idp.token("agent", ttl=900, now=NOW)
    assert validator.validate(token, now=NOW + 900 + 59).subject == "agent"
    assert refused(validator, idp.token("a", ttl=900, now=NOW), now=NOW + 960) == "token expired"


def test_not_yet_valid_token_refused(idp: DevIdp, validator: TokenValidator) -> None:
    early = idp.token("agent", extra_claims={"nbf": NOW + 120}, now=NOW)
    assert refused(validator, early) == "token not yet valid"
    issued_in_future = idp.token("agent", now=NOW + 120)
    assert refused(validator, issued_in_future) == "token not yet valid"
    assert validator.validate(idp.token("agent", now=NOW + 30), now=NOW).subject == "agent"


def test_token_without_expiry_refused(idp: DevIdp, validator: TokenValidator) -> None:
    header, claims, _ = segments(idp.token("agent", now=NOW))
    del claims["exp"]
    assert refused(validator, _resign_rs256(idp, header, claims)) == "token has no expiry"


def test_wrong_audience_refused(idp: DevIdp, validator: TokenValidator) -> None:
    assert refused(validator, idp.token("agent", aud="someone-else", now=NOW)) == "wrong audience"
    assert refused(validator, idp.token("agent", aud=["a", "b"], now=NOW)) == "wrong audience"


def test_unknown_issuer_refused(
    idp: DevIdp, validator: TokenValidator, fetch: CountingFetch
) -> None:
    token = idp.token("agent", issuer="http://127.0.0.1:1/other", now=NOW)
    assert refused(validator, token) == "unknown issuer"
    assert fetch.urls == []


def test_signature_by_another_key_refused(
    idp: DevIdp, validator: TokenValidator, tmp_path: Path
) -> None:
    impostor = DevIdp(tmp_path / "impostor")
    token = impostor.token("agent", issuer=idp.issuer, kid=idp.current().kid, now=NOW)
    assert refused(validator, token) == "bad signature"


def test_tampered_payload_refused(idp: DevIdp, validator: TokenValidator) -> None:
    header, claims, signature = segments(idp.token("agent", groups=["readers"], now=NOW))
    claims["groups"] = ["admins"]
    assert refused(validator, unsigned(header, claims, signature)) == "bad signature"


def test_alg_none_refused_even_if_configured(idp: DevIdp, server: DevIdpServer) -> None:
    issuer = IssuerConfig(server.url, ("awsgate",), algorithms=("none", "RS256"))
    header, claims, _ = segments(idp.token("agent", now=NOW))
    for alg in ("none", "None", "NONE"):
        token = unsigned({**header, "alg": alg}, claims)
        assert refused(TokenValidator([issuer]), token) == "algorithm not allowed"


def test_hs256_signed_with_public_key_refused(idp: DevIdp, server: DevIdpServer) -> None:
    """The alg-confusion attack: HMAC keyed with the issuer's public key material."""
    issuer = IssuerConfig(server.url, ("awsgate",), algorithms=("RS256", "HS256"))
    header, claims, _ = segments(idp.token("agent", now=NOW))
    public = idp._key(idp.current())
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict()).encode()):
        token = hs256_with(secret, {**header, "alg": "HS256"}, claims)
        assert refused(TokenValidator([issuer]), token) == "algorithm not allowed"


def test_algorithm_outside_issuer_allow_list_refused(idp: DevIdp, server: DevIdpServer) -> None:
    issuer = IssuerConfig(server.url, ("awsgate",), algorithms=("RS256",))
    token = idp.token("agent", alg="ES256", now=NOW)
    assert refused(TokenValidator([issuer]), token) == "algorithm not allowed"


def test_unknown_kid_refused(idp: DevIdp, validator: TokenValidator) -> None:
    assert refused(validator, idp.token("agent", kid="no-such-key", now=NOW)) == "unknown key id"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.bm90IGpzb24.sig", "W10.e30.sig", "x" * 20000],
)
def test_malformed_tokens_refused(validator: TokenValidator, token: str) -> None:
    assert refused(validator, token) == "malformed token"


def test_issuer_unreachable_without_cached_keys(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    token = DevIdp(tmp_path / "keys").token("agent", issuer=url, now=NOW)
    validator = TokenValidator([IssuerConfig(url, ("awsgate",))])
    assert refused(validator, token) == "issuer unreachable"


@pytest.mark.parametrize(
    "failure", [OSError("connection refused"), http.client.BadStatusLine("garbage")]
)
def test_unreachable_issuer_is_not_retried_on_every_request(
    clock: FakeClock, failure: Exception
) -> None:
    calls: list[str] = []

    def failing(url: str) -> Fetched:
        calls.append(url)
        raise failure

    keys = IssuerKeys("https://idp.example", failing, clock=clock, refetch_interval=30)
    for _ in range(3):
        with pytest.raises(TokenError, match="issuer unreachable"):
            keys.get("kid")
    assert len(calls) == 1
    clock.now += 30
    with pytest.raises(TokenError, match="issuer unreachable"):
        keys.get("kid")
    assert len(calls) == 2


def test_cached_keys_outlive_an_outage(
    idp: DevIdp, validator: TokenValidator, server: DevIdpServer, clock: FakeClock
) -> None:
    validator.validate(idp.token("before", now=NOW), now=NOW)
    server.stop()
    clock.now += 24 * 3600  # far past any cache lifetime
    assert validator.validate(idp.token("after", now=NOW), now=NOW).subject == "after"


def test_rotation_picked_up_by_refetch_on_unknown_kid(
    idp: DevIdp, validator: TokenValidator, fetch: CountingFetch, clock: FakeClock
) -> None:
    old_token = idp.token("old", now=NOW)
    validator.validate(old_token, now=NOW)
    idp.rotate()
    clock.now += 31  # past the refetch rate limit, well within the cache lifetime
    assert validator.validate(idp.token("new", now=NOW), now=NOW).subject == "new"
    assert len(fetch.urls) == 4
    fresh = TokenValidator([validator._issuers[idp.issuer][0]])
    assert fresh.validate(old_token, now=NOW).subject == "old"  # old key still published


def test_refetch_on_unknown_kid_is_rate_limited(
    idp: DevIdp, validator: TokenValidator, fetch: CountingFetch, clock: FakeClock
) -> None:
    validator.validate(idp.token("agent", now=NOW), now=NOW)
    assert refused(validator, idp.token("a", kid="junk-1", now=NOW)) == "unknown key id"
    assert len(fetch.urls) == 2  # just fetched: no refetch
    clock.now += 31
    assert refused(validator, idp.token("a", kid="junk-2", now=NOW)) == "unknown key id"
    assert refused(validator, idp.token("a", kid="junk-3", now=NOW)) == "unknown key id"
    assert len(fetch.urls) == 4  # one refetch for two unknown kids


def test_cache_lifetime_follows_cache_control_within_bounds(clock: FakeClock) -> None:
    calls: list[str] = []
    jwks = {"keys": []}

    def fake(url: str) -> Fetched:
        calls.append(url)
        if url.endswith("openid-configuration"):
            return Fetched(
                json.dumps(
                    {"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys"}
                ).encode()
            )
        return Fetched(json.dumps(jwks).encode(), max_age=5)

    keys = IssuerKeys("https://idp.example", fake, clock=clock, min_ttl=60)
    with pytest.raises(TokenError, match="unknown key id"):
        keys.get("kid")
    clock.now += 59
    keys._current()
    assert len(calls) == 2  # max-age 5 was raised to the 60 s floor
    clock.now += 1
    keys._current()
    assert len(calls) == 4


def test_discovery_naming_another_issuer_is_unusable(clock: FakeClock) -> None:
    def fake(url: str) -> Fetched:
        return Fetched(
            json.dumps(
                {"issuer": "https://evil.example", "jwks_uri": "https://evil.example/keys"}
            ).encode()
        )

    with pytest.raises(TokenError, match="issuer unreachable"):
        IssuerKeys("https://idp.example", fake, clock=clock).get("kid")


def test_jwks_parsing_skips_symmetric_and_encryption_keys(idp: DevIdp) -> None:
    idp.current()
    public = idp.jwks()["keys"][0]
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**public, "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            public,
        ]
    }
    assert list(_parse_jwks(document)) == [public["kid"]]


def test_max_age_parsing() -> None:
    assert _max_age("public, max-age=300") == 300
    assert _max_age("no-cache") == 0
    assert _max_age(None) is None
    assert _max_age("max-age=abc") is None


def test_fetch_url_refuses_other_schemes() -> None:
    with pytest.raises(OSError):
        fetch_url("file:///etc/passwd")


# -- groups ----------------------------------------------------------------------


def test_groups_claim_as_list_or_separated_string() -> None:
    issuer = IssuerConfig("https://idp", ("a",), groups_claim="groups")
    assert groups_for(issuer, {"groups": ["a", "b", 3, ""]}) == {"a", "b"}
    assert groups_for(issuer, {"groups": "a, b c,,d"}) == {"a", "b", "c", "d"}
    assert groups_for(issuer, {"groups": {"a": 1}}) == frozenset()
    assert groups_for(issuer, {}) == frozenset()


def test_nested_claim_paths_including_dotted_names() -> None:
    claims = {
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "runner"}},
        "realm_access": {"roles": ["ops"]},
        "a.b": "flat",
    }
    assert claim_value(claims, "kubernetes.io.namespace") == "ci"
    assert claim_value(claims, "kubernetes.io.serviceaccount.name") == "runner"
    assert claim_value(claims, "realm_access.roles") == ["ops"]
    assert claim_value(claims, "a.b") == "flat"
    assert claim_value(claims, "kubernetes.io.missing") is None
    issuer = IssuerConfig("https://idp", ("a",), groups_claim="realm_access.roles")
    assert groups_for(issuer, claims) == {"ops"}


def test_claim_rules_are_case_sensitive_globs() -> None:
    issuer = IssuerConfig(
        "https://idp",
        ("a",),
        claim_rules=(
            ClaimRule("sub", "repo:acme/*:ref:refs/heads/main", ("main-branch",)),
            ClaimRule("email_verified", "true", ("verified",)),
            ClaimRule("amr", "mfa", ("mfa",)),
        ),
    )
    claims = {
        "sub": "repo:acme/infra:ref:refs/heads/main",
        "email_verified": True,
        "amr": ["pwd", "mfa"],
    }
    assert groups_for(issuer, claims) == {"main-branch", "verified", "mfa"}
    assert groups_for(issuer, {"sub": "repo:ACME/infra:ref:refs/heads/main"}) == frozenset()
    assert groups_for(issuer, {"sub": "repo:acme/infra:ref:refs/heads/dev"}) == frozenset()


# The issuer examples documented for the README, parsed by the real config loader.
EXAMPLES = """
identity:
  issuers:
    - url: https://token.actions.githubusercontent.com
      audience: sts.amazonaws.com
      algorithms: [RS256]
      claim_rules:
        - {claim: sub, match: "repo:acme/infra:ref:refs/heads/main", groups: [infra-deploy]}
        - {claim: sub, match: "repo:acme/*:pull_request", groups: [ci-readonly]}
        - {claim: repository_owner, match: acme, groups: [acme-ci]}
    - url: https://gitlab.example.com
      audience: awsgate
      claim_rules:
        - {claim: sub, match: "project_path:acme/infra:ref_type:branch:ref:main",
           groups: [infra-deploy]}
        - {claim: namespace_path, match: "acme/*", groups: [acme-ci]}
        - {claim: ref_protected, match: "true", groups: [protected-ref]}
    - url: https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE
      audience: awsgate
      claim_rules:
        - {claim: sub, match: "system:serviceaccount:ci:*", groups: [k8s-ci]}
        - {claim: kubernetes.io.namespace, match: "team-*", groups: [k8s-teams]}
"""


def test_documented_issuer_examples(tmp_path: Path) -> None:
    import yaml

    parsed = config.parse(yaml.safe_load(EXAMPLES), tmp_path / "awsgate.yaml")
    github, gitlab, eks = parsed.identity.issuers
    assert groups_for(
        github,
        {
            "sub": "repo:acme/infra:ref:refs/heads/main",
            "repository_owner": "acme",
            "aud": "sts.amazonaws.com",
        },
    ) == {"infra-deploy", "acme-ci"}
    assert groups_for(
        github, {"sub": "repo:acme/web:pull_request", "repository_owner": "acme"}
    ) == {"ci-readonly", "acme-ci"}
    assert groups_for(
        gitlab,
        {
            "sub": "project_path:acme/infra:ref_type:branch:ref:main",
            "namespace_path": "acme/platform",
            "ref_protected": "true",
        },
    ) == {"infra-deploy", "acme-ci", "protected-ref"}
    assert groups_for(
        eks,
        {
            "sub": "system:serviceaccount:team-a:builder",
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "builder"}},
        },
    ) == {"k8s-teams"}
    assert groups_for(eks, {"sub": "system:serviceaccount:ci:runner"}) == {"k8s-ci"}
