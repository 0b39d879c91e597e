"""S3 URIs and S3 errors as every step meets them: one parse of `s3://bucket/prefix/`, one clear
line for a failed call (the URI, what was being done, the server's reason, never a credential).

The client itself is model/storage.py's `s3_client`, the one builder of the serving and
components images (its environment: docs/object-storage.md).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from model.files import display_uri, redact_secrets


class ObjStoreError(ValueError):
    """An object-store operation that failed; says which URI and why, never a credential."""


def is_s3(uri: str) -> bool:
    return isinstance(uri, str) and uri.lower().startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b/"): a folder prefix, never the bucket root."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise ObjStoreError(f"not an s3://bucket/prefix/ URI: {display_uri(uri)}")
    prefix = parts.path.strip("/")
    if not prefix:
        raise ObjStoreError(f"{display_uri(uri)}: give a prefix under the bucket, not its root")
    if any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ObjStoreError(f"{display_uri(uri)}: empty, '.' or '..' path segments")
    return parts.netloc, prefix + "/"


def error_code(e: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else).

    HEAD requests carry no body, so their errors only have the HTTP status: named here."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return ""
    code = str(e.response.get("Error", {}).get("Code", ""))
    return {"403": "AccessDenied", "404": "NotFound"}.get(code, code)


def failure(uri: str, what: str, e: BaseException) -> ObjStoreError:
    """One clear line for a failed call: the URI, what was being done, the server's reason."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(e, ObjStoreError):
        return e
    if isinstance(e, ClientError):
        code = error_code(e)
        message = e.response.get("Error", {}).get("Message") or ""
        reason = f"{code}: {message}" if message else code
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            reason += " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    else:
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0] if text else ''}"
        if (
            isinstance(e, (BotoConnectionError, HTTPClientError))
            or "Connection" in reason
            or "timed out" in reason
        ):
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
            reason = f"cannot reach {display_uri(endpoint)} ({reason})"
    return ObjStoreError(redact_secrets(f"{display_uri(uri)}: {what} failed: {reason}"))
