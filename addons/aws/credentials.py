"""The gateway's own upstream AWS credentials, per role.

They come from the gateway process's standard boto3 credential chain, a named
profile, or a role the gateway assumes on the agent's behalf with
``SourceIdentity`` set to the agent's subject, so CloudTrail names the agent.
Assumed credentials are cached until shortly before they expire. The agent
never receives any of them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping

import boto3

from addons.aws.sigv4 import Credentials
from addons.config import RoleConfig

REFRESH_MARGIN = 300  # seconds before expiry at which assumed credentials are renewed
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")


class CredentialsUnavailable(Exception):
    """No upstream credentials can be had for the role; the message is safe to show."""


def session_name(subject: str) -> str:
    """An AWS RoleSessionName / SourceIdentity (2-64 chars of ``[\\w+=,.@-]``) for a subject."""
    cleaned = _SESSION_NAME_UNSAFE.sub("-", subject)[:64]
    return cleaned if len(cleaned) >= 2 else f"awsgate-{cleaned}"


class UpstreamCredentials:
    def __init__(self, roles: Mapping[str, RoleConfig], endpoint_url: str | None = None) -> None:
        self.roles = dict(roles)
        self.endpoint_url = endpoint_url
        self._sessions: dict[str | None, boto3.Session] = {}
        self._assumed: dict[tuple[str, str], tuple[Credentials, float]] = {}
        # The last credentials read per profile, as read and as signed with: refreshable
        # credentials give new values when they rotate, and are converted again then.
        self._converted: dict[str | None, tuple[object, Credentials]] = {}
        self._lock = threading.Lock()

    def needs_network(self, role: str | None, subject: str) -> bool:
        """True when ``get`` may call STS (so callers run it off the event loop)."""
        role_config = self.roles.get(role or "")
        if role_config is None or role_config.assume_role_arn is None:
            return False
        cached = self._assumed.get((role_config.name, subject))
        return cached is None or cached[1] - REFRESH_MARGIN < time.time()

    def get(self, role: str | None, subject: str) -> Credentials:
        role_config = self.roles.get(role or "")
        if role_config is not None and role_config.assume_role_arn:
            return self._assume(role_config, subject)
        profile = role_config.profile if role_config else None
        return self._frozen(profile)

    def _session(self, profile: str | None) -> boto3.Session:
        with self._lock:
            if profile not in self._sessions:
                self._sessions[profile] = boto3.Session(profile_name=profile)
            return self._sessions[profile]

    def _frozen(self, profile: str | None) -> Credentials:
        found = self._session(profile).get_credentials()
        if found is None:
            where = f"profile {profile!r}" if profile else "the gateway's credential chain"
            raise CredentialsUnavailable(f"awsgate: no upstream AWS credentials in {where}")
        frozen = found.get_frozen_credentials()
        cached = self._converted.get(profile)
        if cached is None or cached[0] != frozen:
            cached = self._converted[profile] = (
                frozen,
                Credentials(frozen.access_key, frozen.secret_key, frozen.token),
            )
        return cached[1]

    def _assume(self, role_config: RoleConfig, subject: str) -> Credentials:
        key = (role_config.name, subject)
        cached = self._assumed.get(key)
        if cached is not None and cached[1] - REFRESH_MARGIN > time.time():
            return cached[0]
        sts = self._session(role_config.profile).client("sts", endpoint_url=self.endpoint_url)
        name = session_name(subject)
        try:
            answer = sts.assume_role(
                RoleArn=role_config.assume_role_arn, RoleSessionName=name, SourceIdentity=name
            )
        except Exception as exc:
            raise CredentialsUnavailable(
                f"awsgate: cannot assume the upstream role for role {role_config.name!r}: "
                f"{type(exc).__name__}"
            ) from exc
        issued = answer["Credentials"]
        credentials = Credentials(
            issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"]
        )
        self._assumed[key] = (credentials, issued["Expiration"].timestamp())
        return credentials
