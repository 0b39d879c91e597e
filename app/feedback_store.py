"""Feedback store: a video and what a person said about its prediction, kept under one prefix.

Layout under `uri` (`s3://BUCKET/PREFIX`, or a local folder with the same layout, for laptops):

    videos/<id><ext>     the uploaded bytes as they came (.mp4 .webm .mov .avi .mkv, else .bin)
    records/<id>.json    the caller's record + `id`, `video` (the key above), `stored_at` (UTC)

The record is written after its video, so a record's presence means its video is there; a crash
in between leaves an orphan video, never a record without one (`sign2text data ingest` reads
records only). Ids are made here (UTC second + 48 random bits), never taken from the client.

When the store fails (down, refusing, no bucket, disk full) the submission goes to the spool,
`spool_dir/<id>/{video<ext>, record.json}`: written into a temp folder, fsynced and renamed
before `submit` answers "queued", so what was acknowledged survives a crash or a restart.
`flush()` sends the spool, oldest first, stopping at the first failure; the app calls it
periodically (the retry loop is the caller's). Sending is idempotent (same id, same keys), so an
entry sent but not yet removed when the process died is just sent again.

After a failure, `submit` spools straight away for `RETRY_AFTER_S` (or until a flush gets
through) instead of trying the store: during an outage a request must not wait out the
connect timeout every time.

The spool is bounded: past `max_spool_bytes` (1 GiB by default) on disk, `submit` raises
`SpoolFull` (a ValueError) rather than answer "queued" for something it cannot keep; nothing is
acknowledged then, and the app should answer 503. A spool entry that cannot be read back is
moved to `spool_dir/.broken/` (kept, logged, no longer pending) so it cannot block the queue.

`shared_key(name)` is a random key kept in the store itself, created once whoever asks first:
the app's replicas share their token key so (app/tokens.py). Locally a file written in full
under a temporary name (O_EXCL, mode 0600) and hard-linked into place, which fails if the key is
there already; on S3 an object put with If-None-Match: * (a store that does not support it gets
a plain put, and everyone uses what the store holds after it). It lives under `keys/`, which no
reader of the layout lists.

One process per spool_dir; within it, `submit`, `flush` and `pending` may run on any threads.
S3 endpoint and keys come from the environment as the rest of the project reads them
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
`S3_VERIFY_SSL`, `S3_CONNECT_TIMEOUT`, `S3_READ_TIMEOUT`, `S3_MAX_ATTEMPTS`); the client is built
here, not borrowed from sign2text, because the app image ships app/ alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from app.s3_client import s3_client

log = logging.getLogger(__name__)

ID_PATTERN = r"^\d{8}T\d{6}Z-[0-9a-f]{12}$"
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
}
OTHER_EXT = ".bin"
VIDEOS, RECORDS, KEYS = "videos/", "records/", "keys/"
RESERVED = ("id", "video", "stored_at")
MAX_SPOOL_BYTES = 1 << 30
RETRY_AFTER_S = 30.0
SPOOL_RECORD = "record.json"
SPOOL_TMP = ".tmp-"
SPOOL_BROKEN = ".broken"
STALE_TMP_S = 3600.0  # a temp entry this old is a crash's leftover, never acknowledged


class SpoolFull(ValueError):
    """The store failed and the spool cannot take the submission (over its limit, or the disk
    refused): nothing was kept, nothing acknowledged."""


def new_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(6)}"


def video_ext(filename: str) -> str:
    ext = os.path.splitext(filename)[1].lower()
    return ext if ext in VIDEO_TYPES else OTHER_EXT


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one; the temp name is a dotfile, which no
    reader of the layout takes for a record or a video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_durable(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _record_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _LocalTarget:
    def __init__(self, root: Path):
        self.root = root

    def put(self, key: str, data: bytes, content_type: str) -> None:
        _write_atomic(self.root / key, data)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def create(self, key: str, data: bytes) -> None:
        """Writes `key` unless it exists: the whole file appears at once (a hard link to a
        finished temp file), so a reader never sees half a key."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # someone else's came first: theirs
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def describe(self) -> str:
        return str(self.root)


class _S3Target:
    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix
        self._client = None
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", Key=self.prefix + key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        try:
            return self._call("get_object", Key=self.prefix + key)["Body"].read()
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise

    def create(self, key: str, data: bytes) -> None:
        """Writes `key` unless it exists (If-None-Match: *; AWS S3, MinIO, SeaweedFS). A store
        that does not support the condition gets a plain put: the caller reads back what the
        store holds and uses that, so the last of two racing writers wins everywhere."""
        try:
            self._call("put_object", Key=self.prefix + key, Body=data, IfNoneMatch="*")
        except Exception as e:
            code = _code(e)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return  # there already, or another writer's put is under way: theirs
            if code not in ("NotImplemented", "501", "InvalidArgument", "400"):
                raise
            log.warning("%s: no conditional put (%s); a plain one", self.describe(), code)
            self._call("put_object", Key=self.prefix + key, Body=data)

    def _call(self, method: str, **kwargs):
        with self._lock:
            if self._client is None:
                self._client = s3_client()
            client = self._client
        try:
            return getattr(client, method)(Bucket=self.bucket, **kwargs)
        except Exception as e:
            if _code(e) not in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                # A fresh client next time re-reads the environment (rotated keys, a moved
                # endpoint).
                with self._lock:
                    if self._client is client:
                        self._client = None
            raise

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def _target(uri: str) -> _LocalTarget | _S3Target:
    if not isinstance(uri, str | os.PathLike) or not str(uri):
        raise ValueError(f"feedback store: expected s3://BUCKET/PREFIX or a folder, got {uri!r}")
    uri = str(uri)
    if "://" not in uri:
        return _LocalTarget(Path(uri))
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        raise ValueError(f"feedback store: only s3:// URIs or local folders, got {parts.scheme}://")
    prefix = parts.path.strip("/")
    if not parts.netloc or not prefix or any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ValueError("feedback store: give s3://BUCKET/PREFIX (a prefix, no '.' or '..')")
    return _S3Target(parts.netloc, prefix + "/")


def _code(e: BaseException) -> str | None:
    """botocore's ClientError: the S3 error code (or the HTTP status as a string)."""
    response = getattr(e, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _reason(e: BaseException) -> str:
    """Says what kind of failure without the endpoint's address, which the page may show."""
    return f"store unavailable ({_code(e) or type(e).__name__}); queued for retry"


class FeedbackStore:
    def __init__(
        self,
        uri: str,
        spool_dir: str | os.PathLike,
        *,
        max_spool_bytes: int = MAX_SPOOL_BYTES,
        retry_after_s: float = RETRY_AFTER_S,
    ):
        self._target = _target(uri)
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.max_spool_bytes = max_spool_bytes
        self.retry_after_s = retry_after_s
        self._spool_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._clear_stale_temps()

    def submit(self, video: bytes, filename: str, record: dict) -> dict:
        """Store `video` and `record` -> {"id", "status": "stored"}, or spool them -> {"id",
        "status": "queued", "reason"} when the store fails. ValueError for a bad argument
        (empty video, a record that is not JSON); SpoolFull when it cannot be kept at all."""
        if not isinstance(video, bytes | bytearray | memoryview) or not len(video):
            raise ValueError("video must be non-empty bytes")
        if not isinstance(filename, str):
            raise ValueError(f"filename must be a string, got {type(filename).__name__}")
        if not isinstance(record, dict):
            raise ValueError(f"record must be a dict, got {type(record).__name__}")
        fid, ext = new_id(), video_ext(filename)
        rec = {k: v for k, v in record.items() if k not in RESERVED}
        rec |= {"id": fid, "video": f"{VIDEOS}{fid}{ext}"}
        try:
            _record_bytes(rec)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record is not JSON-serialisable: {e}") from e
        video = bytes(video)
        if time.monotonic() >= self._down_until:
            try:
                self._send(rec, video)
                return {"id": fid, "status": "stored"}
            except Exception as e:
                self._failed(e)
        reason = self._down_reason
        self._spool_entry(rec, video)
        return {"id": fid, "status": "queued", "reason": reason}

    def flush(self) -> int:
        """Send the spool, oldest first; stops at the first failure. Returns how many went."""
        sent = 0
        with self._flush_lock:
            for entry in self._entries():
                try:
                    rec, video = self._read_entry(entry)
                except FileNotFoundError as e:
                    if entry.exists():  # the folder without its files: set it aside, below
                        self._set_aside(entry, e)
                    continue  # else gone: another flush sent it meanwhile
                except (OSError, ValueError) as e:
                    self._set_aside(entry, e)
                    continue
                try:
                    self._send(rec, video)
                except Exception as e:
                    self._failed(e)
                    return sent
                shutil.rmtree(entry, ignore_errors=True)
                sent += 1
            self._down_until = 0.0  # everything queued went through: the store is back
        return sent

    def pending(self) -> int:
        """Submissions waiting in the spool."""
        return len(self._entries())

    def shared_key(self, name: str, size: int = 32) -> bytes:
        """The random key `keys/<name>` kept in the store: made here if absent (once, whoever
        asks first), then read back, so every process using the store gets the same one. Raises
        what the store raises when it is down; ValueError when what it holds is not a key."""
        key = f"{KEYS}{name}"
        held = self._target.get(key)
        if held is None:
            self._target.create(key, secrets.token_bytes(size))
            for wait in (0.0, 0.2, 0.5, 1.0):  # another writer's put may still be finishing
                time.sleep(wait)
                if (held := self._target.get(key)) is not None:
                    break
        if held is None or len(held) < size:
            raise ValueError(f"the key {key} in the feedback store is missing or too short")
        return held

    def _send(self, rec: dict, video: bytes) -> None:
        ext = os.path.splitext(rec["video"])[1]
        self._target.put(rec["video"], video, VIDEO_TYPES.get(ext, "application/octet-stream"))
        body = _record_bytes(rec | {"stored_at": _now()})
        self._target.put(f"{RECORDS}{rec['id']}.json", body, "application/json")

    def _failed(self, e: BaseException) -> None:
        log.warning("feedback store %s failed: %r", self._target.describe(), e)
        self._down_reason = _reason(e)
        self._down_until = time.monotonic() + self.retry_after_s

    def _spool_bytes(self) -> int:
        total = 0
        for root, _, files in os.walk(self.spool):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    pass  # removed by a flush meanwhile
        return total

    def _spool_entry(self, rec: dict, video: bytes) -> None:
        fid, ext = rec["id"], os.path.splitext(rec["video"])[1]
        body = _record_bytes(rec)
        with self._spool_lock:
            used = self._spool_bytes()
            if used + len(video) + len(body) > self.max_spool_bytes:
                log.error("feedback spool %s full (%d bytes); submission refused", self.spool, used)
                raise SpoolFull(
                    f"the feedback store is unavailable and the spool is full ({used} of "
                    f"{self.max_spool_bytes} bytes); nothing was kept"
                )
            tmp = self.spool / f"{SPOOL_TMP}{fid}"
            try:
                tmp.mkdir()
                _write_durable(tmp / f"video{ext}", video)
                _write_durable(tmp / SPOOL_RECORD, body)
                _fsync_dir(tmp)
                os.rename(tmp, self.spool / fid)
                _fsync_dir(self.spool)
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                log.error("feedback spool %s cannot take %s: %r", self.spool, fid, e)
                raise SpoolFull(
                    f"the feedback store is unavailable and the spool refused: {e}"
                ) from e

    def _entries(self) -> list[Path]:
        """Queued entries, oldest first (ids start with their UTC second)."""
        try:
            names = os.listdir(self.spool)
        except FileNotFoundError:
            return []
        return [self.spool / n for n in sorted(names) if re.match(ID_PATTERN, n)]

    def _read_entry(self, entry: Path) -> tuple[dict, bytes]:
        rec = json.loads((entry / SPOOL_RECORD).read_bytes())
        fid = entry.name
        if not isinstance(rec, dict) or rec.get("id") != fid:
            raise ValueError(f"{SPOOL_RECORD} does not belong to {fid}")
        ext = os.path.splitext(str(rec.get("video")))[1]
        if rec.get("video") != f"{VIDEOS}{fid}{ext}" or (
            ext not in VIDEO_TYPES and ext != OTHER_EXT
        ):
            raise ValueError(f"unexpected video key {rec.get('video')!r}")
        return rec, (entry / f"video{ext}").read_bytes()

    def _set_aside(self, entry: Path, e: BaseException) -> None:
        broken = self.spool / SPOOL_BROKEN
        log.error("feedback spool entry %s unreadable (%r); moved to %s", entry, e, broken)
        try:
            broken.mkdir(exist_ok=True)
            os.rename(entry, broken / f"{entry.name}-{secrets.token_hex(2)}")
        except OSError as again:
            # Left in the queue: pending() keeps counting it, which is how someone notices.
            log.error("feedback spool entry %s cannot be moved either: %r", entry, again)

    def _clear_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for p in self.spool.glob(f"{SPOOL_TMP}*"):
            try:
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass
