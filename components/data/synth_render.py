"""The synthetic signer and one clip of a sign: what `sign2text data synth` draws.

A class is a hand shape moving along a path in one direction (`class_spec`); its pair is the same
shape on the same path the other way, an exact time-reversal. A signer is a look (`signer_look`):
background, skin, clothes, size and position in the frame. `render_clip` draws one video of a
class signed by a signer, with idle frames around the sign proper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

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
