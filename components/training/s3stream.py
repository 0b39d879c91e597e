"""Shards read straight from object storage as training goes (`train --shards s3://...` with the
streaming loader, `train.cache: false`): nothing is downloaded ahead, nothing lands on disk.

`S3Shards(uri)` is a published shard folder (components/infra/objstore.py: `_published.json`
written last) read in place: its manifest.json (checked against `_published.json`'s sha256) lists
the shards, and `read(shard)` streams one shard's samples from a GetObject body, through the same
tar checks the local reader makes (convert.read_tar: uncompressed, regular members, json + mp4
per sample). Each shard's bytes are hashed as they stream; at the end of the shard its size and
sha256 must be the manifest's, else ObjStoreError names the shard (its samples before that point
have been yielded: the run fails, no model is written). Keys are the prefix + a manifest name
that convert's name rule allows (no "/", no ".."), so reads stay under the given prefix.

A connection that drops mid-shard is resumed with a Range request from the byte where it stopped,
pinned to the object's ETag (If-Match), so the tar reader sees each byte once and no sample is
yielded twice; `RESUMES` failures in a row without progress give up, naming the shard.
The client is model/storage.py's `s3_client` (docs/object-storage.md), one per process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from components.conversion.convert import FORMAT, MANIFEST, read_tar, shard_name
from components.infra.s3_access import ObjStoreError, failure, split_uri
from model.files import display_uri
from model.storage import s3_client

RESUMES = 5  # tries in a row that make no progress before a shard read gives up
_BACKOFF = 0.5  # seconds before the second try, doubling after


@dataclass(frozen=True)
class S3Shard:
    """One shard object: `name` as the manifest lists it, its key under the prefix."""

    bucket: str
    key: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return display_uri(f"s3://{self.bucket}/{self.key}")


def _stream_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    return (BotoCoreError, HTTPError, OSError)


class ObjectReader(io.RawIOBase):
    """A shard object read once from start to end, resumed by Range after a dropped connection,
    hashed as it goes; `verify()` at the end checks size and sha256 against the manifest's."""

    def __init__(self, shard: S3Shard, client):
        self.shard, self.client, self.pos, self.etag = shard, client, 0, None
        self._hash, self._body = hashlib.sha256(), None

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        args = {"Bucket": self.shard.bucket, "Key": self.shard.key}
        if self.pos:  # the rest only, of the very object read so far
            args.update(Range=f"bytes={self.pos}-", IfMatch=self.etag)
        resp = self.client.get_object(**args)
        self.etag = self.etag or resp.get("ETag")
        self._body = resp["Body"]

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: S110 - a broken connection may fail to close; it is gone
                pass
        self._body = None

    def readinto(self, b) -> int:
        if self.pos >= self.shard.size:
            return 0  # the manifest's size: what lies beyond is the verify's to notice
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(min(len(b), self.shard.size - self.pos))
                if not data:
                    return 0
                break
            except _stream_errors() as e:
                self._drop()
                failures += 1
                if failures >= RESUMES:
                    raise failure(str(self.shard), f"reading at byte {self.pos}", e) from e
                time.sleep(_BACKOFF * 2 ** (failures - 1))
            except Exception as e:
                raise failure(str(self.shard), "reading", e) from e
        n = len(data)
        b[:n] = data
        self._hash.update(data)
        self.pos += n
        return n

    def verify(self) -> None:
        """Read what the tar reader left (its end padding), then check size and sha256."""
        while self.read(1 << 16):
            pass
        extra = b""
        if self._body is not None:
            try:
                extra = self._body.read(1)  # the object is longer than the manifest says
            except _stream_errors():
                extra = b""
        self._drop()
        digest = self._hash.hexdigest()
        if extra or (self.pos, digest) != (self.shard.size, self.shard.sha256):
            size = f"more than {self.pos}" if extra else str(self.pos)
            raise ObjStoreError(
                f"{self.shard} is corrupted: {size} B sha256 {digest[:12]}..., the shards' "
                f"{MANIFEST} says {self.shard.size} B sha256 {self.shard.sha256[:12]}..."
            )

    def close(self) -> None:
        self._drop()
        super().close()


class S3Shards:
    """A published shard folder at `s3://bucket/prefix/`, read in place."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket, self.prefix = split_uri(uri)
        self._manifest: dict | None = None
        self._client: tuple[int, object] | None = None

    def client(self):
        """The S3 client of this process (a DataLoader worker forked from the trainer makes its
        own), built when first needed, from the environment as it is then."""
        if self._client is None or self._client[0] != os.getpid():
            # The rank in the User-Agent: an S3 access log (and tests) can tell who read what.
            rank = os.environ.get("RANK", "0")
            self._client = (os.getpid(), s3_client(f"sign2text-train/rank-{rank}"))
        return self._client[1]

    def __str__(self) -> str:
        return display_uri(f"s3://{self.bucket}/{self.prefix}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Shards) and (self.bucket, self.prefix) == (
            other.bucket,
            other.prefix,
        )

    def __hash__(self) -> int:
        return hash((self.bucket, self.prefix))

    def _get(self, name: str) -> bytes:
        try:
            body = self.client().get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as e:
            raise failure(f"{self}{name}", "reading", e) from e

    def manifest(self) -> dict:
        """The shards' manifest.json, as published (its sha256 is `_published.json`'s)."""
        if self._manifest is None:
            from components.infra.objstore import read_published

            published = {f.get("path"): f for f in read_published(self.uri)["files"]}
            if MANIFEST not in published:
                raise ObjStoreError(f"{self}: no {MANIFEST} (not a shard folder)")
            body = self._get(MANIFEST)
            if hashlib.sha256(body).hexdigest() != published[MANIFEST].get("sha256"):
                raise ObjStoreError(f"{self}{MANIFEST} differs from what was published")
            manifest = json.loads(body)
            if manifest.get("format") != FORMAT:
                raise ValueError(f"{self}{MANIFEST}: format {manifest.get('format')!r}")
            self._manifest = manifest
        return self._manifest

    def split(self, split: str) -> list[tuple[S3Shard, int]]:
        """(shard, sign samples) of each shard of `split`, as convert.split_shards lists them."""
        splits = self.manifest()["splits"]
        if split not in splits:
            raise ValueError(f"no split {split!r} in {self}; it has {sorted(splits)}")
        out = []
        for sh in splits[split]["shards"]:
            name = shard_name(sh.get("name"), f"{self}{MANIFEST}")
            size, sha = sh.get("bytes"), sh.get("sha256")
            if not isinstance(size, int) or not isinstance(sha, str):
                raise ValueError(f"{self}{MANIFEST}: {name} has no bytes / sha256")
            out.append((S3Shard(self.bucket, self.prefix + name, size, sha), int(sh["samples"])))
        return out

    def read(self, shard: S3Shard) -> Iterator[tuple[dict, bytes]]:
        """(meta, mp4 bytes) of every sample of one shard object, streamed; verified at its end."""
        return read_s3_shard(shard, self.client())


def read_s3_shard(shard: S3Shard, client) -> Iterator[tuple[dict, bytes]]:
    """(meta, mp4 bytes) of every sample of one shard object, streamed; verified at its end."""
    with ObjectReader(shard, client) as raw:
        stream = io.BufferedReader(raw, 1 << 20)
        try:
            yield from read_tar(stream, shard)
        except ObjStoreError:
            raise
        except (tarfile.TarError, ValueError) as e:
            raw.verify()  # a damaged shard: say so rather than what the damage looked like
            raise ValueError(f"{shard}: {e}") from e
        raw.verify()
