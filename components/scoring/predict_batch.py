"""Batch scoring: every video under a folder or an `s3://` prefix -> one JSON line per video.

    sign2text predict-batch MODEL_DIR SRC --out results.jsonl [--mode sentence] [--workers N]

Each worker process loads the model once (model/predict.py's Classifier, the in-process path
`predict-local` and serving use) and scores one video at a time; the main process appends each
answer to the results file as it comes back, flushed and fsynced, so a kill loses only the
videos in flight. A rerun skips the videos the file already holds; a last line cut off by the
kill is dropped (the file is cut back to its last whole line) and that video scored again.

A line: {"video": path relative to SRC (an s3 key relative to the prefix), "mode": ...} plus
word mode's {"glosses", "scores"} or sentence mode's {"words", "spans", "confidences"} -- the
served outputs' names -- or {"error": "<why>"} for a video that cannot be scored. A bad video
never stops the batch; it is counted in the summary. Not even one that kills its process (out
of memory, a crash in the decoder): the videos that were in flight then are scored again one at
a time, and the one whose process dies again gets an error line. Videos are the files with a video
extension (VIDEO_EXTS, the containers the app accepts), found recursively; other files are
ignored. From s3://, each worker downloads one object at a time to a file in its own temporary
folder, named by the worker, never by the key: no key can write anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.util import Finalize
from pathlib import Path

from components.infra.cpus import usable_cpus

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mov", ".mkv")
MODES = ("word", "sentence")
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """One process per two cores (each runs I3D on its share of the cores' threads), up to 4."""
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cpus() // 2))


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTS


def list_videos(src: str | os.PathLike) -> list[str]:
    """The videos under `src` (a folder, or an s3:// prefix), as sorted names relative to it."""
    from components.infra.s3_access import is_s3

    if is_s3(str(src)):
        return _list_s3(str(src))
    root = Path(src)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder of videos: {src}")
    found = []
    for d, dirs, files in os.walk(root):  # does not follow links to folders
        dirs.sort()
        found += [Path(d, f).relative_to(root).as_posix() for f in files if is_video(f)]
    return sorted(found)


def _list_s3(uri: str) -> list[str]:
    from components.infra.s3_access import failure, split_uri
    from model.storage import s3_client

    bucket, prefix = split_uri(uri)
    names = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
    except Exception as e:
        raise failure(uri, "listing the videos", e) from e
    return sorted(n for n in names if is_video(n))


def load_results(out: Path, mode: str, *, retry_errors: bool = False) -> dict[str, dict]:
    """The videos an earlier run already wrote to `out`, by name. A last line without its
    newline (the write a kill cut off) is dropped from the file; with `retry_errors` the error
    lines are dropped too, so those videos are scored again."""
    out = Path(out)
    if not out.exists():
        return {}
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]  # everything up to the last complete line
    done: dict[str, dict] = {}
    for n, line in enumerate(whole.splitlines(), 1):
        try:
            rec = json.loads(line)
            name, rec_mode = rec["video"], rec["mode"]
        except (ValueError, TypeError, KeyError):
            raise ValueError(f"{out}:{n}: not a predict-batch result line") from None
        if rec_mode != mode:
            raise ValueError(
                f"{out} holds {rec_mode}-mode results; write {mode} mode to another --out"
            )
        done[name] = rec
    kept = {k: v for k, v in done.items() if not (retry_errors and "error" in v)}
    if len(kept) < len(done):
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept.values())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    elif len(whole) < len(data):
        os.truncate(out, len(whole))
    return kept


# One worker's state: set once by _init, used by every _score call in that process.
_worker: dict = {}


def _init(
    model_dir: str, device: str, threads: int, src: str, mode: str, top_k: int, env: dict
) -> None:
    import cv2
    import torch

    from components.infra.s3_access import is_s3
    from model.predict import Classifier
    from model.storage import s3_client

    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    _worker.update(
        clf=Classifier(model_dir, device), src=src, mode=mode, top_k=top_k, client=None, tmp=None
    )
    if is_s3(src):
        _worker["client"] = s3_client()
        _worker["tmp"] = Path(tempfile.mkdtemp(prefix="sign2text-batch-"))
        # multiprocessing runs this as the worker exits at the pool's shutdown (not on a kill)
        Finalize(None, shutil.rmtree, args=(_worker["tmp"], True), exitpriority=0)


def _score(name: str) -> dict:
    """One video's result line; a video that fails gives an "error" line, never an exception."""
    w = _worker
    rec = {"video": name, "mode": w["mode"]}
    local, shown = None, None
    try:
        if w["client"] is None:
            local = Path(w["src"], name)
            shown = str(Path(w["src"])) + os.sep
        else:
            local = _download(name)
            shown = str(local)
        if w["mode"] == "word":
            pred = w["clf"].word(local, top_k=w["top_k"])
            return rec | {"glosses": pred.glosses, "scores": pred.scores}
        words = w["clf"].sentence(local)
        return rec | {
            "words": [x.gloss for x in words],
            "spans": [[x.start, x.end] for x in words],
            "confidences": [x.confidence for x in words],
        }
    except Exception as e:  # bad input of any kind: recorded, and the batch goes on
        from model.video.decode import VideoError

        text = str(e) if isinstance(e, VideoError) else f"{type(e).__name__}: {e}"
        if shown:  # the reason names the video as the results do, not a temp or mount path
            text = text.replace(shown, "" if w["client"] is None else name)
        return rec | {"error": text.strip() or type(e).__name__}
    finally:
        if w["client"] is not None and local is not None:
            local.unlink(missing_ok=True)


def _download(name: str) -> Path:
    from components.infra.s3_access import failure, split_uri

    bucket, prefix = split_uri(_worker["src"])
    dest = _worker["tmp"] / ("video" + os.path.splitext(name)[1].lower())  # never the key
    try:
        _worker["client"].download_file(bucket, prefix + name, str(dest))
    except Exception as e:
        raise failure(f"s3://{bucket}/{prefix}{name}", "download", e) from e
    return dest


def _context():
    """forkserver where there is one: a server process that imported torch (and ran nothing)
    forks the workers, so torch is imported once, not once per worker as with spawn. Never plain
    fork: forking a process whose torch / OpenMP threads run can deadlock the child."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["model.predict", "components.scoring.predict_batch"])
    return ctx


def _results(
    names: list[str], model_dir: str, src: str, mode: str, top_k: int, device: str, workers: int
) -> Iterator[dict]:
    """Result lines in the order they finish, from worker processes (even one: a video that
    kills its process must not end the run), at most 2 videos per worker in flight."""
    # The caller's environment as it is now (S3 settings): forkserver's children get the
    # environment the server started with, which may be older.
    init = (model_dir, device, max(1, usable_cpus() // workers), src, mode, top_k, dict(os.environ))
    todo = deque(names)
    while todo:
        # A worker that dies (killed, out of memory, a crash in the decoder) breaks the pool
        # and every video in flight with it: each of those is scored again alone, so one video
        # that kills its process gets an error line and the others their results.
        for name in (yield from _pooled(todo, workers, init)):
            if (yield from _pooled(deque([name]), 1, init)):
                yield {"video": name, "mode": mode, "error": DIED}


DIED = (
    "the process scoring this video died (killed, out of memory, or crashed while "
    "decoding), also when it was scored alone"
)


def _pooled(todo: deque, workers: int, init: tuple) -> Generator[dict, None, list[str]]:
    """Result lines from a pool of `workers` scoring videos taken from `todo`, at most 2 per
    worker in flight. Returns (as a generator's value) the videos that were in flight when a
    worker died, unscored; [] when `todo` is done."""
    ex = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init, initargs=init)
    pending: dict[Future, str] = {}
    try:
        while todo or pending:
            while todo and len(pending) < 2 * workers:
                name = todo.popleft()
                try:
                    pending[ex.submit(_score, name)] = name
                except BrokenProcessPool:
                    todo.appendleft(name)
                    return list(pending.values())
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                try:
                    rec = f.result()
                except BrokenProcessPool:
                    return list(pending.values())  # this one and every other in flight
                del pending[f]
                yield rec
        return []
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def predict_batch(
    model_dir: str | os.PathLike,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mode: str = "word",
    top_k: int = 5,
    workers: int | None = None,
    device: str = "cpu",
    retry_errors: bool = False,
    progress: bool = False,
) -> dict:
    """Score every video under `src` not yet in `out` (appended, one JSON line per video);
    returns the summary: videos, scored, skipped (already in `out`), errors, seconds,
    videos_per_s."""
    from tqdm import tqdm

    from model.predict import Classifier

    if mode not in MODES:
        raise ValueError(f"mode must be 'word' or 'sentence', got {mode!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = workers or default_workers()
    # Opened here as each worker opens it (the same runtime), so a bad model fails before any
    # video, not once per worker as its pool breaks.
    info = Classifier(model_dir, device).info
    if not 1 <= top_k <= len(info.labels):
        raise ValueError(f"top_k must be between 1 and {len(info.labels)}, got {top_k}")
    if mode == "sentence" and info.sentence_window is None:
        raise ValueError(f"{model_dir}: this model has no no-sign output, so no sentence mode")
    names = list_videos(src)
    out = Path(out)
    done = load_results(out, mode, retry_errors=retry_errors)
    todo = [n for n in names if n not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    scored = errors = 0
    start = time.monotonic()
    results = (
        _results(todo, str(model_dir), str(src), mode, top_k, device, min(workers, len(todo)))
        if todo
        else iter(())
    )
    with (
        open(out, "a", encoding="utf-8") as f,
        tqdm(total=len(todo), desc="predict-batch", unit="video", disable=not progress) as bar,
    ):
        for rec in results:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            errors += "error" in rec
            scored += "error" not in rec
            bar.update(1)
    seconds = time.monotonic() - start
    return {
        "videos": len(names),
        "scored": scored,
        "skipped": len(names) - len(todo),
        "errors": errors,
        "seconds": round(seconds, 3),
        "videos_per_s": round((scored + errors) / seconds, 3) if seconds > 0 else 0.0,
        "out": str(out),
    }


def summary_line(summary: dict) -> str:
    return (
        f"scored {summary['scored']}, skipped {summary['skipped']} (already done), "
        f"errors {summary['errors']}; {summary['videos_per_s']} videos/s; "
        f"results in {summary['out']}"
    )
