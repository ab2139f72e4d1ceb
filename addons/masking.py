"""Masking: secret fields hidden from the agent, and kept out of the record.

Response side: the built-in catalogue of secret-bearing AWS fields and the
policy's ``masks`` are applied to API-shaped responses; ``scope: agent``
values are replaced in the body the agent receives, ``scope: record`` values
only in the record's copy. Responses the gateway answered itself (minted
sessions) reach the agent as they are and are masked for the record only.
Request side (``RequestMasking``, before approval so that approvers and the
approvals table see the masked copy too): secrets the agent sends
(CreateSecret, PutParameter, ...) are masked in the record's copy of the body
and parameters. Pattern detectors scrub free-text secrets from everything
recorded.

The record's copies go to ``GateContext.record_*``: the recording addon
stores those, never the wire bodies. Output shapes with a streaming payload
and large responses nobody needs masked are streamed (never loaded).

What mitmproxy itself keeps and shows of the flow is ``addons.flowview``'s
concern: it swaps the record's copies in once the wire bytes have left.
"""

from __future__ import annotations

import logging
from collections.abc import Set

from mitmproxy import exceptions, http

from addons import context, settings
from addons.aws import detectors, models, redact
from addons.aws.wiredoc import WireError
from addons.config import GatewayConfig
from addons.context import GateContext, Operation
from addons.hooks import fail_closed

logger = logging.getLogger("awsgate")

DEFAULT_STREAM_THRESHOLD = 1024 * 1024


def wire_protocol(operation: Operation) -> str:
    return operation.protocol or models.protocol(operation.service)


def configured_detectors(gateway_config: GatewayConfig) -> detectors.Detectors:
    try:
        return detectors.Detectors(gateway_config.mask_patterns)
    except detectors.PatternError as exc:
        raise exceptions.OptionsError(f"awsgate: {exc}") from exc


def scrubbed(found: detectors.Detectors, body: bytes | None) -> bytes | None:
    return found.scrub_bytes(body) if body else body


class RequestMasking:
    """The record's (and the held call's) masked copy of the request."""

    def __init__(self) -> None:
        self.detectors = detectors.Detectors()

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is not None:
            self.detectors = configured_detectors(gateway_config)

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None and gate.streamed:
            self._mask_request(gate, None)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        if gate is not None and not gate.streamed:
            self._mask_request(gate, flow.request.get_content(strict=False))

    def _mask_request(self, gate: GateContext, body: bytes | None) -> None:
        operation = gate.operation
        if operation is None:
            # Not resolved (refused before that): nothing says where its secrets are.
            gate.record_request_body, gate.record_params = None, {}
            return
        result = redact.mask_request(
            wire_protocol(operation),
            operation.service,
            operation.name,
            body,
            operation.params,
            redact.builtin_rules(operation.action, "request") if operation.known else [],
        )
        gate.record_request_body = scrubbed(self.detectors, result.record_body)
        gate.record_params = self.detectors.scrub_value(result.record_params)
        gate.masked.extend(str(item) for item in result.masked)


class Masking:
    """The agent's and the record's copies of the response."""

    def __init__(self) -> None:
        self.detectors = detectors.Detectors()
        self.stream_threshold = DEFAULT_STREAM_THRESHOLD

    def configure(self, updated: Set[str]) -> None:
        gateway_config = settings.reloaded(updated)
        if gateway_config is None:
            return
        self.detectors = configured_detectors(gateway_config)
        self.stream_threshold = gateway_config.stream_threshold

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        response = flow.response
        if gate is None or response is None or not gate.forwarded:
            return  # answered by the gateway: already in memory
        response.stream = self._should_stream(gate, response)

    def _should_stream(self, gate: GateContext, response: http.Response) -> bool:
        """Stream streaming payloads and large bodies nobody needs masked; buffer the rest."""
        operation = gate.operation
        success = 200 <= response.status_code < 300
        if (
            success
            and operation is not None
            and operation.known
            and redact.streams_output(operation.service, operation.name)
        ):
            return True
        if success and self._rules(gate):
            return False  # API-shaped and carrying secrets: always masked
        length = response.headers.get("content-length", "")
        return length.isdigit() and int(length) > self.stream_threshold

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        gate = context.find(flow)
        response = flow.response
        if gate is None or response is None:
            return
        if response.stream:
            gate.record_response_body = None
            return
        body = response.get_content(strict=False) or b""
        masking = self._mask_response(gate, response, body)
        if masking.agent_body is not None:
            response.content = masking.agent_body
        for name, value in masking.header_updates.items():
            if value is None:
                response.headers.pop(name, None)
            else:
                response.headers[name] = value
        gate.record_response_body = scrubbed(self.detectors, masking.record_body)
        gate.masked.extend(str(item) for item in masking.masked)

    def _mask_response(
        self, gate: GateContext, response: http.Response, body: bytes
    ) -> redact.ResponseMasking:
        operation = gate.operation
        rules = self._rules(gate)
        if operation is None or not rules:
            return redact.ResponseMasking(None, {}, body)
        try:
            return redact.mask_response(
                wire_protocol(operation),
                operation.service,
                operation.name,
                response.status_code,
                response.headers,
                body,
                rules,
            )
        except WireError:
            if any(rule.scope == "agent" for rule in rules):
                raise  # fail closed: the agent gets an error, not the unmasked body
            logger.warning("awsgate: %s response did not parse; not recorded", operation.action)
            return redact.ResponseMasking(None, {}, None)

    def _rules(self, gate: GateContext) -> list[redact.FieldRule]:
        operation = gate.operation
        if operation is None or not operation.known:
            return []
        if not gate.forwarded:
            # Minted by the gateway for this agent: it needs them; the record must not keep them.
            return redact.builtin_rules(operation.action, "response", scope="record")
        rules = redact.builtin_rules(operation.action, "response")
        for mask in gate.masks:
            rules.extend(redact.FieldRule(path, mask.name, mask.scope) for path in mask.fields)
        return rules
