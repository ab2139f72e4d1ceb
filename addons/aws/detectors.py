"""Pattern detectors: secrets in free text anywhere in what is recorded.

Shape-driven masking only knows the fields the catalogue and the policies
name; an access key pasted into a Lambda environment, a private key in a tag
value or a JWT in an SQS message would still reach the record. These
detectors scan recorded bodies and parameters for well-known secret shapes,
plus the operator's own regular expressions (``masking.patterns`` in the
config), and replace each match with the marker. They only change the record,
never what the agent receives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from addons.aws.wiredoc import MARKER

# Patterns that start with a literal: the regex engine skips ahead to it, so
# scanning a body that holds none costs next to nothing.
BUILTIN_PATTERNS: dict[str, str] = {
    # Long-term (AKIA) and temporary (ASIA) access key ids.
    "aws-access-key-id": r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])",
    "private-key": (
        r"-----BEGIN[A-Z ]{0,40} PRIVATE KEY( BLOCK)?-----.*?"
        r"-----END[A-Z ]{0,40} PRIVATE KEY( BLOCK)?-----"
    ),
    "jwt": r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
}

# A 40-character secret access key: base64 alphabet, mixed case and a digit
# (which rules out hex digests), not part of a longer token. It has no
# literal to skip ahead to, so it only runs on bodies with a run that long.
SECRET_ACCESS_KEY = (
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
    r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_KEY_LENGTH = 40
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")
# Maps the key alphabet to "k" and everything else to a space, for a C-speed run search.
_RUNS = bytes(ord("k") if byte in _BASE64 else ord(" ") for byte in range(256))
_LONG_RUN = b"k" * _KEY_LENGTH


def has_key_length_run(raw: bytes) -> bool:
    """Whether ``raw`` holds 40 key-alphabet characters in a row (cheap prefilter)."""
    return _LONG_RUN in raw.translate(_RUNS)


class PatternError(ValueError):
    """A configured pattern is not a valid regular expression."""


class Detectors:
    """The built-in patterns plus the configured ones."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        sources = list(BUILTIN_PATTERNS.values())
        for pattern in extra:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PatternError(f"masking pattern {pattern!r}: {exc}") from exc
            sources.append(pattern)
        self._patterns = re.compile("|".join(f"(?:{source})" for source in sources), re.DOTALL)
        self._secret_key = re.compile(SECRET_ACCESS_KEY)

    def scrub_text(self, text: str) -> str:
        return self._scrub(text, has_key_length_run(text.encode("utf-8", "surrogateescape")))

    def scrub_bytes(self, body: bytes) -> bytes:
        """``body`` with every match replaced; undecodable bytes are kept as they were."""
        text = body.decode("utf-8", "surrogateescape")
        scrubbed = self._scrub(text, has_key_length_run(body))
        return body if scrubbed == text else scrubbed.encode("utf-8", "surrogateescape")

    def _scrub(self, text: str, may_hold_key: bool) -> str:
        text = self._patterns.sub(MARKER, text)
        return self._secret_key.sub(MARKER, text) if may_hold_key else text

    def scrub_value(self, value: Any) -> Any:
        """A copy of a parameters tree with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {
                self.scrub_text(key) if isinstance(key, str) else key: self.scrub_value(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub_value(item) for item in value]
        return value
