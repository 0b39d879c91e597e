"""`sign2text data synth`: a deterministic synthetic sign-language dataset in the WLASL layout.

It stands in for WLASL (which cannot be downloaded here), so it exercises what real sign video
exercises: classes come in pairs that are exact time-reversals of each other (same hand shape, same
path, opposite direction), so a single mid-sign frame cannot tell a pair apart and a model has to
use motion over time. Signers have their own look and are disjoint across splits, clips have idle
frames around the sign proper, varying speed, frame size, aspect ratio, jitter and noise.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from components.data.dataset import write_json
from model.files import write_atomic

GENERATOR = "sign2text.synth"
FPS = 25
BASE_SIGN_FRAMES = 24
SIZES = ((192, 144), (224, 126), (160, 160))  # (w, h): 4:3, 16:9, 1:1
PATHS = ("vertical", "horizontal", "circle", "diagonal", "depth")
DIRECTIONS = {
    "vertical": ("up", "down"),
    "horizontal": ("right", "left"),
    "circle": ("clockwise", "counterclockwise"),
    "diagonal": ("up-right", "down-left"),
    "depth": ("toward", "away"),
}
SHAPES = ("disc", "square", "triangle", "bar")
# Pair i gets word pair i; the first five line up with the paths pair 0..4 use.
WORD_PAIRS = (
    ("up", "down"),
    ("right", "left"),
    ("hot", "cold"),
    ("yes", "no"),
    ("come", "go"),
    ("open", "close"),
    ("push", "pull"),
    ("big", "small"),
    ("in", "out"),
    ("before", "after"),
    ("happy", "sad"),
    ("good", "bad"),
    ("buy", "sell"),
    ("day", "night"),
    ("black", "white"),
    ("tall", "short"),
    ("fast", "slow"),
    ("old", "new"),
    ("full", "empty"),
    ("win", "lose"),
)
MAX_CLASSES = 2 * len(PATHS) * len(SHAPES)
assert len(WORD_PAIRS) * 2 >= MAX_CLASSES
assert len({w for p in WORD_PAIRS for w in p}) == 2 * len(WORD_PAIRS)

# Body geometry in "signer units" (u pixels each), origin at the signer's centre, y down.
HEAD = (0.0, -3.0, 0.95)  # x, y, radius
TORSO = (-1.5, -1.9, 1.5, 3.6)  # x0, y0, x1, y1
REST_LEFT = (-1.9, 2.6)  # the non-signing hand
REST_RIGHT = (1.9, 2.6)  # where the signing hand idles, low at the side
HAND_R = 0.9  # every hand shape fits in a circle of this radius (times the depth scale)
SIGN_C = (0.3, 0.3)  # centre of the signing space, in front of the chest
AMP = 2.0
# Everything drawn lies in this box, with a 0.2 u margin for per-video offset and jitter.
EXTENT = (-3.4, -4.15, 3.4, 3.8)
SKIN_TONES = ((172, 219, 255), (125, 194, 241), (105, 172, 224), (66, 134, 198), (36, 85, 141))
MIN_CONTRAST = 100.0  # Euclidean BGR distance between the hand and what it moves over


@dataclass(frozen=True)
class ClassSpec:
    label: int
    gloss: str
    shape: str
    path: str
    reverse: bool  # class 2i runs the path forward, class 2i+1 runs the same path backward

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.path][int(self.reverse)]


@dataclass(frozen=True)
class Look:
    """A signer's appearance; BGR colours."""

    bg: tuple[int, int, int]
    bg2: tuple[int, int, int]  # second colour of the background texture
    texture: str  # "gradient" or "stripes"
    period: float  # stripe period in pixels
    skin: tuple[int, int, int]
    clothes: tuple[int, int, int]
    scale: float  # body size, 0.8-1.2
    pos: tuple[float, float]  # place in the frame's free space, each in [-1, 1]


def _pair_layout(pair: int) -> tuple[str, str]:
    # Neighbouring pairs differ in both path and shape, so even 4 classes are not a shape test.
    p, s = len(PATHS), len(SHAPES)
    return PATHS[pair % p], SHAPES[(pair % p + pair // p) % s]


assert len({_pair_layout(i) for i in range(MAX_CLASSES // 2)}) == MAX_CLASSES // 2


def class_spec(label: int) -> ClassSpec:
    path, shape = _pair_layout(label // 2)
    return ClassSpec(label, WORD_PAIRS[label // 2][label % 2], shape, path, bool(label % 2))


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def signer_look(seed: int, signer: int) -> Look:
    rng = np.random.default_rng([seed, 1, signer])
    tone = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))])
    skin = tuple(int(v) for v in np.clip(tone + rng.integers(-12, 13, 3), 0, 255))
    # Rejection sampling keeps the hand visible against the torso and background for everyone.
    for _ in range(10_000):
        clothes = tuple(int(v) for v in rng.integers(20, 236, 3))
        bg = rng.integers(30, 226, 3)
        bg2 = tuple(int(v) for v in np.clip(bg + rng.integers(-35, 36, 3), 0, 255))
        bg = tuple(int(v) for v in bg)
        mid = np.add(bg, bg2) / 2
        if (
            min(_dist(skin, c) for c in (clothes, bg, bg2, mid)) >= MIN_CONTRAST
            and _dist(clothes, bg) >= 60  # the torso must stand out too
        ):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError(f"no contrasting colours for signer {signer}")
    return Look(
        bg=bg,
        bg2=bg2,
        texture=("gradient", "stripes")[int(rng.integers(2))],
        period=float(rng.uniform(10, 24)),
        skin=skin,
        clothes=clothes,
        scale=float(rng.uniform(0.8, 1.2)),
        pos=(float(rng.uniform(-0.9, 0.9)), float(rng.uniform(-0.9, 0.9))),
    )


def _layout(look: Look, w: int, h: int) -> tuple[float, float, float]:
    """Unit size and signer centre in pixels: relative to the frame, so any size shows it all."""
    x0, y0, x1, y1 = EXTENT
    u = look.scale / 1.2 * 0.94 * min(w / (x1 - x0), h / (y1 - y0))
    # The signer moves about inside the central square, like a real signer framed by the
    # camera: a centre crop of the short side (eval and serving) always shows all of them.
    side = min(w, h)
    cx = w / 2 - (x0 + x1) / 2 * u + look.pos[0] * max(0.0, side - (x1 - x0) * u) / 2
    cy = h / 2 - (y0 + y1) / 2 * u + look.pos[1] * max(0.0, side - (y1 - y0) * u) / 2
    return u, cx, cy


def _path(path: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward trajectory (x, y in units; hand scale) at phases t in [0, 1]."""
    cx, cy = SIGN_C
    one = np.ones_like(t)
    if path == "vertical":
        return cx * one, cy + AMP * (1 - 2 * t), one
    if path == "horizontal":
        return cx + AMP * (2 * t - 1), cy * one, one
    if path == "circle":  # starts at the bottom; increasing angle is clockwise with y down
        a = math.pi / 2 + 2 * math.pi * t
        return cx + 1.6 * np.cos(a), cy + 1.6 * np.sin(a), one
    if path == "diagonal":
        return cx + 1.4 * (2 * t - 1), cy - 1.4 * (2 * t - 1), one
    if path == "depth":  # the hand stays put and grows as it comes toward the camera
        return cx * one, cy * one, 0.5 + 1.3 * t
    raise ValueError(f"unknown path {path!r}")


def _fx(v: float) -> int:
    return round(v * 16)  # cv2 fixed point (shift=4): sub-pixel motion stays smooth


def _draw_hand(img, shape: str, x: float, y: float, r: float, colour) -> None:
    dark = tuple(int(c * 0.55) for c in colour)
    if shape == "disc":
        cv2.circle(img, (_fx(x), _fx(y)), _fx(r), colour, -1, cv2.LINE_AA, 4)
        cv2.circle(img, (_fx(x), _fx(y)), _fx(r), dark, 1, cv2.LINE_AA, 4)
        return
    if shape == "square":
        k = 0.7 * r
        pts = [(-k, -k), (k, -k), (k, k), (-k, k)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.radians([-90, 30, 150])]
    else:  # bar: a thin rectangle tilted 35 degrees
        c, s = math.cos(math.radians(35)), math.sin(math.radians(35))
        pts = [(px * c - py * s, px * s + py * c) for px, py in _bar_corners(r)]
    poly = np.array([[_fx(x + px), _fx(y + py)] for px, py in pts], dtype=np.int32)
    cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, 4)
    cv2.polylines(img, [poly], True, dark, 1, cv2.LINE_AA, 4)


def _bar_corners(r: float) -> list[tuple[float, float]]:
    a, b = 0.95 * r, 0.28 * r  # half length, half width: corners stay inside radius r
    return [(-a, -b), (a, -b), (a, b), (-a, b)]


def _background(look: Look, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if look.texture == "gradient":
        wgt = yy / max(h - 1, 1)
    else:
        wgt = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy) / look.period)
    img = np.array(look.bg, np.float32) * (1 - wgt[..., None]) + np.array(look.bg2) * wgt[..., None]
    return np.round(img).astype(np.uint8)


def render_clip(
    spec: ClassSpec,
    look: Look,
    size: tuple[int, int],
    n_sign: int,
    n_pre: int = 0,
    n_post: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """BGR uint8 frames (idle, sign proper, idle) and the signer's bbox [x0, y0, x1, y1].

    With rng=None there is no offset, jitter or noise, so class 2i+1's frames are exactly class
    2i's frames in reverse order.
    """
    w, h = size
    n = n_pre + n_sign + n_post
    if rng is None:
        offset, jitter = np.zeros(2), np.zeros((n, 2))
    else:
        offset = rng.uniform(-0.1, 0.1, 2)
        jitter = np.clip(rng.normal(0, 0.04, (n, 2)), -0.08, 0.08)
    u, cx, cy = _layout(look, w, h)
    cx, cy = cx + offset[0] * u, cy + offset[1] * u

    # Reverse the step index, not the phase: 1 - k/(n-1) is not always bitwise k'/(n-1).
    steps = np.arange(n_sign)[::-1] if spec.reverse else np.arange(n_sign)
    px, py, ps = _path(spec.path, steps / max(n_sign - 1, 1))
    xs = np.concatenate([np.full(n_pre, REST_RIGHT[0]), px, np.full(n_post, REST_RIGHT[0])])
    ys = np.concatenate([np.full(n_pre, REST_RIGHT[1]), py, np.full(n_post, REST_RIGHT[1])])
    rs = np.concatenate([np.ones(n_pre), ps, np.ones(n_post)]) * HAND_R * u
    xs = cx + (xs + jitter[:, 0]) * u
    ys = cy + (ys + jitter[:, 1]) * u

    base = _background(look, w, h)
    tx0, ty0, tx1, ty1 = (
        cx + TORSO[0] * u,
        cy + TORSO[1] * u,
        cx + TORSO[2] * u,
        cy + TORSO[3] * u,
    )
    dark_clothes = tuple(int(c * 0.6) for c in look.clothes)
    for colour, thick in ((look.clothes, -1), (dark_clothes, 1)):
        cv2.rectangle(base, (_fx(tx0), _fx(ty0)), (_fx(tx1), _fx(ty1)), colour, thick, 8, 4)
    hx, hy, hr = cx + HEAD[0] * u, cy + HEAD[1] * u, HEAD[2] * u
    _draw_hand(base, "disc", hx, hy, hr, look.skin)  # the head: same skin colour and outline
    lx, ly = cx + REST_LEFT[0] * u, cy + REST_LEFT[1] * u
    _draw_hand(base, "disc", lx, ly, HAND_R * u, look.skin)

    frames = []
    for x, y, r in zip(xs, ys, rs, strict=True):
        f = base.copy()
        _draw_hand(f, spec.shape, x, y, r, look.skin)
        if rng is not None:
            f = cv2.add(f, rng.integers(0, 7, f.shape, dtype=np.uint8))
        frames.append(f)

    bx0 = min(tx0, hx - hr, lx - HAND_R * u, float(np.min(xs - rs)))
    by0 = min(ty0, hy - hr, ly - HAND_R * u, float(np.min(ys - rs)))
    bx1 = max(tx1, hx + hr, lx + HAND_R * u, float(np.max(xs + rs)))
    by1 = max(ty1, hy + hr, ly + HAND_R * u, float(np.max(ys + rs)))
    bbox = [
        max(0, math.floor(bx0)),
        max(0, math.floor(by0)),
        min(w - 1, math.ceil(bx1)),
        min(h - 1, math.ceil(by1)),
    ]
    return frames, bbox


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
    signers: int = 24,
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
