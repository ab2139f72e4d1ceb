"""Re-signing chunk-signed S3 uploads, checked against the S3 documentation's examples."""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime

import pytest

from addons.aws.chunked import ChunkChain, ChunkResigner, chunk_resigner
from addons.aws.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    Credentials,
    SignatureError,
    Signer,
    parse_auth,
    payload_hash,
    signing_key,
    strip_auth,
    verify,
)

# "Signature Calculations for the Authorization Header: Transferring Payload in Multiple
# Chunks" and "... Including Trailing Headers" in the Amazon S3 API reference: 66560 bytes
# of "a" in chunks of 65536, 1024 and 0 bytes.
DOC = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
DOC_NOW = datetime(2013, 5, 24, tzinfo=UTC)
DOC_AMZ_DATE = "20130524T000000Z"
DOC_SCOPE = "20130524/us-east-1/s3/aws4_request"
DOC_PATH = "/examplebucket/chunkObject.txt"
DOC_HEADERS = [
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", DOC_AMZ_DATE),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("x-amz-content-sha256", STREAMING_SIGNED),
    ("Content-Encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
    ("Content-Length", "66824"),
]
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
DOC_CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
TRAILER_CHUNK_SIGNATURES = (
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
)
TRAILER = b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
ZEROS = ("0" * 64,) * 3

GATEWAY = Credentials("AKIDGATEWAYEXAMPLE", "gateway-secret/EXAMPLE+key", "gateway-token")
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def chunked_body(signatures, trailer: bytes | None = None, trailer_signature: str = "") -> bytes:
    sizes = (65536, 1024, 0)
    body = b""
    for size, signature in zip(sizes, signatures, strict=True):
        body += b"%x;chunk-signature=%s\r\n" % (size, signature.encode()) + b"a" * size
        if size or trailer is None:
            body += b"\r\n"
    if trailer is not None:
        body += trailer + b"x-amz-trailer-signature:%s\r\n\r\n" % trailer_signature.encode()
    return body


def feed(transform, body: bytes, slices=None) -> bytes:
    """Feed ``body`` as mitmproxy does: slices in order, then b"" for the end."""
    slices = slices or [len(body)]
    out, position = [], 0
    for size in slices:
        out.append(transform(body[position : position + size]))
        position += size
    assert position >= len(body)
    out.append(transform(b""))
    return b"".join(out)


def run(transform, body: bytes, slices=None) -> bytes:
    """The re-signed body, which must have passed whole and without error."""
    out = feed(transform, body, slices)
    assert transform.error is None and transform.complete
    return out


def refused(transform, body: bytes, message: str) -> bytes:
    """The output for a body that must be refused: the same length, passed on as it came
    from the offending chunk on, so that S3 rejects it; later data passes through."""
    out = feed(transform, body)
    assert transform.error is not None and not transform.complete
    assert re.search(message, str(transform.error))
    assert len(out) == len(body)
    assert transform(b"more") == b"more"
    return out


def doc_chain(seed: str, secret: str = DOC.secret_key) -> ChunkChain:
    return ChunkChain(
        signing_key(secret, "20130524", "us-east-1", "s3"), DOC_AMZ_DATE, DOC_SCOPE, seed
    )


def test_signer_reproduces_the_documented_seed_signature():
    headers = [(n, v) for n, v in DOC_HEADERS if n.lower() not in {"x-amz-date", "host"}]
    signed = Signer().sign(
        DOC,
        "PUT",
        "s3.amazonaws.com",
        DOC_PATH,
        "",
        headers,
        STREAMING_SIGNED,
        "us-east-1",
        "s3",
        DOC_NOW,
    )
    assert signed["Authorization"].endswith(f"Signature={DOC_SEED}")
    assert signed["X-Amz-Content-SHA256"] == STREAMING_SIGNED


def test_chain_reproduces_the_documented_chunk_and_trailer_signatures():
    chain = doc_chain(DOC_SEED)
    digests = [hashlib.sha256(b"a" * size).hexdigest() for size in (65536, 1024, 0)]
    assert tuple(chain.chunk(d) for d in digests) == DOC_CHUNK_SIGNATURES
    chain = doc_chain(TRAILER_SEED)
    assert tuple(chain.chunk(d) for d in digests) == TRAILER_CHUNK_SIGNATURES
    assert chain.trailer(b"x-amz-checksum-crc32c:sOO8/Q==\n") == TRAILER_SIGNATURE


def doc_agent_request(body_signatures=DOC_CHUNK_SIGNATURES):
    authorization = (
        f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{DOC_SCOPE}, SignedHeaders="
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        f"x-amz-decoded-content-length;x-amz-storage-class, Signature={DOC_SEED}"
    )
    headers = [*DOC_HEADERS, ("Authorization", authorization)]
    return headers, chunked_body(body_signatures)


def test_resigning_with_the_same_key_and_time_reproduces_the_documented_body():
    headers, body = doc_agent_request()
    auth = parse_auth(headers, "")
    verify(auth, DOC.secret_key, "PUT", DOC_PATH, "", headers, None, DOC_NOW)
    stripped = list(headers)
    strip_auth(stripped, "")
    signed = Signer().sign(
        DOC,
        "PUT",
        "s3.amazonaws.com",
        DOC_PATH,
        "",
        stripped,
        payload_hash("s3", stripped, None),
        "us-east-1",
        "s3",
        DOC_NOW,
    )
    assert signed["Authorization"].endswith(DOC_SEED)
    transform = chunk_resigner(
        DOC, signed, "us-east-1", "s3", STREAMING_SIGNED, auth, DOC.secret_key
    )
    assert run(transform, body) == body


def test_zero_signatures_are_refused_when_the_agent_chain_is_checked():
    headers, _ = doc_agent_request()
    auth = parse_auth(headers, "")
    signed = {"X-Amz-Date": DOC_AMZ_DATE, "Authorization": f"... Signature={DOC_SEED}"}
    transform = chunk_resigner(
        DOC, signed, "us-east-1", "s3", STREAMING_SIGNED, auth, DOC.secret_key
    )
    given = chunked_body(ZEROS)
    assert refused(transform, given, "chunk signature does not match") == given


def test_trailer_upload_is_resigned_to_the_documented_signatures():
    transform = ChunkResigner(doc_chain(TRAILER_SEED), trailer=True)
    given = chunked_body(ZEROS, TRAILER, "f" * 64)
    expected = chunked_body(TRAILER_CHUNK_SIGNATURES, TRAILER, TRAILER_SIGNATURE)
    assert run(transform, given) == expected
    checked = ChunkResigner(doc_chain(TRAILER_SEED), trailer=True, verify=doc_chain(TRAILER_SEED))
    assert run(checked, expected) == expected


def test_a_tampered_trailer_is_refused_when_checked():
    expected = chunked_body(TRAILER_CHUNK_SIGNATURES, TRAILER, TRAILER_SIGNATURE)
    tampered = expected.replace(b"sOO8/Q==", b"AAAAAA==")
    checked = ChunkResigner(doc_chain(TRAILER_SEED), trailer=True, verify=doc_chain(TRAILER_SEED))
    assert refused(checked, tampered, "trailer signature does not match") == tampered


def test_lf_trailer_lines_and_a_blank_line_before_the_signature_are_kept():
    expected = chunked_body(TRAILER_CHUNK_SIGNATURES, TRAILER, TRAILER_SIGNATURE)
    variant = expected.replace(b"==\r\nx-amz-trailer", b"==\n\r\nx-amz-trailer")
    checked = ChunkResigner(doc_chain(TRAILER_SEED), trailer=True, verify=doc_chain(TRAILER_SEED))
    assert run(checked, variant) == variant


def gateway_resign(agent_headers):
    """The signing addon's path for a chunk-signed upload: verify, strip, sign, re-frame."""
    auth = parse_auth(agent_headers, "")
    verify(auth, DOC.secret_key, "PUT", DOC_PATH, "", agent_headers, None, DOC_NOW)
    headers = list(agent_headers)
    strip_auth(headers, "")
    mode = payload_hash("s3", headers, None)
    signed = Signer().sign(
        GATEWAY, "PUT", "s3.amazonaws.com", DOC_PATH, "", headers, mode, "us-east-1", "s3", NOW
    )
    transform = chunk_resigner(GATEWAY, signed, "us-east-1", "s3", mode, auth, DOC.secret_key)
    replaced = {name.lower() for name in signed}
    forwarded = [(n, v) for n, v in headers if n.lower() not in replaced] + list(signed.items())
    return forwarded, transform


def s3_accepts(headers, body) -> bool:
    """What S3 does with the forwarded request: header signature, then the chunk chain."""
    auth = parse_auth(headers, "")
    verify(auth, GATEWAY.secret_key, "PUT", DOC_PATH, "", headers, None, NOW)
    key = signing_key(GATEWAY.secret_key, auth.date, auth.region, auth.service)
    check = ChunkResigner(
        ChunkChain(key, auth.amz_date, auth.scope, auth.signature),
        trailer=False,
        verify=ChunkChain(key, auth.amz_date, auth.scope, auth.signature),
    )
    feed(check, body)
    if check.error is not None or not check.complete:
        raise SignatureError("S3 would refuse this body")
    return True


def test_gateway_resigned_upload_passes_s3s_checks_with_the_same_length_and_data():
    headers, body = doc_agent_request()
    forwarded_headers, transform = gateway_resign(headers)
    forwarded = run(transform, body)
    assert len(forwarded) == len(body) == 66824
    assert forwarded != body
    assert forwarded.replace(b"\r\n", b"").count(b"a" * 1024) >= 65
    strip = [
        line.split(b";")[0] if b"chunk-signature" in line else line
        for line in forwarded.split(b"\r\n")
    ]
    assert strip == [
        line.split(b";")[0] if b"chunk-signature" in line else line for line in body.split(b"\r\n")
    ]
    assert s3_accepts(forwarded_headers, forwarded)
    with pytest.raises(SignatureError):
        s3_accepts(forwarded_headers, body)


def test_a_tampered_chunk_leaves_unsigned_by_the_gateway_so_s3_refuses_the_upload():
    headers, body = doc_agent_request()
    tampered = body[:66000] + b"b" + body[66001:]  # a byte of the second chunk
    forwarded_headers, transform = gateway_resign(headers)
    out = refused(transform, tampered, "chunk signature does not match")
    second = body.index(b"400;chunk-signature")
    assert out[second:] == tampered[second:]  # the agent's bytes, not the gateway's chain
    assert out[:second] != tampered[:second]  # the first chunk was re-signed
    with pytest.raises(SignatureError):
        s3_accepts(forwarded_headers, out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_slicing_of_the_body_gives_the_same_output(seed):
    headers, body = doc_agent_request()
    whole = run(gateway_resign(headers)[1], body)
    rng = random.Random(seed)
    slices, left = [], len(body)
    while left > 0:
        slices.append(min(left, rng.choice([1, 2, 7, 64, 1000, 4096, 65535, 70000])))
        left -= slices[-1]
    assert run(gateway_resign(headers)[1], body, slices) == whole


def test_byte_by_byte_feeding_works():
    transform = ChunkResigner(doc_chain(DOC_SEED), trailer=False, verify=doc_chain(DOC_SEED))
    body = chunked_body(DOC_CHUNK_SIGNATURES)
    assert run(transform, body, [1] * len(body)) == body


def test_each_chunk_leaves_as_soon_as_it_is_whole():
    body = chunked_body(DOC_CHUNK_SIGNATURES)
    first_end = body.index(b"\r\n400;") + 2
    transform = ChunkResigner(doc_chain(DOC_SEED), trailer=False)
    assert transform(body[: first_end - 1]) == b""
    assert transform(body[first_end - 1 : first_end]) == body[:first_end]
    assert transform(body[first_end:]) == body[first_end:]
    assert transform(b"") == b""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chunked_body(DOC_CHUNK_SIGNATURES) + b"0", "after the end"),
        (b"10000\r\n" + b"a" * 65536 + b"\r\n", "malformed aws-chunked chunk header"),
        (b"10000;chunk-signature=" + b"A" * 64 + b"\r\n", "malformed aws-chunked chunk header"),
        (b"zz;chunk-signature=" + b"0" * 64 + b"\r\n", "malformed aws-chunked chunk header"),
        (b"4;chunk-signature=" + b"0" * 64 + b"\r\naaaaXX", "not followed by CRLF"),
        (b"1000001;chunk-signature=" + b"0" * 64 + b"\r\n", "larger than the gateway accepts"),
        (b"1" * 5000, "line too long"),
    ],
)
def test_malformed_bodies_are_refused(body, message):
    transform = ChunkResigner(doc_chain(DOC_SEED), trailer=False, max_chunk=1024 * 1024)
    refused(transform, body, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chunked_body(TRAILER_CHUNK_SIGNATURES, TRAILER, TRAILER_SIGNATURE) + b"x:y\r\n", "after"),
        (chunked_body(TRAILER_CHUNK_SIGNATURES, b"no-colon\r\n", TRAILER_SIGNATURE), "trailer"),
        (chunked_body(TRAILER_CHUNK_SIGNATURES, TRAILER, "XYZ"), "x-amz-trailer-signature"),
        (chunked_body(TRAILER_CHUNK_SIGNATURES, b"x-a:b\r\n" * 1000, "0" * 64), "too long"),
    ],
)
def test_malformed_trailers_are_refused(body, message):
    refused(ChunkResigner(doc_chain(TRAILER_SEED), trailer=True), body, message)


@pytest.mark.parametrize("cut", [1, 66000, 66822])
def test_a_truncated_body_is_incomplete_and_empty_slices_change_nothing(cut):
    body = chunked_body(DOC_CHUNK_SIGNATURES)
    transform = ChunkResigner(doc_chain(DOC_SEED), trailer=False, verify=doc_chain(DOC_SEED))
    head = transform(body[:cut]) + transform(b"")
    assert not transform.complete
    assert body.startswith(head)
    assert head + transform(body[cut:]) + transform(b"") == body
    assert transform.complete


def test_a_trailer_upload_without_its_signature_is_incomplete():
    transform = ChunkResigner(doc_chain(TRAILER_SEED), trailer=True)
    transform(chunked_body(TRAILER_CHUNK_SIGNATURES) + TRAILER + b"\r\n")
    assert transform(b"") == b""
    assert not transform.complete


@pytest.mark.parametrize("mode", [UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, "0" * 64])
def test_only_chunk_signed_modes_get_a_transformer(mode):
    with pytest.raises(ValueError, match="no chunk signatures"):
        chunk_resigner(GATEWAY, {}, "us-east-1", "s3", mode)


def test_trailer_mode_is_chosen_from_the_payload_mode():
    signed = {"X-Amz-Date": DOC_AMZ_DATE, "Authorization": f"... Signature={TRAILER_SEED}"}
    transform = chunk_resigner(DOC, signed, "us-east-1", "s3", STREAMING_SIGNED_TRAILER)
    given = chunked_body(ZEROS, TRAILER, "0" * 64)
    assert run(transform, given) == chunked_body(
        TRAILER_CHUNK_SIGNATURES, TRAILER, TRAILER_SIGNATURE
    )
