"""Gateway-minted session credentials (addons.auth.sessions)."""

from __future__ import annotations

import base64
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from addons.auth.sessions import (
    DurationError,
    SessionError,
    SessionKeyError,
    SessionMinter,
    clamp_duration,
    load_or_create_key,
    session_claims,
)

NOW = 1_800_000_000
KEY = bytes(range(32))


@pytest.fixture
def minter() -> SessionMinter:
    return SessionMinter(KEY)


def mint(minter: SessionMinter, duration: int = 3600, **overrides: object):
    fields: dict[str, object] = {
        "issuer": "https://idp.example",
        "subject": "repo:acme/infra:ref:refs/heads/main",
        "groups": ["deployers", "readers"],
        "role": "deployer",
        "duration": duration,
        "claims": {"aud": "sts.amazonaws.com", "repository": "acme/infra", "jti": "x"},
        "now": NOW,
    }
    fields.update(overrides)
    return minter.mint(**fields)  # type: ignore[arg-type]


# -- key file ------------------------------------------------------------------


def test_key_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "session.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key(path) == key
    assert [entry.name for entry in path.parent.iterdir()] == ["session.key"]  # no temp left


def test_existing_key_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)
    assert load_or_create_key(path) == b"k" * 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "session.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(SessionKeyError, match=r"readable by group or others.*chmod 600"):
        load_or_create_key(path)


def test_short_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(SessionKeyError, match=r"shorter than 32 bytes"):
        load_or_create_key(path)


def test_symlinked_key_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    load_or_create_key(target)
    (tmp_path / "session.key").symlink_to(target)
    with pytest.raises(SessionKeyError, match=r"cannot read session key"):
        load_or_create_key(tmp_path / "session.key")


def test_minter_refuses_a_short_key() -> None:
    with pytest.raises(SessionKeyError):
        SessionMinter(b"too short")


# -- minting and opening -------------------------------------------------------


def test_round_trip(minter: SessionMinter) -> None:
    minted = mint(minter)
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", minted.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9+/]{40}", minted.secret_access_key)
    assert minted.expiration == datetime.fromtimestamp(NOW + 3600, UTC)
    info, secret = minter.open(minted.access_key_id, minted.session_token, now=NOW + 60)
    assert secret == minted.secret_access_key
    assert (info.issuer, info.subject, info.role) == (
        "https://idp.example",
        "repo:acme/infra:ref:refs/heads/main",
        "deployer",
    )
    assert info.groups == {"deployers", "readers"}
    assert info.session_id == minted.session_id
    assert info.expiration == minted.expiration
    assert info.claims == {"aud": "sts.amazonaws.com", "repository": "acme/infra"}
    principal = info.principal()
    assert (principal.subject, principal.session_id, principal.role) == (
        info.subject,
        minted.session_id,
        "deployer",
    )


def test_any_replica_with_the_key_opens_it(minter: SessionMinter) -> None:
    minted = mint(minter)
    _, secret = SessionMinter(KEY).open(minted.access_key_id, minted.session_token, now=NOW)
    assert secret == minted.secret_access_key


def test_another_key_refuses_it(minter: SessionMinter) -> None:
    minted = mint(minter)
    with pytest.raises(SessionError, match=r"^invalid session token$"):
        SessionMinter(b"\x01" * 32).open(minted.access_key_id, minted.session_token, now=NOW)


def test_each_mint_is_distinct(minter: SessionMinter) -> None:
    first, second = mint(minter), mint(minter)
    assert first.access_key_id != second.access_key_id
    assert first.secret_access_key != second.secret_access_key
    assert first.session_id != second.session_id


def _flip(token: str, position: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[position] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("position", [0, 5, 40, -40, -1])
def test_tampered_token_refused(minter: SessionMinter, position: int) -> None:
    minted = mint(minter)
    with pytest.raises(SessionError, match=r"^invalid session token$"):
        minter.open(minted.access_key_id, _flip(minted.session_token, position), now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "!!!!", "A" * 100, "x" * 9000])
def test_garbage_token_refused(minter: SessionMinter, token: str) -> None:
    with pytest.raises(SessionError, match=r"^invalid session token$"):
        minter.open("ASIAAAAAAAAAAAAAAAAA", token, now=NOW)


def test_wrong_access_key_refused(minter: SessionMinter) -> None:
    minted, other = mint(minter), mint(minter)
    with pytest.raises(SessionError, match=r"^access key does not match session$"):
        minter.open(other.access_key_id, minted.session_token, now=NOW)


def test_expired_session_refused(minter: SessionMinter) -> None:
    minted = mint(minter, duration=900)
    minter.open(minted.access_key_id, minted.session_token, now=NOW + 899)
    with pytest.raises(SessionError, match=r"^session expired$"):
        minter.open(minted.access_key_id, minted.session_token, now=NOW + 900)


def test_an_opened_session_still_checks_key_token_and_expiry(minter: SessionMinter) -> None:
    minted, other = mint(minter, duration=900), mint(minter)
    info, secret = minter.open(minted.access_key_id, minted.session_token, now=NOW)
    assert minter.open(minted.access_key_id, minted.session_token, now=NOW + 1) == (info, secret)
    with pytest.raises(SessionError, match=r"^access key does not match session$"):
        minter.open(other.access_key_id, minted.session_token, now=NOW)
    with pytest.raises(SessionError, match=r"^invalid session token$"):
        minter.open(minted.access_key_id, _flip(minted.session_token, 40), now=NOW)
    with pytest.raises(SessionError, match=r"^session expired$"):
        minter.open(minted.access_key_id, minted.session_token, now=NOW + 900)


def test_opened_sessions_are_bounded() -> None:
    minter = SessionMinter(KEY, cache_size=2)
    sessions = [mint(minter) for _ in range(3)]
    for _ in range(2):
        for minted in sessions:
            info, secret = minter.open(minted.access_key_id, minted.session_token, now=NOW)
            assert (info.session_id, secret) == (minted.session_id, minted.secret_access_key)
    assert len(minter._opened) == 2


def test_token_stays_small_with_many_claims(minter: SessionMinter) -> None:
    claims = {f"claim_{index:03}": "v" * 200 for index in range(100)}
    claims["nested"] = {"deep": "x"}
    minted = mint(minter, claims=claims, groups=[f"group-{index}" for index in range(20)])
    assert len(minted.session_token) < 2400
    info, _ = minter.open(minted.access_key_id, minted.session_token, now=NOW)
    assert 0 < len(info.claims) < 10


def test_session_claims_keep_short_scalars_only() -> None:
    kept = session_claims(
        {
            "sub": "s",
            "iss": "i",
            "exp": 1,
            "iat": 1,
            "jti": "j",
            "groups": ["g"],
            "aud": ["a", "b"],
            "repository": "acme/infra",
            "run_attempt": 2,
            "ref_protected": True,
            "kubernetes.io": {"namespace": "ci"},
            "long": "x" * 300,
            "many": ["x"] * 20,
        }
    )
    assert kept == {
        "aud": ["a", "b"],
        "repository": "acme/infra",
        "run_attempt": 2,
        "ref_protected": True,
    }


def test_key_file_round_trip_across_minters(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    minted = mint(SessionMinter(load_or_create_key(path)))
    replica = SessionMinter(load_or_create_key(path))
    assert replica.open(minted.access_key_id, minted.session_token, now=NOW)[1] == (
        minted.secret_access_key
    )
    assert os.stat(path).st_size == 32


# -- DurationSeconds -------------------------------------------------------------


def test_duration_defaults_and_bounds() -> None:
    assert clamp_duration(None, 12 * 3600) == 3600
    assert clamp_duration(None, 1800) == 1800
    assert clamp_duration(900, 3600) == 900
    assert clamp_duration(43200, 43200) == 43200


def test_duration_below_minimum_is_a_validation_error() -> None:
    with pytest.raises(DurationError) as info:
        clamp_duration(899, 43200)
    assert info.value.code == "ValidationError"
    assert str(info.value) == (
        "1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy "
        "constraint: Member must have value greater than or equal to 900"
    )


def test_duration_above_max_session_refused() -> None:
    with pytest.raises(DurationError, match=r"exceeds the MaxSessionDuration"):
        clamp_duration(3601, 3600)
