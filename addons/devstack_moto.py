"""moto's server with one signature-checking fix (development only; never loaded by the gateway).

With IAM checking on, moto 5.2.5 rebuilds the request it verifies in
``IAMRequestBase._create_aws_request`` with ``data=self._body or self._data``.
The fallback to ``_data`` exists for form posts (query protocol), whose body
werkzeug has already parsed away. But ``_data`` is moto's parameter dict, which
for a request with an empty body is its query string, or, when that is empty
too, its headers; botocore then form-encodes that dict as the payload. So every
bodiless request without ``x-amz-content-sha256`` (Lambda's GETs and DELETEs,
and other rest-json reads) is verified against the hash of a body nobody sent,
and moto refuses botocore's own, valid signature.

The fix keeps the fallback for form posts only; any other request is verified
with the body that arrived, which AWS hashes too (empty: ``e3b0c442...``). The
signature is still compared in full, so a wrong key or a changed request is
still refused.

Run it as moto's server: ``python -m addons.devstack_moto -H 127.0.0.1 -p PORT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.awsrequest import AWSRequest
from moto.iam.access_control import IAMRequestBase
from moto.server import main as moto_server

# The content types werkzeug parses into a form, leaving the raw body empty.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_original_create_aws_request = IAMRequestBase._create_aws_request


def is_form_post(headers: Mapping[str, str]) -> bool:
    """Whether werkzeug parsed this request's body into a form (so moto holds no raw body)."""
    content_type = next(
        (value for name, value in headers.items() if name.lower() == "content-type"), ""
    )
    return content_type.split(";", 1)[0].strip().lower() in _FORM_TYPES


def _create_aws_request(self: Any) -> AWSRequest:
    request = _original_create_aws_request(self)
    if not self._body and not is_form_post(self._headers):
        request.data = b""
    return request


def apply() -> None:
    """Install the fix into moto in this process (idempotent)."""
    IAMRequestBase._create_aws_request = _create_aws_request  # type: ignore[method-assign]


if __name__ == "__main__":
    apply()
    moto_server()
