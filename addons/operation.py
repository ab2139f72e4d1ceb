"""Operation: what the request does, from botocore's service models.

Service and region come from the SigV4 credential scope (or the host for an
unsigned request); the operation, its parameters and its resource ARNs from
the protocol and the operation's input shape. A request that matches no
operation is ``service:unknown``, which only an explicit policy can allow.
"""

from __future__ import annotations

from mitmproxy import http

from addons.aws import operations
from addons.context import GateContext
from addons.hooks import RequestStage, split_path


def raw_request(flow: http.HTTPFlow, streamed: bool) -> operations.RawRequest:
    request = flow.request
    path, query = split_path(request)
    return operations.RawRequest(
        method=request.method,
        host=request.host,
        path=path,
        query=query,
        headers=request.headers,
        body=None if streamed else request.raw_content,
    )


class OperationResolver(RequestStage):
    async def handle(self, flow: http.HTTPFlow, gate: GateContext) -> None:
        service, region = gate.credential_scope or (None, None)
        gate.operation = operations.resolve(raw_request(flow, gate.streamed), service, region)
