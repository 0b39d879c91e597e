"""KServe v2 (Open Inference Protocol) predictor `sign2text`.

Requests are decoded and checked by model/serving/request.py (its docstring has the inputs and
parameters); the answer is model/predict.py's Classifier.word or Classifier.sentence.
Outputs: word mode `glosses` BYTES [k], `scores` FP32 [k]; sentence mode `words` BYTES [n],
`spans` INT32 [n, 2], `confidences` FP32 [n], and, only when asked for by name, `frame_probs`
FP32 [T, n + 1]: per frame, the probability of each word's gloss (column j: words[j]) and of
no sign (last column) -- what a timeline of the words over the video draws. Windows mode (live):
`window_probs` FP32 [k, glosses + 1] (each window's probabilities, no sign last),
`window_centres` INT32 [k] and `window` INT32 [1]; and, only when asked for by name, `glosses`
BYTES [glosses]: the model's glosses in the columns' order.

Anything wrong with a request raises kserve's InvalidInput (HTTP 400 / gRPC INVALID_ARGUMENT);
any other exception is a bug in this server (500 / INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import Histogram

from model.files import hash_file
from model.kserve_compat import (
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    Model,
    ModelNotReady,
    logger,
)
from model.modeldir import WEIGHTS
from model.predict import Classifier, Prediction
from model.runtimes.triton_runtime import PredictorError
from model.sentence import Word
from model.serving.batching import Batcher
from model.serving.decoder import POLL_S, Cancelled, Decoder
from model.serving.guard import DEFAULT_LIMITS, Overloaded
from model.serving.request import NAME, Request, parse
from model.storage import fetch, is_uri
from model.video.limits import Limits

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
    {"name": "frame_probs", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "window_probs", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "window_centres", "datatype": "INT32", "shape": [-1]},
    {"name": "window", "datatype": "INT32", "shape": [1]},
]


class Sign2TextModel(Model):
    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        max_video_bytes: int = 32 << 20,
        limits: Limits = DEFAULT_LIMITS,
        decoder_memory_bytes: int = 768 << 20,
        time_budget_s: float = 60.0,
        max_in_flight: int = 4,
        decoders: int = 2,
        device: str = "cpu",
        runtime: str = "auto",
        max_batch_size: int = 8,
        max_batch_wait_s: float = 0.005,
        runtime_options: dict | None = None,
        name: str = NAME,
    ):
        super().__init__(name)
        self.model_dir = str(model_dir)
        self.max_video_bytes = int(max_video_bytes)
        self.limits = limits
        self.decoder_memory_bytes = int(decoder_memory_bytes)
        self.time_budget_s = float(time_budget_s)
        self.max_in_flight = int(max_in_flight)
        self.decoder_count = max(1, int(decoders))
        self.device = device
        # Which network runs the forward, and its options (model/runtimes/choice.py): "triton" when
        # this server is a KServe transformer in front of a Triton predictor.
        self.runtime = runtime
        self.runtime_options = dict(runtime_options or {})
        self.max_batch_size = int(max_batch_size)
        self.max_batch_wait_s = float(max_batch_wait_s)
        self.classifier: Classifier | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.decoders: list[Decoder] = []  # lent to one request at a time through _free
        # Last in, first out: the warm child goes to the next request; the others start (a
        # Python process, ~0.3 s) only when that many videos are decoded at once.
        self._free: queue.LifoQueue[Decoder] = queue.LifoQueue()
        self._batcher: Batcher | None = None
        self._fetched: Path | None = None  # a download this model owns and removes at stop()
        self.version: str | None = None
        self.platform: str | None = None  # the metadata's platform: runtime-precision
        self._in_flight = 0
        self._seconds = 1.0  # running mean of a request's time, for Retry-After

    def load(self) -> bool:
        sweep_orphans()
        # A local path is used as is; s3:// gs:// https:// ... are downloaded (model/storage.py).
        path = fetch(self.model_dir)
        if is_uri(self.model_dir):
            self._fetched = path
        self.classifier = Classifier(path, self.device, self.runtime, **self.runtime_options)
        # Every forward, word or sentence mode, goes through one batcher
        # (model/serving/batching.py).
        runtime = self.classifier.runtime
        self.platform = f"{runtime.name}-{runtime.precision}"  # e.g. openvino-bf16
        self._batcher = Batcher(
            runtime, self.max_batch_size, self.max_batch_wait_s, lambda: self._in_flight
        )
        self.classifier.runtime = self._batcher
        # The model's version in its metadata: its weights' hash, so equal bytes, equal version;
        # in front of Triton, or with model.onnx alone, the recorded hash of that model.onnx.
        weights, onnx = Path(path) / WEIGHTS, self.classifier.info.config.get("onnx")
        if self.runtime != "triton" and weights.is_file():
            self.version = hash_file(weights)[:12]
        else:
            self.version = onnx["sha256"][:12] if onnx else None
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """At shutdown: the decoder processes, the threads and any download go."""
        for decoder in self.decoders:
            decoder.close()
        if self._batcher is not None:
            self._batcher.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._fetched is not None:
            shutil.rmtree(
                self._fetched if self._fetched.is_dir() else self._fetched.parent,
                ignore_errors=True,
            )
            self._fetched = None
        self.ready = False

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
        with self._admitted():
            outputs = await self._run(request)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            # numpy outputs always go to gRPC's raw_output_contents; passing the flag for gRPC
            # too trips kserve 0.21's to_grpc (`if ... and data` on an ndarray -> ValueError).
            use_binary_outputs=payload.use_binary_outputs and not payload.from_grpc,
            requested_outputs=payload.request_outputs,
        )

    @contextlib.contextmanager
    def _admitted(self):
        """At most max_in_flight requests wait for or hold the worker; the rest get a 503
        at once, rather than a queue whose wait nobody bounds."""
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(
                f"the server is busy ({self._in_flight} requests in flight); retry later",
                retry_after_s=self._seconds * self._in_flight,
            )
        self._in_flight += 1
        start = time.monotonic()
        try:
            yield
        finally:
            self._in_flight -= 1
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)

    async def _run(self, request: Request) -> list[InferOutput]:
        # Decoding and the forward pass block for long; worker threads keep the event loop
        # (health checks, other requests, gRPC) responsive meanwhile. One per request that may
        # be in flight, so requests decode while others' clips run through the batcher's
        # forward; no more, as each thread grows its own malloc arena (measured: +25% RSS over
        # 300 requests with the default pool). Decoder processes are fewer (--decoders): each
        # may take up to its memory ceiling, so their number bounds the server's memory.
        if self._pool is None:  # lazily: a model never asked starts no decoder processes
            self._pool = ThreadPoolExecutor(self.max_in_flight, "sign2text-request")
            # Children start on their first video.
            self.decoders = [Decoder(self.decoder_memory_bytes) for _ in range(self.decoder_count)]
            for decoder in self.decoders:
                self._free.put(decoder)
        # The budget runs from arrival: time spent waiting for the worker counts.
        work = Work(time.monotonic() + self.time_budget_s, threading.Event())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._answer, request, work)
        except asyncio.CancelledError:  # the client left (REST disconnect, gRPC cancel)
            work.cancelled.set()  # the worker stops at its next check instead of finishing
            raise
        except Cancelled as e:
            raise Overloaded(
                f"{e} of {self.time_budget_s:g} s; send a shorter video, or "
                "in sentence mode a larger stride"
            ) from None

    def _answer(self, request: Request, work: Work) -> list[InferOutput]:
        try:
            return self._work(request, work)
        except Cancelled as e:  # the caller may be gone: say in the log that the work stopped
            logger.info("sign2text: stopped a request's work: %s", e)
            raise

    def _read(self, path, mode, cfg, limits, work: Work) -> np.ndarray:
        """model/serving/decoder.py's read on a free decoder, waited for within the request's
        budget."""
        while True:
            work.stop()
            try:
                decoder = self._free.get(timeout=POLL_S)
                break
            except queue.Empty:
                continue
        try:
            return decoder.read(
                path, mode, cfg, limits, deadline=work.deadline, cancelled=work.cancelled
            )
        finally:
            self._free.put(decoder)

    def _work(self, request: Request, work: Work) -> list[InferOutput]:
        work.stop()  # waited past its budget, or its client left, before its turn came
        reader = functools.partial(self._read, work=work)
        clf, kw = self.classifier, {"limits": self.limits, "timer": _stage, "reader": reader}
        with _video(request) as video:
            try:
                if request.mode == "sentence":
                    probs: list[np.ndarray] = []
                    keep = probs.append if "frame_probs" in request.outputs else None
                    out = clf.sentence(
                        video, **request.sentence, **kw, stop=work.stop, on_probs=keep
                    )
                    return _sentence_outputs(out) + [
                        _probs_output(p, out, clf.labels) for p in probs
                    ]
                if request.mode == "windows":
                    scored = clf.windows(video, **request.sentence, **kw, stop=work.stop)
                    named = "glosses" in request.outputs
                    return _windows_outputs(*scored, clf.labels if named else None)
                return _word_outputs(clf.word(video, request.top_k, **kw))
            except PredictorError as e:  # Triton down or restarting: not this request's fault
                raise Overloaded(f"the predictor is unavailable: {e}", retry_after_s=5) from None
            except ValueError as e:  # the classifier's ValueErrors are about its input
                msg = str(e)
                if isinstance(video, Path):  # the client never saw our scratch file's name
                    msg = msg.replace(str(video), "the uploaded video")
                raise InvalidInput(msg) from None


@dataclass(frozen=True)
class Work:
    """One request's claim on the worker: when its time is up, and whether its client left."""

    deadline: float  # time.monotonic()
    cancelled: threading.Event

    def stop(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the client went away")
        if time.monotonic() > self.deadline:
            raise Cancelled("the request ran past its time budget")


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


SHM = "/dev/shm"  # noqa: S108
SPOOL_PREFIX = "sign2text-input-"


def _spool_dirs() -> list[str | None]:
    return [SHM, None] if os.access(SHM, os.W_OK) else [None]


@contextlib.contextmanager
def _spooled(data: bytes):
    """The bytes in a private file, in RAM-backed /dev/shm when they fit."""
    # mkdtemp inside it: a private 0700 directory, so the shared /dev/shm is safe to use. The
    # pid in its name lets the next server remove it if this one is killed mid-request.
    dirs = _spool_dirs()
    for i, d in enumerate(dirs):
        tmp = tempfile.TemporaryDirectory(dir=d, prefix=f"{SPOOL_PREFIX}{os.getpid()}-")
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


def sweep_orphans() -> list[Path]:
    """Remove spooled inputs left by servers of this user that died mid-request (their pid is
    gone); never anything of another user's, nor of a live process."""
    removed = []
    for d in _spool_dirs():
        for path in Path(d or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*"):
            pid = path.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
            try:
                mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
            except OSError:
                continue
            if mine and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def _probs_output(probs: np.ndarray, words: list[Word], labels: list[str]) -> InferOutput:
    """The words' glosses and no sign only: all glosses would be frames x 2000 for WLASL."""
    columns = [labels.index(w.gloss) for w in words] + [len(labels)]
    picked = np.ascontiguousarray(probs[:, columns], dtype=np.float32)
    return InferOutput("frame_probs", list(picked.shape), "FP32", data=picked)


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


def _windows_outputs(
    centres: np.ndarray, probs: np.ndarray, window: int, labels: list[str] | None
) -> list[InferOutput]:
    outputs = [
        InferOutput("window_probs", list(probs.shape), "FP32", data=probs.astype(np.float32)),
        InferOutput("window_centres", [len(centres)], "INT32", data=centres.astype(np.int32)),
        InferOutput("window", [1], "INT32", data=np.array([window], np.int32)),
    ]
    if labels is not None:
        glosses = np.array([g.encode("utf-8") for g in labels], dtype=np.object_)
        outputs.append(InferOutput("glosses", [len(glosses)], "BYTES", data=glosses))
    return outputs
