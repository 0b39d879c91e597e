"""Publishing folders (model packages, shards) to `s3://bucket/prefix/` atomically; fetching them.

A published folder is a prefix plus a manifest object, `_published.json` (file list, sizes,
sha256), and the manifest is the last thing written: a prefix without it is an upload in
progress or a failed one, and `fetch_dir` / `is_published` treat it as absent. Serving
(`model/storage.py`, kserve_storage) downloads the final prefix as is, so a deploy points an
InferenceService at a prefix only once `is_published` says so.

How `publish_dir` gets there:
1. every file goes to a temporary prefix `.sign2text-tmp/<prefix><token>/` and is read back
   and compared with the local sha256;
2. objects are copied server-side to the final prefix and checked again (size + ETag equal to
   the verified temporary object, or a read-back where the server's ETags differ);
3. the manifest is written; the temporary prefix is removed whatever happened.
A process killed half-way leaves objects but never a manifest; the next publish to the same
URI removes what it left. One writer per URI at a time.

Endpoint and keys come from the environment (docs/object-storage.md), through model/storage.py's
`s3_client`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from components.infra.s3_access import ObjStoreError, error_code, failure, is_s3, split_uri
from model.files import display_uri, hash_file, replace_dir
from model.storage import s3_client

MANIFEST = "_published.json"
FORMAT = "sign2text-published/1"
TMP_ROOT = ".sign2text-tmp/"
_CHUNK = 1 << 20
_PART_SIZE = 64 << 20  # multipart above this; memory per upload stays at one part
_COPY_MAX = 5 << 30  # the most one CopyObject request copies
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


class NotPublishedError(ObjStoreError):
    """The prefix has no manifest: nothing was published there, or the upload did not finish."""


class AlreadyPublishedError(ObjStoreError):
    """Another package is already published at this URI."""


def _client():
    if not os.environ.get("AWS_ACCESS_KEY_ID") or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise ObjStoreError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the object store")
    return s3_client()


def local_manifest(local_dir: Path) -> dict:
    """The manifest `publish_dir` would write for `local_dir` (without uri/created)."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"no such directory: {local_dir}")
    files = []
    for p in sorted(local_dir.rglob("*")):
        rel = p.relative_to(local_dir).as_posix()
        if p.is_symlink():
            raise ObjStoreError(f"{local_dir}: refusing to publish symlink {rel}")
        if p.is_file():
            if rel == MANIFEST:
                raise ObjStoreError(f"{local_dir}: {MANIFEST} is a reserved name")
            files.append({"path": rel, "size": p.stat().st_size, "sha256": hash_file(p)})
    if not files:
        raise ObjStoreError(f"{local_dir}: nothing to publish (no files)")
    return {"format": FORMAT, "files": files, "bytes": sum(f["size"] for f in files)}


def _same_files(a: dict, b: dict) -> bool:
    key = [(f["path"], f["size"], f["sha256"]) for f in a.get("files", [])]
    return key == [(f["path"], f["size"], f["sha256"]) for f in b.get("files", [])]


def _read_object(client, bucket: str, key: str) -> bytes:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return body.read()
    finally:
        body.close()


def _read_if_exists(client, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when there is no such key."""
    try:
        return _read_object(client, bucket, key)
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "NotFound"):
            return None
        raise


def _object_sha256(client, bucket: str, key: str) -> tuple[str, int]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    h, n = hashlib.sha256(), 0
    try:
        for block in body.iter_chunks(_CHUNK):
            h.update(block)
            n += len(block)
    finally:
        body.close()
    return h.hexdigest(), n


def _bucket_exists(client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as e:
        if error_code(e) in ("NoSuchBucket", "NotFound"):
            return False
        raise


def _list_keys(client, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def _remove_prefix(client, bucket: str, prefix: str, keep: Iterable[str] = ()) -> int:
    """Delete every object under `prefix` except the keys in `keep`; returns how many."""
    keep = set(keep)
    doomed = [k for k in _list_keys(client, bucket, prefix) if k not in keep]
    for i in range(0, len(doomed), _DELETE_BATCH):
        batch = [{"Key": k} for k in doomed[i : i + _DELETE_BATCH]]
        resp = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if resp.get("Errors"):
            err = resp["Errors"][0]
            raise ObjStoreError(
                f"s3://{bucket}/{prefix}: could not delete {err.get('Key')} ({err.get('Code')})"
            )
    return len(doomed)


def read_published(uri: str) -> dict:
    """The manifest of a published prefix; NotPublishedError if there is none."""
    bucket, prefix = split_uri(uri)
    try:
        body = _read_if_exists(_client(), bucket, prefix + MANIFEST)
        if body is None:
            raise NotPublishedError(
                f"{display_uri(uri)} is not a published package: no {MANIFEST} there "
                "(nothing was published, or the upload did not finish)"
            )
        manifest = json.loads(body)
    except json.JSONDecodeError as e:
        raise ObjStoreError(f"{display_uri(uri)}: {MANIFEST} is not valid JSON ({e})") from e
    except Exception as e:
        raise failure(uri, "reading the manifest", e) from e
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise ObjStoreError(f"{display_uri(uri)}: {MANIFEST} has format {manifest.get('format')!r}")
    return manifest


def is_published(uri: str) -> bool:
    """True when `uri` holds a complete published folder (its manifest exists)."""
    try:
        read_published(uri)
    except NotPublishedError:
        return False
    return True


def _place(client, bucket: str, tmp_key: str, final_key: str, entry: dict) -> None:
    """Server-side copy of one verified temporary object to its final key, checked there."""
    source = {"Bucket": bucket, "Key": tmp_key}
    if entry["size"] <= _COPY_MAX:
        client.copy_object(Bucket=bucket, Key=final_key, CopySource=source)
    else:  # one CopyObject takes up to 5 GiB; beyond, a multipart copy (still server-side)
        client.copy(source, bucket, final_key, Config=_transfer())
    src = client.head_object(Bucket=bucket, Key=tmp_key)
    dst = client.head_object(Bucket=bucket, Key=final_key)
    if dst["ContentLength"] == entry["size"] and dst["ETag"] == src["ETag"]:
        return
    digest, size = _object_sha256(client, bucket, final_key)  # ETags differ (e.g. multipart)
    if (digest, size) != (entry["sha256"], entry["size"]):
        raise ObjStoreError(f"s3://{bucket}/{final_key}: copy does not match the upload")


def _transfer():
    """Multipart above _PART_SIZE, one part at a time: memory per transfer stays at one part."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=_PART_SIZE, multipart_chunksize=_PART_SIZE, use_threads=False
    )


def _upload(client, bucket: str, key: str, path: Path, entry: dict) -> None:
    """Upload one file and read it back: the stored bytes must hash to the local sha256."""
    client.upload_file(
        str(path),
        bucket,
        key,
        Config=_transfer(),
        ExtraArgs={"Metadata": {"sha256": entry["sha256"]}},
    )
    digest, size = _object_sha256(client, bucket, key)
    if (digest, size) != (entry["sha256"], entry["size"]):
        raise ObjStoreError(
            f"s3://{bucket}/{key}: read-back sha256 {digest[:12]}... ({size} B) differs from "
            f"{path} ({entry['sha256'][:12]}..., {entry['size']} B)"
        )


def publish_dir(local_dir: Path, uri: str, *, overwrite: bool = False) -> dict:
    """Publish every file under `local_dir` at `uri` (s3://bucket/prefix/); returns the manifest.

    Re-publishing identical content is a no-op that returns the existing manifest; different
    content at a published URI raises AlreadyPublishedError unless `overwrite`.
    """
    local_dir = Path(local_dir)
    bucket, prefix = split_uri(uri)
    manifest = local_manifest(local_dir)
    shown = display_uri(f"s3://{bucket}/{prefix}")
    client = _client()
    tmp = f"{TMP_ROOT}{prefix}{secrets.token_hex(8)}/"
    placing = False
    try:
        if not _bucket_exists(client, bucket):
            raise ObjStoreError(f"{shown}: bucket {bucket!r} does not exist")
        old_body = _read_if_exists(client, bucket, prefix + MANIFEST)
        if old_body is not None:
            old = json.loads(old_body)
            if _same_files(old, manifest):
                return old
            if not overwrite:
                raise AlreadyPublishedError(
                    f"{shown} already holds another published package; publish under a new "
                    "version, or overwrite explicitly"
                )
            client.delete_object(Bucket=bucket, Key=prefix + MANIFEST)  # hidden while replaced
        # Leftovers of an earlier attempt at this URI that was killed before cleaning up.
        _remove_prefix(client, bucket, f"{TMP_ROOT}{prefix}")
        for entry in manifest["files"]:
            _upload(client, bucket, tmp + entry["path"], local_dir / entry["path"], entry)
        finals = {prefix + e["path"] for e in manifest["files"]}
        placing = True
        _remove_prefix(client, bucket, prefix, keep=finals)  # stale objects of older attempts
        for entry in manifest["files"]:
            _place(client, bucket, tmp + entry["path"], prefix + entry["path"], entry)
        manifest = {
            **manifest,
            "uri": f"s3://{bucket}/{prefix}",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        client.put_object(
            Bucket=bucket, Key=prefix + MANIFEST, Body=body, ContentType="application/json"
        )
        return manifest
    except Exception as e:
        if placing:  # no manifest was written: take back what was placed, too
            _try_remove(client, bucket, prefix)
        raise failure(uri, "publishing", e) from e
    finally:
        _try_remove(client, bucket, tmp)


def _try_remove(client, bucket: str, prefix: str) -> None:
    try:
        _remove_prefix(client, bucket, prefix)
    except Exception:  # noqa: S110 - best effort; the next publish to this URI removes it
        pass


def _safe_rel(rel: object, uri: str) -> PurePosixPath:
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if (
        p is None
        or not rel
        or p.is_absolute()
        or "\\" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise ObjStoreError(f"{display_uri(uri)}: unsafe path in {MANIFEST}: {rel!r}")
    return p


def fetch_dir(uri: str, local_dir: Path) -> Path:
    """Download the published folder at `uri` into `local_dir` (absent or empty); verified.

    Every file's size and sha256 must match the manifest; on any failure `local_dir` is left
    as it was (files are assembled in a sibling temp dir and renamed into place).
    """
    local_dir = Path(local_dir)
    if local_dir.exists() and (not local_dir.is_dir() or any(local_dir.iterdir())):
        raise ObjStoreError(f"{local_dir} must be an empty directory or not exist")
    manifest = read_published(uri)
    bucket, prefix = split_uri(uri)
    entries = [(_safe_rel(f.get("path"), uri), f) for f in manifest["files"]]
    if len({str(p).lower() for p, _ in entries}) != len(entries):
        raise ObjStoreError(f"{display_uri(uri)}: duplicate paths in {MANIFEST}")
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.", dir=local_dir.parent))
    try:
        client = _client()
        for rel, f in entries:
            dest = work / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                _download(client, bucket, prefix + str(rel), dest)
            except Exception as e:
                raise failure(f"s3://{bucket}/{prefix}{rel}", "download", e) from e
            size, digest = dest.stat().st_size, hash_file(dest)
            if (size, digest) != (f.get("size"), f.get("sha256")):
                raise ObjStoreError(
                    f"{display_uri(uri)}: {rel} is corrupted: {size} B sha256 {digest[:12]}..., "
                    f"manifest says {f.get('size')} B sha256 {str(f.get('sha256'))[:12]}..."
                )
        replace_dir(work, local_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return local_dir


def _download(client, bucket: str, key: str, dest: Path) -> None:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with open(dest, "wb") as f:
            for block in body.iter_chunks(_CHUNK):
                f.write(block)
    finally:
        body.close()


@contextlib.contextmanager
def local_input(src: str | os.PathLike) -> Iterator[Path]:
    """A local folder for `src`: the path itself, or an s3:// folder fetched (and verified)."""
    if not is_s3(str(src)):
        yield Path(src)
        return
    with tempfile.TemporaryDirectory(prefix="sign2text-fetch-") as d:
        yield fetch_dir(str(src), Path(d) / "in")


@contextlib.contextmanager
def local_output(dest: str | os.PathLike) -> Iterator[Path]:
    """A local folder to write `dest` into: the path itself, or a temp folder published to the
    s3:// URI when the block ends without error (nothing is published after an exception)."""
    if not is_s3(str(dest)):
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="sign2text-publish-") as d:
        yield Path(d) / "out"
        publish_dir(Path(d) / "out", str(dest))
