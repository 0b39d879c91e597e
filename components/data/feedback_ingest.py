"""Feedback the app stored (app/feedback_store.py) -> our layout: `sign2text data ingest s3://B/P`.

The source is the store's prefix, `s3://BUCKET/PREFIX` or a local folder with the same layout
(`records/<id>.json` + `videos/<id><ext>`). One sample per usable record:

    video_id     feedback-<id>            (the store's id; never a name the client chose)
    gloss        the record's `gloss`     (the correct one for "wrong", the predicted one else)
    split        "train" (`--split`)      frame_start 1, frame_end -1 (the whole video)
    signer_id    -1 (unknown: the app keeps no personal data)   bbox: none (whole frame)
    fps          the video's own rate     source "feedback", url: where the video was

Corrections (verdict "wrong" with a gloss) by default; `confirmed` adds "correct" ones.
Sentence-mode feedback is left out: one gloss cannot label a video of several signs.
Videos: .mp4 bytes are kept as they are; any other container is decoded and re-encoded to
MPEG-4 (OpenCV's mp4v, as synth writes). Every local path is built from a checked id, never
from a key or a record field; records that are malformed, whose video is missing or does not
decode, are skipped and listed in ingest.json. As in `ingest`, samples are not judged here:
`data validate` judges them like any other.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
from tqdm import tqdm

from components.data.dataset import METADATA, SPLITS, VIDEOS, write_ingested

# The store's names (app/feedback_store.py; a test keeps the two equal: sign2text cannot import app,
# whose image does not ship it, nor the other way round).
ID_PATTERN = r"^\d{8}T\d{6}Z-[0-9a-f]{12}$"
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".bin")
RECORDS_DIR = "records"
VIDEO_ID_PREFIX = "feedback-"
REENCODE_FPS = 25.0  # when a container does not say its rate
MAX_GLOSS_CHARS = 100


class FeedbackSource:
    """Records and videos under a store prefix; names come back as ids or not at all."""

    def names(self) -> Iterator[str]:
        raise NotImplementedError

    def read(self, rel: str) -> bytes | None:
        """The object `rel` (e.g. records/<id>.json), or None when it is not there."""
        raise NotImplementedError

    def fetch(self, rel: str, dest: Path) -> bool:
        raise NotImplementedError

    def url(self, rel: str) -> str:
        raise NotImplementedError


class _DirSource(FeedbackSource):
    def __init__(self, root: Path):
        self.root = root

    def names(self) -> Iterator[str]:
        yield from sorted(p.name for p in (self.root / RECORDS_DIR).iterdir())

    def _file(self, rel: str) -> Path | None:
        p = self.root / rel
        # A link could lead anywhere; the store never writes one.
        return p if p.is_file() and not p.is_symlink() else None

    def read(self, rel: str) -> bytes | None:
        p = self._file(rel)
        return p.read_bytes() if p else None

    def fetch(self, rel: str, dest: Path) -> bool:
        p = self._file(rel)
        if p:
            shutil.copyfile(p, dest)
        return p is not None

    def url(self, rel: str) -> str:
        return str(self.root / rel)


class _S3Source(FeedbackSource):
    def __init__(self, uri: str):
        from components.infra.s3_access import split_uri
        from model.storage import s3_client

        self.bucket, self.prefix = split_uri(uri)
        self.client = s3_client()

    def _error(self, rel: str, e: Exception) -> Exception:
        """KeyError for a missing object (the caller reports it); else one line naming the URI."""
        from components.infra.s3_access import error_code, failure

        if error_code(e) in ("NoSuchKey", "NotFound"):
            return KeyError(rel)
        return failure(self.url(rel), "reading feedback", e)

    def names(self) -> Iterator[str]:
        base = self.prefix + RECORDS_DIR + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=base))
        except Exception as e:
            raise self._error(RECORDS_DIR + "/", e) from e
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base) :]

    def read(self, rel: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"]
            with body:
                return body.read()
        except Exception as e:
            err = self._error(rel, e)
            if isinstance(err, KeyError):
                return None
            raise err from e

    def fetch(self, rel: str, dest: Path) -> bool:
        try:
            self.client.download_file(self.bucket, self.prefix + rel, str(dest))
        except Exception as e:
            err = self._error(rel, e)
            if isinstance(err, KeyError):
                return False
            raise err from e
        return True

    def url(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}"


def is_feedback_source(source: str | os.PathLike) -> bool:
    """An s3:// prefix, or a folder laid out as the store writes (records/, no metadata file)."""
    from components.infra.s3_access import is_s3

    if is_s3(str(source)):
        return True
    p = Path(source)
    return (p / RECORDS_DIR).is_dir() and not (p / METADATA).exists()


def open_source(source: str | os.PathLike) -> FeedbackSource:
    from components.infra.s3_access import is_s3

    if is_s3(str(source)):
        return _S3Source(str(source))
    if not (Path(source) / RECORDS_DIR).is_dir():
        raise FileNotFoundError(f"not a feedback folder (no {RECORDS_DIR}/): {source}")
    return _DirSource(Path(source))


def check_record(fid: str, raw: bytes) -> tuple[dict | None, str | None]:
    """(record, None) for a well-formed record of id `fid`, else (None, what is wrong)."""
    try:
        rec = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not valid JSON ({e})"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    if rec.get("id") != fid:
        return None, f"id {rec.get('id')!r} is not the one its name says ({fid})"
    video = rec.get("video")
    ext = os.path.splitext(video)[1] if isinstance(video, str) else None
    if ext not in VIDEO_EXTS or video != f"{VIDEOS}/{fid}{ext}":
        return None, f"video {video!r} is not {VIDEOS}/{fid}<ext>"
    if rec.get("verdict") not in ("correct", "wrong"):
        return None, f"verdict {rec.get('verdict')!r} is not 'correct' or 'wrong'"
    if rec.get("mode", "word") not in ("word", "sentence"):
        return None, f"mode {rec.get('mode')!r} is not 'word' or 'sentence'"
    gloss = rec.get("gloss")
    if gloss is not None and not isinstance(gloss, str):
        return None, f"gloss {gloss!r} is not a string"
    if isinstance(gloss, str):
        gloss = gloss.strip()
        if len(gloss) > MAX_GLOSS_CHARS or not gloss.isprintable():
            return None, f"gloss {gloss[:MAX_GLOSS_CHARS]!r} is not a plain gloss name"
        rec["gloss"] = gloss or None
    return rec, None


def reencode(src: Path, dest: Path) -> tuple[int, float]:
    """Any container OpenCV decodes -> MPEG-4 (mp4v) at `dest`, frame by frame (memory stays at
    one frame); written beside `dest` and renamed. Returns (frames, fps); 0 frames writes
    nothing."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    fps = fps if math.isfinite(fps) and 0 < fps <= 240 else REENCODE_FPS
    tmp = dest.with_name(f".{dest.stem}.tmp.mp4")  # .mp4: OpenCV picks the container by it
    writer, n = None, 0
    try:
        while cap.isOpened():
            ok, frame = cap.read()
            if not ok:
                break
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"cv2.VideoWriter cannot write {tmp}")
            writer.write(frame)
            n += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if n:
        os.replace(tmp, dest)
    else:
        tmp.unlink(missing_ok=True)
    return n, fps


def _file_fps(path: Path) -> float | None:
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return round(fps, 3) if math.isfinite(fps) and fps > 0 else None


def _select(src: FeedbackSource, confirmed: bool, skipped: list, counts: Counter) -> list[dict]:
    """The usable records, by id; what is left out is counted, what is wrong listed."""
    chosen = []
    for name in src.names():
        where = f"{RECORDS_DIR}/{name}"
        fid = name[: -len(".json")] if name.endswith(".json") else ""
        if not re.match(ID_PATTERN, fid):
            if not name.startswith("."):  # a store's temp file, not a record
                skipped.append({"where": where, "reason": "not a feedback record name"})
            continue
        counts["records"] += 1
        raw = src.read(where)
        rec, problem = check_record(fid, raw) if raw is not None else (None, "gone while read")
        if rec is None:
            skipped.append({"where": where, "reason": f"malformed record: {problem}"})
            continue
        counts[rec["verdict"]] += 1
        if rec.get("mode", "word") != "word":
            skipped.append(
                {
                    "where": where,
                    "reason": "sentence-mode feedback: one gloss "
                    "cannot label a video of several signs",
                }
            )
        elif rec["verdict"] == "correct" and not confirmed:
            counts["confirmations_left_out"] += 1
        elif not rec.get("gloss"):
            skipped.append(
                {"where": where, "reason": f"verdict {rec['verdict']!r} without a gloss"}
            )
        else:
            chosen.append(rec)
    return chosen


def ingest_feedback(
    source: str | os.PathLike,
    out: Path,
    *,
    confirmed: bool = False,
    split: str = "train",
    progress: bool = True,
) -> dict:
    """Write the feedback at `source` to `out` in our layout; return the summary (ingest.json)."""
    out = Path(out)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; ingest writes a fresh dataset folder")
    src = open_source(source)
    skipped: list[dict] = []
    counts: Counter = Counter()
    chosen = _select(src, confirmed, skipped, counts)

    (out / VIDEOS).mkdir(parents=True, exist_ok=True)
    by_gloss: dict[str, list[dict]] = {}
    placed: Counter = Counter()
    missing = []
    # Inside `out`: finished videos are renamed into place, not copied across filesystems.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as tmp:
        for rec in tqdm(chosen, desc="ingest", unit="video", disable=not progress):
            fid, rel = rec["id"], rec["video"]
            vid = VIDEO_ID_PREFIX + fid
            ext = os.path.splitext(rel)[1]
            got = Path(tmp) / f"{fid}{ext}"
            where = f"{RECORDS_DIR}/{fid}.json"
            if not src.fetch(rel, got):
                missing.append(vid)
                skipped.append({"where": where, "video_id": vid, "reason": f"video {rel} missing"})
                continue
            dest = out / VIDEOS / f"{vid}.mp4"
            if ext == ".mp4":
                os.replace(got, dest)
                placed["copied"] += 1
                fps = _file_fps(dest)
            else:
                frames, fps = reencode(got, dest)
                got.unlink()
                if not frames:
                    skipped.append(
                        {"where": where, "video_id": vid, "reason": f"video {rel} does not decode"}
                    )
                    continue
                placed["reencoded"] += 1
            inst = {"video_id": vid, "split": split, "frame_start": 1, "frame_end": -1}
            inst |= {"signer_id": -1, "source": "feedback", "url": src.url(rel)}
            if fps:
                inst["fps"] = fps
            by_gloss.setdefault(rec["gloss"], []).append(inst)

    entries = [{"gloss": g, "instances": by_gloss[g]} for g in sorted(by_gloss)]
    instances = sum(len(v) for v in by_gloss.values())
    keys = ("records", "wrong", "correct", "confirmations_left_out")
    return write_ingested(
        out,
        entries,
        {"source": str(source), "format": "feedback", "confirmed": confirmed}
        | {"records": {k: counts[k] for k in keys}},
        splits={split: instances} if instances else {},
        videos={"copied": placed["copied"], "reencoded": placed["reencoded"], "missing": missing},
        skipped=skipped,
    )
