"""Re-sign S3 chunk-signed uploads (``aws-chunked`` with per-chunk signatures) in flight.

With ``x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` every
chunk of the body carries a signature chained from the request's seed signature,
so a body signed by the agent is refused by S3 once the headers are re-signed.
:class:`ChunkResigner` rewrites each chunk's signature (and the trailer's) with
the gateway's chain, optionally checking the agent's chain as the chunks pass.

It is a ``flow.request.stream`` callable for mitmproxy: it takes slices of the
body in order, cut anywhere (``b""``, at the end of the stream or for an empty
HTTP/2 frame, changes nothing); it holds at most one chunk. Chunk sizes are kept
and every signature is 64 hex digits, so Content-Length and
x-amz-decoded-content-length stay valid. A chunk leaves only once it is whole
and (when checked) its agent signature matched. Wire format::

    <hex size>;chunk-signature=<sig>\\r\\n<data>\\r\\n   ... then a 0-size chunk,
    followed by \\r\\n, or (trailer mode) by trailer lines, then
    x-amz-trailer-signature:<sig>\\r\\n and \\r\\n.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from addons.aws.sigv4 import (
    CHUNK_SIGNED_MODES,
    EMPTY_SHA256,
    STREAMING_SIGNED_TRAILER,
    AgentAuth,
    Credentials,
    SignatureError,
    hmac_hex,
    signing_key,
)

MAX_CHUNK = 16 * 1024 * 1024
MAX_LINE = 4096
TRAILER_SIGNATURE = b"x-amz-trailer-signature"
_CHUNK_HEADER = re.compile(rb"([0-9a-fA-F]{1,16});chunk-signature=([0-9a-f]{64})\Z")
_SIGNATURE = re.compile(rb"[0-9a-f]{64}\Z")


class ChunkChain:
    """One chain of chunk signatures, each signing the previous one and its data."""

    def __init__(self, key: bytes, amz_date: str, scope: str, seed_signature: str) -> None:
        self._key = key
        self._prefix = f"{amz_date}\n{scope}\n"
        self.previous = seed_signature

    def chunk(self, data_sha256: str) -> str:
        self.previous = hmac_hex(
            self._key,
            f"AWS4-HMAC-SHA256-PAYLOAD\n{self._prefix}{self.previous}\n"
            f"{EMPTY_SHA256}\n{data_sha256}",
        )
        return self.previous

    def trailer(self, canonical_trailers: bytes) -> str:
        digest = hashlib.sha256(canonical_trailers).hexdigest()
        self.previous = hmac_hex(
            self._key, f"AWS4-HMAC-SHA256-TRAILER\n{self._prefix}{self.previous}\n{digest}"
        )
        return self.previous


def _check(expected: str, given: bytes, what: str) -> None:
    if not hmac.compare_digest(expected.encode(), given):
        raise SignatureError(f"the {what} signature does not match")


class ChunkResigner:
    """Re-frames an aws-chunked body with the gateway's chunk signatures.

    On a malformed body or a wrong agent signature it does not raise (inside
    mitmproxy that only logs a crash and leaves both ends hanging): it records
    :attr:`error` and from then on passes the agent's bytes through untouched,
    starting with the offending chunk. Those carry no signature of the
    gateway's chain, so S3 answers SignatureDoesNotMatch (or a framing error)
    and stores nothing. (Withholding them instead would leave S3 waiting for
    the rest of Content-Length until it times out.)
    """

    def __init__(
        self,
        resign: ChunkChain,
        *,
        trailer: bool,
        verify: ChunkChain | None = None,
        max_chunk: int = MAX_CHUNK,
    ) -> None:
        self._resign = resign
        self._verify = verify
        self._trailer_mode = trailer
        self._max_chunk = max_chunk
        self._buffer = bytearray()
        self._state = self._chunk_header
        self._header = b""  # the agent's header line of the chunk being read
        self._size = 0
        self._size_token = b""
        self._agent_signature = b""
        self._trailers = bytearray()
        self._trailer_signed = False
        self.error: SignatureError | None = None

    def __call__(self, data: bytes) -> bytes:
        if self.error is not None:
            return data
        self._buffer += data
        out = bytearray()
        try:
            while self._state(out):
                pass
        except SignatureError as error:
            self.error = error
            out += self._header if self._state == self._chunk_data else b""
            out += self._buffer
            self._buffer.clear()
        return bytes(out)

    @property
    def complete(self) -> bool:
        """Whether the whole body passed, re-signed, up to its final CRLF.

        ``b""`` is not an error on its own: HTTP/2 may deliver an empty DATA
        frame mid-body, and S3 refuses a truncated body anyway.
        """
        return self.error is None and self._state == self._done

    def _line(self) -> tuple[bytes, bytes] | None:
        """The next line without and with its terminator (left in the buffer)."""
        end = self._buffer.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise SignatureError("aws-chunked framing line too long")
            return None
        raw = bytes(self._buffer[: end + 1])
        return raw.rstrip(b"\r\n"), raw

    def _chunk_header(self, out: bytearray) -> bool:
        line = self._line()
        if line is None:
            return False
        match = _CHUNK_HEADER.match(line[0])
        if match is None:
            raise SignatureError("malformed aws-chunked chunk header")
        size_token, agent_signature = match.groups()
        if int(size_token, 16) > self._max_chunk:
            raise SignatureError("aws-chunked chunk larger than the gateway accepts")
        self._header = line[1]
        del self._buffer[: len(self._header)]
        self._size_token, self._agent_signature = size_token, agent_signature
        self._size = int(size_token, 16)
        self._state = self._chunk_data
        return True

    def _chunk_data(self, out: bytearray) -> bool:
        last = self._size == 0
        # The last chunk of a trailer upload has no data CRLF: its trailers follow.
        needed = self._size if last and self._trailer_mode else self._size + 2
        if len(self._buffer) < needed:
            return False
        if needed > self._size and self._buffer[self._size : needed] != b"\r\n":
            raise SignatureError("malformed aws-chunked chunk: data is not followed by CRLF")
        data = bytes(self._buffer[: self._size])
        digest = hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256
        if self._verify is not None:
            _check(self._verify.chunk(digest), self._agent_signature, "chunk")
        signature = self._resign.chunk(digest)
        del self._buffer[:needed]
        out += b"%s;chunk-signature=%s\r\n" % (self._size_token, signature.encode())
        out += data
        out += b"\r\n" if needed > self._size else b""
        if last:
            self._state = self._trailer_line if self._trailer_mode else self._done
        else:
            self._state = self._chunk_header
        return True

    def _trailer_line(self, out: bytearray) -> bool:
        line = self._line()
        if line is None:
            return False
        text, raw = line
        if not text:
            # Some clients put an empty line between the trailers and their signature.
            if self._trailer_signed:
                self._state = self._done
        elif self._trailer_signed:
            raise SignatureError("aws-chunked trailer after x-amz-trailer-signature")
        else:
            raw = self._trailer(text, raw)
        del self._buffer[: len(line[1])]
        out += raw
        return True

    def _trailer(self, text: bytes, raw: bytes) -> bytes:
        """One trailer line as it goes out: unchanged, or the re-signed signature line."""
        name, colon, value = text.partition(b":")
        name = name.strip().lower()
        if not colon or not name:
            raise SignatureError("malformed aws-chunked trailer")
        if name != TRAILER_SIGNATURE:
            if len(self._trailers) + len(text) > MAX_LINE:
                raise SignatureError("aws-chunked trailers too long")
            self._trailers += b"%s:%s\n" % (name, value.strip())
            return raw
        agent_signature = value.strip()
        if not _SIGNATURE.match(agent_signature):
            raise SignatureError("malformed x-amz-trailer-signature")
        canonical = bytes(self._trailers)
        if self._verify is not None:
            _check(self._verify.trailer(canonical), agent_signature, "trailer")
        self._trailer_signed = True
        return raw.replace(agent_signature, self._resign.trailer(canonical).encode())

    def _done(self, out: bytearray) -> bool:
        if self._buffer:
            raise SignatureError("data after the end of the aws-chunked body")
        return False


def chunk_resigner(
    creds: Credentials,
    signed_headers: Mapping[str, str],
    region: str,
    service: str,
    mode: str,
    agent: AgentAuth | None = None,
    agent_secret: str | None = None,
) -> ChunkResigner:
    """The stream transformer for a request :meth:`Signer.sign` just signed.

    ``signed_headers`` is what ``sign`` returned (its seed signature and
    timestamp start the new chain); ``mode`` is the x-amz-content-sha256 value.
    With ``agent`` and ``agent_secret`` the agent's chunk signatures are
    checked too, and the stream fails on the first mismatch.
    """
    if mode not in CHUNK_SIGNED_MODES:
        raise ValueError(f"{mode} bodies carry no chunk signatures")
    amz_date = signed_headers["X-Amz-Date"]
    seed = signed_headers["Authorization"].rpartition("Signature=")[2]
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = signing_key(creds.secret_key, amz_date[:8], region, service)
    verify = None
    if agent is not None and agent_secret is not None:
        agent_key = signing_key(agent_secret, agent.date, agent.region, agent.service)
        verify = ChunkChain(agent_key, agent.amz_date, agent.scope, agent.signature)
    return ChunkResigner(
        ChunkChain(key, amz_date, scope, seed),
        trailer=mode == STREAMING_SIGNED_TRAILER,
        verify=verify,
    )
