"""Signing: strip the agent's auth, re-sign with gateway-held credentials, route upstream.

Only genuine AWS endpoint names for the credential scope's service get a
gateway signature (a signature for an arbitrary host would leak a replayable
credential). With ``upstream`` set, the request goes there (moto, LocalStack)
while keeping and signing for the AWS ``Host``. Nothing is changed after
signing: what is signed is what goes on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Set
from datetime import UTC, datetime
from urllib.parse import urlsplit

from mitmproxy import http

from addons import context, settings
from addons.aws import chunked, credentials, endpoints, sigv4
from addons.context import GateContext, Refusal
from addons.hooks import RequestStage, deny, fail_closed, refuse, split_path

logger = logging.getLogger("awsgate")


def host_without_port(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class Signing(RequestStage):
    def __init__(self) -> None:
        self.signer = sigv4.Signer()
        self.upstream: tuple[str, str, int] | None = None
        self.credentials = credentials.UpstreamCredentials({})

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        self.credentials = credentials.UpstreamCredentials(
            gateway_config.roles, endpoint_url=gateway_config.upstream
        )
        if gateway_config.upstream:
            parts = urlsplit(gateway_config.upstream)
            default_port = 443 if parts.scheme == "https" else 80
            assert parts.hostname is not None
            self.upstream = (parts.scheme, parts.hostname, parts.port or default_port)
        else:
            self.upstream = None

    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        request = flow.request
        operation = gate.operation
        assert operation is not None and gate.principal is not None
        aws_host = host_without_port(request.host_header or request.host)
        if self.upstream is None and request.scheme != "https":
            # Re-signed, it would cross the network in clear, session token and all.
            deny(flow, f"awsgate: AWS is reached over HTTPS only; use https://{aws_host}")
            return
        if aws_host.lower() != request.host.lower():
            deny(flow, f"awsgate: Host {aws_host!r} differs from the destination; not signed")
            return
        if not endpoints.is_endpoint_for(aws_host, operation.signing_name):
            deny(
                flow,
                f"awsgate: {aws_host} is not an AWS endpoint for "
                f"{operation.signing_name}; not signed",
            )
            return
        principal = gate.principal
        try:
            if self.credentials.needs_network(principal.role, principal.subject):
                creds = await asyncio.to_thread(
                    self.credentials.get, principal.role, principal.subject
                )
            else:
                creds = self.credentials.get(principal.role, principal.subject)
        except credentials.CredentialsUnavailable as exc:
            deny(flow, str(exc), kind="error", status=500)
            return

        path, query = split_path(request)
        query = sigv4.strip_auth(request.headers, query)
        try:
            payload_hash = sigv4.payload_hash(
                operation.signing_name,
                request.headers,
                None if gate.streamed else request.raw_content,
            )
        except sigv4.SignatureError as exc:  # the agent's request, not the gateway, is wrong
            refuse(flow, Refusal(400, exc.code, f"awsgate: {exc}", "error"))
            return
        self._route(request, aws_host)
        request.path = f"{path}?{query}" if query else path
        now = datetime.now(UTC)
        signed = self.signer.sign(
            creds,
            request.method,
            request.host_header or aws_host,
            path,
            query,
            request.headers,
            payload_hash,
            operation.region,
            operation.signing_name,
            now,
        )
        sigv4.set_headers(request.headers, signed)
        if payload_hash in chunked.CHUNK_SIGNED_MODES:
            # Each chunk carries a signature chained from the seed: re-sign them as they stream.
            request.stream = chunked.chunk_resigner(
                creds, signed, operation.region, operation.signing_name, payload_hash
            )
        gate.signed = True

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        stream = flow.request.stream
        resigner = getattr(stream, "inner", stream)  # the recording addon may wrap it
        if isinstance(resigner, chunked.ChunkResigner) and not resigner.complete:
            # Its bytes have left: from the bad chunk on they went as the agent sent them,
            # outside the gateway's signature chain, so AWS refuses the upload.
            logger.error("awsgate: chunk-signed upload broken: %s", resigner.error or "cut short")
            return None
        return self._stage(flow, streamed_phase=False)

    def _route(self, request: http.Request, aws_host: str) -> None:
        """Send to the configured upstream, keeping the AWS Host header."""
        if self.upstream is None:
            return
        # Set the parts underneath: the host setter would rewrite the Host header.
        scheme, request.data.host, request.data.port = self.upstream
        request.data.scheme = scheme.encode()

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Keep the agent's connection open even when the upstream closes its own.

        An agent told ``Connection: close`` opens a new TLS connection for its
        next call, which costs the gateway several times the CPU of the call.
        """
        response = flow.response
        closing = response is not None and response.headers.get("connection", "") == "close"
        if closing and context.find(flow) is not None:
            # On a copy: mitmproxy's upstream side reads this very response object to
            # learn that the upstream closes, and must not reuse that connection.
            assert response is not None
            flow.response = response.copy()
            del flow.response.headers["connection"]
