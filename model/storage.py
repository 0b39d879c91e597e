"""Local paths and object-storage URIs (s3://, gs://, https://, ...) as one kind of input.

`fetch()` returns a local path for either: a local path as is, a URI downloaded with
`kserve_storage.Storage.download` (the same code the KServe storage initializer runs, so a URI that
works here works for serving too).

What kserve_storage 0.21 reads for s3:// (checked in its source, `_get_s3_client_kwargs` and
`get_S3_config`):

- `AWS_ENDPOINT_URL`: the endpoint as a full URL, e.g. `http://minio.kubeflow:9000`; the scheme
  decides http vs https. `S3_ENDPOINT` and `S3_USE_HTTPS` are NOT read in-process (KServe's
  controller derives AWS_ENDPOINT_URL from them when it builds the pod; set them too for that, but
  they have no effect here).
- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`: through boto3's normal chain.
  With none set, boto3 falls back to its other providers (profile, instance metadata).
- `S3_VERIFY_SSL`: "0"/"false" turns TLS verification off; otherwise `AWS_CA_BUNDLE` (or the
  `CA_BUNDLE_CONFIGMAP_NAME`/`CA_BUNDLE_VOLUME_MOUNT_POINT` pair) may name a CA file.
- `S3_MAX_ATTEMPTS` (default 3), `S3_CONNECT_TIMEOUT` (15 s), `S3_READ_TIMEOUT` (30 s): passed as
  an explicit botocore Config, so they win over `AWS_MAX_ATTEMPTS`.
- `awsAnonymousCredential=true`, `S3_USER_VIRTUAL_BUCKET=true`, `S3_USE_ACCELERATE=true`;
  `STORAGE_CONFIG` / `STORAGE_OVERRIDE_CONFIG` (JSON, type "s3") overwrite the AWS_* variables.
- `S3_MAX_FILE_CONCURRENCY` (4): objects are downloaded by a multiprocessing pool.

Download semantics (kserve's, for s3://bucket/key): every non-empty object whose key starts with
`key` is fetched, relative to `key`; if an object is exactly `key`, only that one. Prefix matching
is plain string matching, so `s3://b/models/m1` also takes `models/m10/...`: end directory URIs
with "/". A single .tar/.tar.gz/.zip object is unpacked (and the archive removed).

Credentials are resolved by boto3's *default session*, which caches them on first use: kserve
lists the bucket with it in this process, while its download workers (a multiprocessing pool)
build fresh sessions. Each fetch therefore starts a new default session, so that both read the
AWS_* variables as they are now (one process may fetch from two stores in turn).

The file helpers that model/ and sign2text/ share live here too, each once: `hash_file`,
`write_atomic`, `replace_dir`, and `redact_secrets` / `display_uri` for messages and logs
(model/ must not import sign2text/, and this module costs no heavy import).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = [
    "StorageError",
    "display_uri",
    "fetch",
    "hash_file",
    "is_uri",
    "redact_secrets",
    "replace_dir",
    "write_atomic",
]

# scheme://... with a scheme of 2+ characters, so a Windows drive ("C:\\x") is never a URI.
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# Environment variables whose values must never appear in an error message.
_SECRET_ENV_RE = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|ACCOUNT_KEY|CREDENTIAL)", re.I)


class StorageError(ValueError):
    """A URI that could not be fetched; the message names the URI and why, never a credential."""


def is_uri(s: str | os.PathLike) -> bool:
    """True for `scheme://...` strings (s3://, gs://, https://, file://, hf://, ...).

    Path objects are never URIs (pathlib collapses "s3://b" to "s3:/b").
    """
    return isinstance(s, str) and bool(_URI_RE.match(s))


def fetch(uri_or_path: str | os.PathLike, dest_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for a local path or a storage URI.

    - A local path (or file:// URI) is returned as is; FileNotFoundError if it does not exist.
    - A URI is downloaded into `dest_dir` (created; must be empty) or a new temp dir, which the
      caller owns. A URI naming a single object gives that file; a prefix (or a URI ending in
      "/", or an unpacked archive) gives the directory.

    Raises StorageError when the download fails (bad credentials, missing object or bucket,
    unreachable endpoint, ...).
    """
    if not is_uri(uri_or_path):
        path = Path(uri_or_path)
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        return path
    uri = str(uri_or_path)
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        path = Path(unquote(parts.path))
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path} (from {uri})")
        return path

    if dest_dir is None:
        out = Path(tempfile.mkdtemp(prefix="sign2text-fetch-"))
        owned = True
    else:
        out = Path(dest_dir)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ValueError(f"dest_dir must be empty: {out}")
        owned = False

    try:
        import boto3
        from kserve_storage import Storage

        boto3.setup_default_session()  # credentials as the environment has them now
        result = Path(Storage.download(uri, str(out)))
    except Exception as e:  # kserve raises RuntimeError, botocore/requests raise their own
        if owned:
            shutil.rmtree(out, ignore_errors=True)
        shown = display_uri(uri)
        reason = _reason(e).replace(uri, shown)
        raise StorageError(f"cannot fetch {shown}: {reason}") from e
    return _resolve(uri, result)


def _resolve(uri: str, result: Path) -> Path:
    """The downloaded file for a single-object URI, else the download directory."""
    path = urlsplit(uri).path
    if path.endswith("/") or not result.is_dir():
        return result
    name = path.rsplit("/", 1)[-1]  # kserve names files by the raw (still %-quoted) key
    entries = list(result.iterdir())
    if name and len(entries) == 1 and entries[0].name == name and entries[0].is_file():
        return entries[0]
    return result


def display_uri(uri: str) -> str:
    """The URI without user info or query string (presigned URLs carry signatures there).

    Without a network location (a local path) it is returned as is: a "?" or "#" in a file
    name is no secret."""
    p = urlsplit(uri)
    if not p.netloc:
        return uri
    netloc = p.netloc.rsplit("@", 1)[-1]
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _reason(e: BaseException) -> str:
    parts = []
    for exc in (e, e.__cause__):
        if exc is None:
            continue
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if first not in parts:
            parts.append(first)
    return redact_secrets("; ".join(parts))


def redact_secrets(text: str) -> str:
    """`text` with the value of every secret-named environment variable replaced by ***."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_ENV_RE.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def hash_file(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes; read in chunks, as weights and shards run to gigabytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished directory `new` to `dest` (a sibling), replacing whatever is there.

    A reader sees the old tree or the new one, never a mix: a directory cannot be renamed over
    a non-empty one, so the old one is renamed aside first and deleted after."""
    new, dest = Path(new), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(dest)


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, durable: bool = False
) -> None:
    """Write `data` (bytes, or a function that writes to the open file) to `path` via a temp
    file beside it and os.replace, so a reader sees the old file or the new one, never half.
    Never through a symlink: the temp file is created exclusively, and os.replace swaps a link
    at `path` itself instead of its target.

    `durable` fsyncs before the rename: for a file a crash must not lose, not for one that is
    rebuilt from such a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed write, or a planted link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
