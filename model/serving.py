"""KServe v2 (Open Inference Protocol) predictor `sign2text`.

Requests are decoded and checked by model/request.py (its docstring has the inputs and
parameters); the answer is model/predict.py's Classifier.word or Classifier.sentence.
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

from model.predict import Classifier, Limits, Prediction
from model.request import NAME, Request, parse
from model.sentence import Word
from model.storage import fetch

STAGE_SECONDS = Histogram(
    "sign2text_stage_seconds",
    "sign2text request time per stage: decode (read + validate input), preprocess "
    "(load_clip / clip_from_frames), inference (forward)",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
for _stage in ("decode", "preprocess", "inference"):  # at zero from start-up: no dashboard gap
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
        self.limits = Limits(max_duration_s=float(max_duration_s), max_frames=int(max_frames))
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
            raise InvalidInput(
                f"sign2text speaks the v2 protocol: POST /v2/models/{self.name}/infer"
            )
        if self.classifier is None:  # kserve checks readiness first; this is for direct callers
            raise ModelNotReady(self.name)
        request = parse(
            payload,
            classes=len(self.classifier.labels),
            max_video_bytes=self.max_video_bytes,
            max_frames=self.limits.max_frames,
        )
        # Decoding and the forward pass block for long; a worker thread keeps the event loop
        # (health checks, other requests, gRPC) responsive meanwhile. One thread, not the
        # default pool: torch already uses every core per forward, and each extra thread would
        # grow its own malloc arena (measured: +25% RSS over 300 requests with the default pool).
        if self._pool is None:  # created lazily: kserve pickles the model for --workers N
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sign2text-infer")
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._pool, self._answer, request)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            # numpy outputs always go to gRPC's raw_output_contents; passing the flag for gRPC
            # too trips kserve 0.21's to_grpc (`if ... and data` on an ndarray -> ValueError).
            use_binary_outputs=payload.use_binary_outputs and not payload.from_grpc,
            requested_outputs=payload.request_outputs,
        )

    def _answer(self, request: Request) -> list[InferOutput]:
        clf, kw = self.classifier, {"limits": self.limits, "timer": _stage}
        with _video(request) as video:
            try:
                if request.mode == "sentence":
                    return _sentence_outputs(clf.sentence(video, **request.sentence, **kw))
                return _word_outputs(clf.word(video, request.top_k, **kw))
            except ValueError as e:  # the classifier's ValueErrors are about its input
                msg = str(e)
                if isinstance(video, Path):  # the client never saw our scratch file's name
                    msg = msg.replace(str(video), "the uploaded video")
                raise InvalidInput(msg) from None


@contextlib.contextmanager
def _video(request: Request):
    """The request's video as the classifier takes it: BGR frames, or a file FFmpeg can read."""
    if request.frames is None:
        with _spooled(request.video) as path:
            yield path
        return
    with _stage("decode"):
        bgr = np.ascontiguousarray(request.frames[..., ::-1])  # RGB on the wire, BGR inside
    yield bgr


@contextlib.contextmanager
def _spooled(data: bytes):
    """The bytes in a private file, in RAM-backed /dev/shm when they fit."""
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


def _word_outputs(pred: Prediction) -> list[InferOutput]:
    glosses = np.array([g.encode("utf-8") for g in pred.glosses], dtype=np.object_)
    scores = np.asarray(pred.scores, dtype=np.float32)
    return [
        InferOutput("glosses", [len(glosses)], "BYTES", data=glosses),
        InferOutput("scores", [len(scores)], "FP32", data=scores),
    ]


def _sentence_outputs(words: list[Word]) -> list[InferOutput]:
    n = len(words)
    glosses = np.array([w.gloss.encode("utf-8") for w in words], dtype=np.object_)
    spans = np.array([[w.start, w.end] for w in words], dtype=np.int32).reshape(n, 2)
    conf = np.array([w.confidence for w in words], dtype=np.float32)
    return [
        InferOutput("words", [n], "BYTES", data=glosses),
        InferOutput("spans", [n, 2], "INT32", data=spans),
        InferOutput("confidences", [n], "FP32", data=conf),
    ]
