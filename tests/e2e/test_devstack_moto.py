"""moto's signature check with ``addons.devstack_moto``: valid bodiless calls pass, bad ones fail.

Straight to the session's moto (auth on), signed by botocore itself: this is the
upstream every other end-to-end test relies on to refuse a wrong re-signature.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e import harness

pytestmark = pytest.mark.e2e

WRONG_SECRET = "W" * 40


@pytest.fixture(scope="module")
def function_name(moto: harness.Moto) -> str:
    """A Lambda function with an alias, created through moto with the gateway's key."""
    name = f"fn-{uuid.uuid4().hex[:10]}"
    role = moto.client("iam").create_role(
        RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    lam = moto.client("lambda")
    lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="handler.handle",
        Code={"ZipFile": code.getvalue()},
    )
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="$LATEST")
    return name


def test_lambda_gets_signed_by_botocore_are_accepted(
    moto: harness.Moto, function_name: str
) -> None:
    lam = moto.client("lambda")
    assert function_name in [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert lam.list_functions(MaxItems=50)["Functions"]
    assert lam.get_function(FunctionName=function_name)["Configuration"]["Handler"] == (
        "handler.handle"
    )
    assert [a["Name"] for a in lam.list_aliases(FunctionName=function_name)["Aliases"]] == ["live"]
    assert lam.list_versions_by_function(FunctionName=function_name)["Versions"]


def test_other_services_are_still_accepted(moto: harness.Moto) -> None:
    """Form posts (the fallback the fix keeps), JSON posts and S3 reads."""
    assert moto.client("iam").list_users()["Users"]
    assert "TableNames" in moto.client("dynamodb").list_tables()
    assert "Buckets" in moto.client("s3").list_buckets()


@pytest.mark.parametrize(
    "call",
    [
        lambda lam, name: lam.list_functions(),
        lambda lam, name: lam.get_function(FunctionName=name),
        lambda lam, name: lam.list_aliases(FunctionName=name),
    ],
    ids=["list_functions", "get_function", "list_aliases"],
)
def test_lambda_gets_with_a_wrong_secret_are_refused(
    moto: harness.Moto, function_name: str, call: Callable[[Any, str], Any]
) -> None:
    lam = moto.client("lambda", secret_key=WRONG_SECRET)
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        call(lam, function_name)


def _tampering(change: Callable[[Any], None]) -> Any:
    """A before-send hook: alter the request after botocore signed it."""

    def hook(request: Any, **_: Any) -> None:
        change(request)

    return hook


def _set_url(request: Any) -> None:
    request.url = request.url.replace("MaxItems=5", "MaxItems=6")


def _add_body(request: Any) -> None:
    request.body = b"smuggled"
    request.headers["Content-Length"] = str(len(request.body))


@pytest.mark.parametrize("change", [_set_url, _add_body], ids=["query", "body"])
def test_lambda_gets_changed_after_signing_are_refused(
    moto: harness.Moto, change: Callable[[Any], None]
) -> None:
    """The right key, but the query or the (empty) body no longer matches the signature."""
    lam = moto.client("lambda")
    lam.meta.events.register("before-send.lambda.ListFunctions", _tampering(change))
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        lam.list_functions(MaxItems=5)
