"""`sign2text data synth`: a deterministic synthetic sign-language dataset in the WLASL layout.

It stands in for WLASL (which cannot be downloaded here), so it exercises what real sign video
exercises (the drawing is components/data/synth_render.py): classes come in pairs that are exact
time-reversals of each other (same hand shape, same path, opposite direction), so a single
mid-sign frame cannot tell a pair apart and a model has to use motion over time. Signers have
their own look and are disjoint across splits, clips have idle frames around the sign proper,
varying speed, frame size, aspect ratio, jitter and noise.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from components.data.dataset import write_json
from components.data.synth_render import (
    BASE_SIGN_FRAMES,
    FPS,
    GENERATOR,
    MAX_CLASSES,
    SIZES,
    class_spec,
    render_clip,
    signer_look,
)
from model.files import write_atomic

SIGNERS = 24  # the bundled dataset's signers (`synthesize`'s default)


def split_signers(signers: int) -> dict[str, list[int]]:
    n_test = max(1, round(0.25 * signers))
    n_val = max(1, round(0.125 * signers))
    n_train = signers - n_test - n_val
    ids = list(range(signers))
    return {
        "train": ids[:n_train],
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }


def _signer_order(splits: dict[str, list[int]]) -> list[int]:
    # Interleave the splits so that even a small per_class reaches every split.
    lists = [splits["train"], splits["val"], splits["test"]]
    return [lst[k] for k in range(max(map(len, lists))) for lst in lists if k < len(lst)]


def _is_synth_output(out: Path) -> bool:
    try:
        return json.loads((out / "synth_classes.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def write_video(path: Path, frames, fps: float = FPS) -> Path:
    """T x H x W x 3 uint8 BGR -> a video file (MPEG-4 part 2, which OpenCV's wheel can encode),
    in the container `path`'s suffix names; written beside it and renamed, so it is whole."""
    h, w = frames[0].shape[:2]
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # same suffix: OpenCV picks by it
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {tmp}")
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path


def moving_square(n: int = 40, h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A square moving left to right over a textured background; every frame is distinct (tests
    and benchmarks use it where any real video will do)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], n, axis=0)
    for i in range(n):
        x = 5 + i * (w - 30) // max(n - 1, 1)
        cv2.rectangle(frames[i], (x, h // 3), (x + 20, h // 3 + 20), (30, 200, 240), -1)
        cv2.putText(frames[i], str(i), (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255,) * 3)
    return frames


def _check_args(out: Path, classes: int, per_class: int, signers: int, seed: int) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be between 2 and {MAX_CLASSES}, got {classes}")
    if signers < 3:
        raise ValueError(f"signers must be >= 3 (one each for train, val, test), got {signers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if classes * per_class > 99_999:
        raise ValueError("classes * per_class must be <= 99999 (5-digit video ids)")
    splits = split_signers(signers)
    first = set(_signer_order(splits)[: max(per_class, 0)])
    reached = {name for name, ids in splits.items() if first & set(ids)}
    if len(reached) < 3:
        raise ValueError(
            f"per_class={per_class} is too small: samples go round-robin over the signers and "
            f"every split (train/val/test) needs at least one sample of every class; "
            f"per_class must be >= 3 (missing: {sorted(set(splits) - reached)})"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_synth_output(out):
        raise ValueError(
            f"{out} is a non-empty directory that is not a previous synth output; "
            "refusing to write into it"
        )


def synthesize(
    out: Path,
    classes: int = 10,
    per_class: int = 48,
    signers: int = SIGNERS,
    seed: int = 0,
    progress: bool = True,
    only_splits: tuple[str, ...] | None = None,
) -> dict:
    """Write a synthetic WLASL-layout dataset to `out` and return a summary.

    `only_splits` renders just those splits' videos (byte-identical to the full dataset's: each
    video has its own random stream), e.g. the test split for a test."""
    out = Path(out)
    _check_args(out, classes, per_class, signers, seed)
    t0 = time.perf_counter()
    splits = split_signers(signers)
    split_of = {s: name for name, ids in splits.items() for s in ids}
    order = _signer_order(splits)
    specs = [class_spec(c) for c in range(classes)]
    looks = [signer_look(seed, s) for s in range(signers)]
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)

    # Written first: it marks the directory as ours, so a crashed run can be overwritten.
    meta = {
        "generator": GENERATOR,
        "params": {"seed": seed, "classes": classes, "per_class": per_class, "signers": signers},
        "signers": splits,
        "classes": [
            {
                "label": c.label,
                "gloss": c.gloss,
                "shape": c.shape,
                "motion": c.path,
                "direction": c.direction,
            }
            for c in specs
        ],
    }
    write_json(out / "synth_classes.json", meta)

    entries = [{"gloss": c.gloss, "instances": []} for c in specs]
    counts = {"train": 0, "val": 0, "test": 0}
    written = set()
    with tqdm(total=classes * per_class, desc="synth", unit="video", disable=not progress) as bar:
        for spec in specs:
            for j in range(per_class):
                idx = spec.label * per_class + j
                rng = np.random.default_rng([seed, 0, idx])
                signer = order[j % signers]
                split = split_of[signer]
                if only_splits is not None and split not in only_splits:
                    bar.update()
                    continue
                size = SIZES[int(rng.integers(len(SIZES)))]
                n_sign = round(BASE_SIGN_FRAMES * rng.uniform(0.7, 1.4))
                n_pre = int(rng.integers(3, 13))
                open_end = bool(rng.random() < 0.2)  # WLASL's frame_end = -1: sign runs to the end
                n_post = 0 if open_end else int(rng.integers(3, 13))
                frames, bbox = render_clip(spec, looks[signer], size, n_sign, n_pre, n_post, rng)
                vid = f"{idx:05d}"
                write_video(videos / f"{vid}.mp4", frames)
                written.add(f"{vid}.mp4")
                counts[split] += 1
                entries[spec.label]["instances"].append(
                    {
                        "bbox": bbox,
                        "fps": FPS,
                        "frame_end": -1 if open_end else n_pre + n_sign,
                        "frame_start": n_pre + 1,
                        "instance_id": j,
                        "signer_id": signer,
                        "source": "synth",
                        "split": split,
                        "url": f"synth://seed{seed}/{vid}",
                        "variation_id": 0,
                        "video_id": vid,
                    }
                )
                bar.update()

    # A previous run with other parameters may have left videos this one does not reference.
    for p in videos.glob("*.mp4"):
        if p.name not in written:
            p.unlink()
    write_json(out / "WLASL_v0.3.json", entries)
    pairs = [[specs[c].gloss, specs[c + 1].gloss] for c in range(0, classes - 1, 2)]
    write_json(out / "reversed_pairs.json", {"pairs": pairs})
    write_atomic(
        out / "wlasl_class_list.txt", "".join(f"{c.label}\t{c.gloss}\n" for c in specs).encode()
    )
    return {
        "out": str(out),
        "videos": sum(counts.values()),
        "classes": classes,
        "splits": counts,
        "signers": splits,
        "seconds": round(time.perf_counter() - t0, 2),
    }
