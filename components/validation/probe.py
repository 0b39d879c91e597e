"""What each video file really is: exists, size, opens, decodable frames, fps, frame size.

Decoding every frame is the slow part of validation, so results are cached by the file's
content hash (sha256) in one JSON file outside any pipeline output: an unchanged video is
hashed, never decoded again, wherever it lives. Hashing and decoding run on threads: hashlib
and OpenCV's decoder release the GIL, and threads start instantly where spawned processes
would each import torch first.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from model.files import hash_file, write_atomic
from model.video.decode import VideoError, count_frames, probe

# Bump when probe_video's output changes meaning: entries of another version are ignored.
PROBE_VERSION = 1
CACHE_FILE = "probes.json"


def default_cache_dir() -> Path:
    """$SIGN2TEXT_CACHE_DIR, else $XDG_CACHE_HOME/sign2text, else ~/.cache/sign2text."""
    if env := os.environ.get("SIGN2TEXT_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sign2text"


def file_digest(path: str) -> dict:
    """{"exists", "bytes", "sha256"}; sha256 is None for a missing or empty file."""
    p = Path(path)
    if not p.is_file():
        return {"exists": False, "bytes": None, "sha256": None}
    size = p.stat().st_size
    if size == 0:
        return {"exists": True, "bytes": 0, "sha256": None}
    return {"exists": True, "bytes": size, "sha256": hash_file(p)}


def probe_video(path: str) -> dict:
    """Open and fully decode one video (through model/video/, the path training uses)."""
    try:
        info = probe(path)
        frames = count_frames(path)
    except VideoError as e:
        # The message must not name the file's location: the cache is keyed by content.
        return {"readable": False, "error": str(e).replace(str(path), "<file>")}
    out = {"frames": frames, "claimed_frames": info.frames, "fps": info.fps}
    out |= {"width": info.width, "height": info.height}
    if frames == 0:
        return {"readable": False, "error": "no decodable frames"} | out
    return {"readable": True, "error": None} | out


def _map(fn: Callable[[str], dict], jobs: list[str], workers: int) -> Iterator[dict]:
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ThreadPoolExecutor(workers) as ex:
        yield from ex.map(fn, jobs)


class ProbeCache:
    """sha256 -> probe_video result, in one JSON file; unreadable or foreign files start empty."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.entries: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if isinstance(data, dict) and data.get("version") == PROBE_VERSION:
                self.entries = dict(data.get("probes") or {})

    def save(self) -> None:
        if self.path is None:
            return
        text = json.dumps({"version": PROBE_VERSION, "probes": self.entries}, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text.encode("utf-8"))
        except OSError as e:
            # A cache that cannot be written (read-only home in a container) only costs time.
            print(f"sign2text: warning: probe cache not saved: {e}", file=sys.stderr)


def probe_files(
    paths: list[Path], *, workers: int, progress: bool, cache_dir: Path | None
) -> tuple[dict[Path, dict], dict]:
    """Digest + probe of every path -> ({path: result}, {"decoded": n, "cached": n})."""
    cache = ProbeCache(cache_dir)
    jobs = [str(p) for p in paths]
    with tqdm(total=len(jobs), desc="hash", unit="video", disable=not progress) as bar:
        digests = []
        for d in _map(file_digest, jobs, workers):
            digests.append(d)
            bar.update()
    todo = sorted(
        {d["sha256"] for d in digests if d["sha256"] and d["sha256"] not in cache.entries}
    )
    first_path = {d["sha256"]: p for p, d in zip(jobs, digests, strict=True) if d["sha256"]}
    with tqdm(total=len(todo), desc="probe", unit="video", disable=not progress) as bar:
        results = _map(probe_video, [first_path[s] for s in todo], workers)
        for sha, result in zip(todo, results, strict=True):
            cache.entries[sha] = result
            bar.update()
    if todo:
        cache.save()
    out = {
        Path(p): d | (cache.entries[d["sha256"]] if d["sha256"] else {})
        for p, d in zip(jobs, digests, strict=True)
    }
    cached = len({d["sha256"] for d in digests if d["sha256"]}) - len(todo)
    return out, {"decoded": len(todo), "cached": cached}
