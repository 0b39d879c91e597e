"""KServe v2 (Open Inference Protocol) predictor `sign2text`.

Input: `video` (BYTES [1], an encoded file) or `frames` (UINT8 [T, H, W, 3], RGB).
Parameters: `top_k` (int, default 5), `mode` (`word` | `sentence`); sentence mode also takes
`window`, `stride` (int, frames) and `threshold` (float), defaults from the model directory.
Outputs: word mode `glosses` BYTES [k], `scores` FP32 [k]; sentence mode `words` BYTES [n],
`spans` INT32 [n, 2], `confidences` FP32 [n].

Anything wrong with a request raises kserve's InvalidInput (HTTP 400 / gRPC INVALID_ARGUMENT);
any other exception is a bug in this server (500 / INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kserve
import numpy as np
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Histogram

from model import video as V
from model.predict import Classifier
from model.storage import fetch

NAME = "sign2text"
MODES = ("word", "sentence")
STAGES = ("decode", "preprocess", "inference")

STAGE_SECONDS = Histogram(
    "sign2text_stage_seconds",
    "sign2text request time per stage: decode (read + validate input), preprocess "
    "(load_clip / clip_from_frames), inference (forward)",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
for _stage in STAGES:  # present (at zero) from start-up, so dashboards never see a gap
    STAGE_SECONDS.labels(stage=_stage)

INPUTS = [
    {"name": "video", "datatype": "BYTES", "shape": [1]},
    {"name": "frames", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
]
OUTPUTS = [
    {"name": "glosses", "datatype": "BYTES", "shape": [-1]},
    {"name": "scores", "datatype": "FP32", "shape": [-1]},
    {"name": "words", "datatype": "BYTES", "shape": [-1]},
    {"name": "spans", "datatype": "INT32", "shape": [-1, 2]},
    {"name": "confidences", "datatype": "FP32", "shape": [-1]},
]


def _plain(value):
    """gRPC parameters arrive as InferParameter messages; REST ones as plain JSON values."""
    if hasattr(value, "WhichOneof"):
        field = value.WhichOneof("parameter_choice")
        return getattr(value, field) if field else None
    return value


def _int_param(params: dict, name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r}")
    return value


def _sentence_params(params: dict) -> dict:
    """The sentence-mode parameters the request gave; their ranges are checked by transcribe."""
    opts = {name: _int_param(params, name, 0) for name in ("window", "stride") if name in params}
    if "threshold" in params:
        value = params["threshold"]
        try:
            if isinstance(value, bool):
                raise TypeError
            opts["threshold"] = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"parameter threshold must be a number, got {value!r}") from None
    return opts


@contextlib.contextmanager
def _spooled(data: bytes):
    """The request's video as a file (FFmpeg reads files), in RAM-backed /dev/shm when it fits."""
    # mkdtemp inside it: a private 0700 directory, so the shared /dev/shm is safe to use.
    shm = "/dev/shm"  # noqa: S108
    dirs = [shm, None] if os.access(shm, os.W_OK) else [None]
    for i, d in enumerate(dirs):
        tmp = tempfile.TemporaryDirectory(dir=d, prefix="sign2text-")
        path = Path(tmp.name) / "input.video"
        try:
            path.write_bytes(data)
        except OSError:
            tmp.cleanup()
            if i == len(dirs) - 1:
                raise
            continue  # /dev/shm full: disk is slower but the request still succeeds
        with tmp:
            yield path
        return


@contextlib.contextmanager
def _stage(name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - start)


class Sign2TextModel(kserve.Model):
    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        max_video_bytes: int = 32 << 20,
        max_duration_s: float = 60.0,
        max_frames: int = 1500,
        device: str = "cpu",
        name: str = NAME,
    ):
        super().__init__(name)
        self.model_dir = str(model_dir)
        self.max_video_bytes = int(max_video_bytes)
        self.max_duration_s = float(max_duration_s)
        self.max_frames = int(max_frames)
        self.device = device
        self.classifier: Classifier | None = None
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> bool:
        # A local path is used as is; s3:// gs:// https:// ... go through kserve_storage.
        self.classifier = Classifier(fetch(self.model_dir), self.device)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [dict(t) for t in INPUTS]

    def get_output_types(self) -> list[dict]:
        return [dict(t) for t in OUTPUTS]

    async def predict(self, payload, headers=None, response_headers=None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("sign2text speaks the v2 protocol: POST /v2/models/sign2text/infer")
        if self.classifier is None:  # kserve checks readiness first; this is for direct callers
            raise ModelNotReady(self.name)
        name, data, top_k, mode, opts = self._parse(payload)
        # Decoding and the forward pass block for long; a worker thread keeps the event loop
        # (health checks, other requests, gRPC) responsive meanwhile. One thread, not the
        # default pool: torch already uses every core per forward, and each extra thread would
        # grow its own malloc arena (measured: +25% RSS over 300 requests with the default pool).
        if self._pool is None:  # created lazily: kserve pickles the model for --workers N
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sign2text-infer")
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._pool, self._run, name, data, top_k, mode, opts)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            # numpy outputs always go to gRPC's raw_output_contents; passing the flag for gRPC
            # too trips kserve 0.21's to_grpc (`if ... and data` on an ndarray -> ValueError).
            use_binary_outputs=payload.use_binary_outputs and not payload.from_grpc,
            requested_outputs=payload.request_outputs,
        )

    def _parse(self, req: InferRequest) -> tuple[str, np.ndarray | bytes, int, str, dict]:
        params = {k: _plain(v) for k, v in (req.parameters or {}).items()}
        top_k = _int_param(params, "top_k", 5)
        try:
            self.classifier.check_top_k(top_k)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        mode = params.get("mode", "word")
        if mode not in MODES:
            raise InvalidInput(f"parameter mode must be one of {list(MODES)}, got {mode!r}")
        opts = _sentence_params(params)

        names = [i.name for i in req.inputs]
        if not names:
            raise InvalidInput("no input: send `video` (BYTES [1]) or `frames` (UINT8 [T,H,W,3])")
        unknown = sorted(set(names) - {"video", "frames"})
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}: expected `video` or `frames`")
        if len(names) > 1:
            raise InvalidInput(f"send exactly one of `video` or `frames`, got {names}")
        inp = req.inputs[0]
        if inp.name == "video":
            return "video", self._video_bytes(inp), top_k, mode, opts
        return "frames", self._frames(inp), top_k, mode, opts

    @staticmethod
    def _as_numpy(inp) -> np.ndarray:
        try:
            return inp.as_numpy()
        except InvalidInput:
            raise
        except Exception as e:  # whatever the client's data fails with, it is the client's data
            msg = f"input {inp.name}: data does not match its datatype/shape: {e}"
            raise InvalidInput(msg) from None

    def _video_bytes(self, inp) -> bytes:
        if inp.datatype != "BYTES":
            raise InvalidInput(f"input video must be BYTES, got {inp.datatype}")
        if [int(d) for d in inp.shape] != [1]:
            raise InvalidInput(f"input video must have shape [1] (one file), got {list(inp.shape)}")
        arr = self._as_numpy(inp)
        if arr.size != 1:
            raise InvalidInput(f"input video must hold one element, got {arr.size}")
        data = arr.reshape(-1)[0]
        if isinstance(data, str):  # REST JSON carries BYTES as text
            data = data.encode("utf-8", "surrogateescape")
        if not isinstance(data, bytes | bytearray):
            raise InvalidInput(f"input video must be bytes, got {type(data).__name__}")
        if not data:
            raise InvalidInput("input video is empty (0 bytes)")
        if len(data) > self.max_video_bytes:
            raise InvalidInput(
                f"input video is {len(data)} bytes; the limit is {self.max_video_bytes} bytes"
            )
        return bytes(data)

    def _frames(self, inp) -> np.ndarray:
        if inp.datatype != "UINT8":
            raise InvalidInput(f"input frames must be UINT8, got {inp.datatype}")
        shape = [int(d) for d in inp.shape]
        if len(shape) != 4 or shape[3] != 3:
            raise InvalidInput(f"input frames must be [T, H, W, 3] RGB, got shape {shape}")
        if min(shape) < 1:
            raise InvalidInput(f"input frames has an empty dimension: shape {shape}")
        if shape[0] > self.max_frames:
            raise InvalidInput(
                f"input frames has {shape[0]} frames; the limit is {self.max_frames}"
            )
        return self._as_numpy(inp)

    def _run(self, name: str, data, top_k: int, mode: str, opts: dict) -> list[InferOutput]:
        if name == "frames":
            with _stage("decode"):
                frames_bgr = np.ascontiguousarray(data[..., ::-1])  # RGB on the wire, BGR inside
            return self._infer_frames(frames_bgr, top_k, mode, opts)
        with _spooled(data) as path:
            try:
                with _stage("decode"):
                    self._check_video(path)
                    if mode == "sentence":
                        frames_bgr = self._all_frames(path)
                if mode == "sentence":
                    return self._infer_frames(frames_bgr, top_k, mode, opts)
                with _stage("preprocess"):
                    clip = V.load_clip(path, self.classifier.bundle.preprocess)
            except ValueError as e:  # our messages name the scratch file; the client never saw it
                raise InvalidInput(str(e).replace(str(path), "the uploaded video")) from None
        return self._word(clip, top_k)

    def _all_frames(self, path: Path) -> np.ndarray:
        total = V.count_frames(path)  # exact: containers can claim more frames than they hold
        if total > self.max_frames:
            raise InvalidInput(f"video has {total} frames; the limit is {self.max_frames}")
        return V.decode(path, np.arange(total))

    def _check_video(self, path: Path) -> None:
        """Reject still images and long videos before decoding them."""
        info = V.probe(path)
        total = info.frames if info.frames > 0 else V.count_frames(path)
        if total <= 0:
            raise V.NoFrames("the video has no decodable frames")
        if total == 1:  # FFmpeg opens PNG/JPEG/WebP... as one-frame "videos"
            raise InvalidInput("not a video: a single still image (1 frame); send a video file")
        fps = info.fps if info.fps > 0 else self.classifier.bundle.preprocess.fps
        if total / fps > self.max_duration_s:
            raise InvalidInput(
                f"video is {total / fps:.1f} s long; the limit is {self.max_duration_s:g} s"
            )

    def _infer_frames(
        self, frames_bgr: np.ndarray, top_k: int, mode: str, opts: dict
    ) -> list[InferOutput]:
        if mode == "sentence":
            return self._sentence(frames_bgr, opts)
        try:
            with _stage("preprocess"):
                clip = V.clip_from_frames(frames_bgr, self.classifier.bundle.preprocess)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        return self._word(clip, top_k)

    def _word(self, clip, top_k: int) -> list[InferOutput]:
        with _stage("inference"):
            probs = self.classifier.probabilities(clip)[0]
        pred = self.classifier.top_k(probs, top_k)
        glosses = np.array([g.encode("utf-8") for g in pred.glosses], dtype=np.object_)
        scores = np.asarray(pred.scores, dtype=np.float32)
        return [
            InferOutput("glosses", [len(glosses)], "BYTES", data=glosses),
            InferOutput("scores", [len(scores)], "FP32", data=scores),
        ]

    def _sentence(self, frames_bgr: np.ndarray, opts: dict) -> list[InferOutput]:
        try:
            from model.sentence import transcribe
        except ModuleNotFoundError as e:
            if e.name != "model.sentence":
                raise
            raise InvalidInput("sentence mode unavailable in this server build") from None
        try:
            # transcribe windows, preprocesses and runs the model itself: one stage for all of it.
            with _stage("inference"):
                words = transcribe(self.classifier, frames_bgr, **opts)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        n = len(words)
        glosses = np.array([w.gloss.encode("utf-8") for w in words], dtype=np.object_)
        spans = np.array([[w.start, w.end] for w in words], dtype=np.int32).reshape(n, 2)
        conf = np.array([w.confidence for w in words], dtype=np.float32)
        return [
            InferOutput("words", [n], "BYTES", data=glosses),
            InferOutput("spans", [n, 2], "INT32", data=spans),
            InferOutput("confidences", [n], "FP32", data=conf),
        ]
