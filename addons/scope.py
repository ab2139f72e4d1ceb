"""Which traffic is the gateway's: AWS endpoints are intercepted, the rest is not.

Non-AWS traffic from the same job (pip, git, ...) passes through without TLS
interception, or is refused when the config says ``non_aws: block``. Only
flows to AWS endpoint names get an awsgate context; the other addons ignore
flows without one.
"""

from __future__ import annotations

from collections.abc import Set

from mitmproxy import http, tls

from addons import context, settings
from addons.aws import endpoints, sigv4
from addons.hooks import fail_closed

STREAMING_PAYLOADS = ("STREAMING-",)


def is_aws_host(host: str | None) -> bool:
    return bool(host) and endpoints.classify_host(host) is not None


def should_stream(request: http.Request, threshold: int) -> bool:
    """Large or chunk-framed bodies stream; API-shaped bodies are buffered."""
    headers = dict(reversed(sigv4.header_pairs(request.headers)))  # the first of each name
    if "aws-chunked" in headers.get("content-encoding", ""):
        return True
    if headers.get("x-amz-content-sha256", "").startswith(STREAMING_PAYLOADS):
        return True
    length = headers.get("content-length")
    if length is None:
        return "chunked" in headers.get("transfer-encoding", "").lower()
    return length.isdigit() and int(length) > threshold


class Scope:
    def __init__(self) -> None:
        self.block_non_aws = False
        self.stream_threshold = 1024 * 1024

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is not None:
            self.block_non_aws = gateway_config.block_non_aws
            self.stream_threshold = gateway_config.stream_threshold
            # Build the endpoint catalogue now rather than on the first call's event loop turn.
            endpoints.warm()

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.block_non_aws and not is_aws_host(flow.request.host):
            flow.response = http.Response.make(
                403, b"awsgate: only AWS endpoints may be reached through this gateway\n"
            )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server.address
        host = data.client_hello.sni or (server[0] if server else None)
        if not is_aws_host(host):
            data.ignore_connection = True

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not is_aws_host(flow.request.host):
            if self.block_non_aws:
                flow.response = http.Response.make(
                    403, b"awsgate: only AWS endpoints may be reached through this gateway\n"
                )
            return
        gate = context.get(flow)
        gate.streamed = should_stream(flow.request, self.stream_threshold)
        flow.request.stream = gate.streamed
