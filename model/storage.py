"""Local paths and object-storage URIs (s3://, gs://, https://, ...) as one kind of input.

`fetch()` returns a local path for either: a local path as is, an s3:// URI downloaded by this
module's own boto3 code (`_fetch_s3`), any other URI with `kserve_storage.Storage.download` (the
code the KServe storage initializer runs). The s3:// download keeps kserve_storage 0.21's
semantics and environment, listed below, but never writes outside the target folder: kserve joins
each object key onto the folder unchecked, and AWS S3 stores keys such as `../x` (MinIO and
SeaweedFS refuse them).

What s3:// reads: the environment docs/object-storage.md explains (the one place that does),
through kserve_storage's own settings (model/kserve_compat.py).

Download semantics (kserve's, for s3://bucket/key): every non-empty object whose key starts with
`key` is fetched, relative to `key`; if an object is exactly `key`, only that one. Prefix matching
is plain string matching, so `s3://b/models/m1` also takes `models/m10/...`: end directory URIs
with "/". Keys ending in "/" (directory markers) and empty objects are skipped, as kserve does.
A single .tar/.tar.gz/.tgz/.zip object is unpacked (and the archive removed).

Where this is stricter than kserve: every key to be written is checked before anything is
written, and the whole fetch is refused (StorageError naming the key) if its path relative to
`key` is absolute, has a "..", "." or empty segment (`a//b`: POSIX would merge it with `a/b`, so
one object would silently replace another), or resolves outside the target folder. One "/"
right after a key that does not end in "/" is the separator (`models/m1` + `/x` gives `x`); a
second makes the path absolute. Archive members must not be absolute, hold "..", or resolve
outside the target either, and tar members pass tarfile's "data" filter (no links out, no
devices). On any failure the target folder is left empty (or removed, when fetch made it).

Each s3:// fetch builds a new boto3 session, so it reads the AWS_* variables as they are now (one
process may fetch from two stores in turn). `s3_client` is that client, and every S3 client of
the serving and components images is built by it: one set of settings and timeouts
(docs/object-storage.md).
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from model import kserve_compat
from model.files import display_uri, redact_secrets

__all__ = ["StorageError", "fetch", "is_uri", "s3_client"]

# scheme://... with a scheme of 2+ characters, so a Windows drive ("C:\\x") is never a URI.
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


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
    unreachable endpoint, ...) or an s3:// object key or archive member would be written outside
    the target (see the module docstring); the target is then left empty, or removed if fetch
    made it.
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
        if parts.scheme.lower() == "s3":
            return _fetch_s3(uri, out)
        return _resolve(uri, Path(kserve_compat.download(uri, str(out))))
    except Exception as e:  # kserve raises RuntimeError, botocore/requests raise their own
        _discard(out, owned)
        shown = display_uri(uri)
        reason = _reason(e).replace(uri, shown)
        raise StorageError(f"cannot fetch {shown}: {reason}") from e


def _discard(out: Path, owned: bool) -> None:
    """Undo a failed download. fetch made `out`, or found it empty, so all that is in it is ours:
    the caller gets back an empty folder, never half a model."""
    if owned:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _fetch_s3(uri: str, out: Path) -> Path:
    """Download s3://bucket/key into `out` as the module docstring says: the file when the URI
    names one object (not an archive), else `out`. Nothing is written before every key is
    checked."""
    kserve_compat.apply_storage_spec()  # STORAGE_CONFIG may set AWS_* before the client reads them
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise StorageError("no bucket name in the URI")
    client = s3_client()
    plan, exact = _plan(
        _list_objects(client, bucket, key), key, out, kserve_compat.download_filter()
    )
    if not plan:
        raise StorageError(f"no object found under key {key!r}")
    _download(client, bucket, plan)
    first = plan[0][1]
    if len(plan) == 1 and mimetypes.guess_type(first.name)[0] in _ARCHIVE_TYPES:
        _unpack(first, out)
        return out
    return first if exact else out


def s3_client(user_agent: str | None = None):
    """A boto3 S3 client configured as kserve's storage initializer configures its own (see the
    docstring), but for S3_MAX_ATTEMPTS, which counts the first try here (kserve counts retries):
    the one S3 client builder of the serving and components images. app/s3_client.py builds the
    same client for the app image (tests/test_s3_clients.py holds the two to one configuration).

    A new session each time, not boto3's default one: that caches the credentials it first
    found, and one process may fetch from two stores in turn. user_agent: a tag appended to
    the User-Agent (e.g. which training rank reads), which S3 access logs show."""
    import boto3
    from botocore.config import Config

    kwargs = s3_client_kwargs()
    if user_agent:
        kwargs["config"] = kwargs["config"].merge(Config(user_agent_extra=user_agent))
    return boto3.session.Session().client("s3", **kwargs)


def s3_client_kwargs() -> dict:
    """`s3_client`'s keyword arguments (endpoint, TLS verification, a botocore Config with the
    timeouts and S3_MAX_ATTEMPTS): the DVC-remote reader (components/data/version.py) gives
    DVC's S3 filesystem the same settings."""
    from botocore.config import Config

    kwargs = kserve_compat.s3_client_kwargs()
    attempts = max(1, int(os.environ.get("S3_MAX_ATTEMPTS", "3")))
    retries = Config(retries={"total_max_attempts": attempts, "mode": "standard"})
    kwargs["config"] = kwargs["config"].merge(retries)
    return kwargs


def _list_objects(client, bucket: str, key: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object whose key starts with `key`, in S3's (sorted) order."""
    from botocore.exceptions import BotoCoreError, ClientError

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    try:
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["Size"]
    except (BotoCoreError, ClientError) as e:
        # kserve's wording, which names the bucket and says "not found", "access denied", ...
        raise StorageError(kserve_compat.storage_error_message(bucket, e)) from e


def _plan(
    objects: Iterable[tuple[str, int]], key: str, out: Path, wanted: Callable[[str], bool]
) -> tuple[list[tuple[str, Path]], bool]:
    """(object key, local path) for each object to download, and whether the URI named one
    object exactly. Raises StorageError for the first key whose path is unsafe."""
    plan = []
    for obj_key, size in objects:
        if obj_key.endswith("/") or size == 0:
            continue  # directory markers and empty objects write nothing; kserve skips them too
        if obj_key == key:
            # A key sorts before every key it is a prefix of, so nothing was planned before it.
            return [(obj_key, _object_path(out, obj_key, obj_key.rsplit("/", 1)[-1]))], True
        rel = _relative(obj_key, key)
        if wanted(rel):
            plan.append((obj_key, _object_path(out, obj_key, rel)))
    return plan, False


def _relative(obj_key: str, key: str) -> str:
    """`obj_key`'s path relative to the URI's `key`."""
    rel = obj_key[len(key) :]
    if key and not key.endswith("/") and rel.startswith("/"):
        rel = rel[1:]  # the separator after a key like "models/m1"; a second "/" is kept
    return rel


def _object_path(out: Path, obj_key: str, rel: str) -> Path:
    why = _unsafe(out, rel, strict=True)
    if why:
        raise StorageError(f"refusing object key {obj_key!r}: its path {rel!r} {why}")
    return out / rel


def _unsafe(out: Path, rel: str, *, strict: bool) -> str | None:
    """Why `rel` may not be written under `out`, or None when it may.

    `strict` (object keys) also refuses "." and empty segments: the file system folds "a/./b"
    and "a//b" into "a/b", so two objects would land on one file. Archive members are not
    strict, as tar names often start with "./"."""
    if "\0" in rel:
        return "holds a NUL byte"
    if rel.startswith("/"):
        return "is absolute"
    segments = rel.split("/")
    if ".." in segments:
        return 'has a ".." segment'
    if strict and ("." in segments or "" in segments):
        return 'has a "." or empty segment'
    root = out.resolve()
    if not (out / rel).resolve().is_relative_to(root):
        return f"resolves outside {out}"  # through a link: the checks above only see the text
    return None


def _download(client, bucket: str, plan: list[tuple[str, Path]]) -> None:
    for _, path in plan:
        path.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(int(os.environ.get("S3_MAX_FILE_CONCURRENCY", "4")), len(plan)))
    with ThreadPoolExecutor(workers) as pool:  # a boto3 client may be shared by threads
        list(pool.map(lambda item: _download_one(client, bucket, *item), plan))


def _download_one(client, bucket: str, key: str, path: Path) -> None:
    try:
        client.download_file(bucket, key, str(path))
    except Exception as e:
        raise StorageError(f"cannot download object {key!r}") from e


_ARCHIVE_TYPES = ("application/x-tar", "application/zip")


def _unpack(archive: Path, out: Path) -> None:
    """Unpack `archive`, downloaded into `out`, into `out` and remove it."""
    with open(archive, "rb") as f:
        archive.unlink()  # so a member of the same name makes a new file instead of truncating f
        try:
            if mimetypes.guess_type(archive.name)[0] == "application/zip":
                with zipfile.ZipFile(f) as z:
                    _check_members(z.namelist(), out, archive.name)
                    z.extractall(out)  # noqa: S202 (every name checked just above)
            else:
                with tarfile.open(fileobj=f) as tar:
                    _check_members(tar.getnames(), out, archive.name)
                    tar.extractall(out, filter="data")  # also refuses links out of `out`, devices
        except (tarfile.TarError, zipfile.BadZipFile) as e:
            raise StorageError(f"cannot unpack {archive.name!r}") from e


def _check_members(names: list[str], out: Path, archive_name: str) -> None:
    """Every member name checked before the first is written."""
    for name in names:
        why = _unsafe(out, name, strict=False)
        if why:
            raise StorageError(f"refusing member {name!r} of {archive_name!r}: it {why}")


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
