"""The Triton forward: the network runs on a KServe v2 predictor (Triton Inference Server, KServe's
`kserve-tritonserver` runtime, serving the repository `sign2text model triton-repo` writes) that
this process fronts as a KServe transformer (model/runtimes/choice.py's contract).

One v2 REST request per batch: input "clip" UINT8 [B, 3, T, H, W] (FP32, scaled here, for an
export from before the graph scaled clips itself), output "per_time_logits"
FP32 [B, N, T'] (components/release/onnx_export.py's names), both as raw little-endian bytes after
the JSON header (the binary tensor data extension, which Triton and kserve both speak): a 64 x 224
clip is 9.6 MB of bytes, which JSON would quadruple. Batches larger than the predictor's
max_batch_size (Triton's model configuration, asked for once) go as several requests.

REST through httpx, kserve's own dependency: tritonclient.grpc cannot share a process with
kserve (both register the same gRPC protos), and the serving image has no tritonclient.
"""

from __future__ import annotations

import json

import httpx
import numpy as np

from model.modeldir import ModelInfo
from model.video.clip import normalize

INPUT, OUTPUT = "clip", "per_time_logits"
MODEL = "sign2text"
# The repository writer's default too (components/release/triton_repo.py): what is assumed when the
# predictor does not say (a v2 server without Triton's model configuration extension).
MAX_BATCH_SIZE = 8
HEADER = "Inference-Header-Content-Length"
DATATYPES = {"uint8": "UINT8", "float32": "FP32"}  # numpy -> v2 (Triton: TYPE_ + the same)


class PredictorError(RuntimeError):
    """The predictor is unreachable, refused the request, or answered something other than this
    model's per-time logits. Not a ValueError: serving answers those as the client's fault."""


class TritonRuntime:
    name = "triton"

    def __init__(
        self,
        base_url: str,
        model: str,
        classes: int,
        timeout_s: float = 60.0,
        max_batch_size: int = MAX_BATCH_SIZE,
        value_range=None,
    ):
        """value_range: where the predictor's graph takes float32 clips, their range (the clips
        are scaled here); None where it takes preprocessing's uint8 ones."""
        self.value_range = value_range
        self.url = f"{base_url.rstrip('/')}/v2/models/{model}"
        self.classes = classes
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self._asked = False  # whether the predictor's own max_batch_size was asked for
        self._client = httpx.Client(timeout=timeout_s)

    def logits(self, clips: np.ndarray) -> np.ndarray:
        if clips.dtype != np.uint8:
            raise TypeError(f"clips must be uint8 (preprocessing's output), got {clips.dtype}")
        if self.value_range is not None:
            clips = normalize(clips, self.value_range).astype("<f4", copy=False)
        x = np.ascontiguousarray(clips)
        if not self._asked:
            self.max_batch_size = self._predictor_max_batch() or self.max_batch_size
            self._asked = True
        n = self.max_batch_size
        per_time = [self._infer(x[i : i + n]) for i in range(0, len(x), n)]
        return np.concatenate(per_time).max(axis=2).astype(np.float32, copy=False)

    def close(self) -> None:
        self._client.close()

    def _predictor_max_batch(self) -> int | None:
        """Triton's model configuration extension (GET .../config); None where the predictor
        has none or cannot be asked now (the first inference then says what is wrong)."""
        try:
            r = self._client.get(f"{self.url}/config")
            value = r.json().get("max_batch_size") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and value >= 1 else None

    def _infer(self, x: np.ndarray) -> np.ndarray:
        header = {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": list(x.shape),
                    "datatype": DATATYPES[x.dtype.name],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
        head = json.dumps(header).encode()
        try:
            r = self._client.post(
                f"{self.url}/infer",
                content=head + x.tobytes(),
                headers={HEADER: str(len(head)), "Content-Type": "application/octet-stream"},
            )
        except httpx.TimeoutException:
            raise PredictorError(
                f"the predictor at {self.url} did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as e:
            raise self._diagnosed(e) from None
        if r.status_code != 200:
            raise PredictorError(
                f"the predictor at {self.url} answered HTTP {r.status_code}: {_error(r)}"
            )
        return self._per_time(r, len(x))

    def _diagnosed(self, e: httpx.HTTPError) -> PredictorError:
        """A server may refuse a request (no such model, say) before reading its body, then close
        the connection: the sender sees a reset. Its readiness endpoint tells which it was."""
        try:
            r = self._client.get(f"{self.url}/ready")
        except httpx.HTTPError:
            return PredictorError(f"the predictor at {self.url} is unreachable: {e}")
        if r.status_code != 200:
            return PredictorError(
                f"the predictor at {self.url} answered HTTP {r.status_code}: {_error(r)}"
            )
        return PredictorError(f"the predictor at {self.url} dropped the request: {e}")

    def _per_time(self, r: httpx.Response, batch: int) -> np.ndarray:
        """The response's per_time_logits, B x classes x T', from binary data or JSON."""
        body = r.content
        try:
            json_length = int(r.headers.get(HEADER, len(body)))
            outputs = json.loads(body[:json_length])["outputs"]
            offset = json_length  # binary outputs follow the header, in the outputs' order
            for out in outputs:
                size = (out.get("parameters") or {}).get("binary_data_size")
                if out["name"] == OUTPUT:
                    break
                offset += size or 0
            else:
                raise PredictorError(f"the predictor at {self.url} answered no {OUTPUT} output")
            if out.get("datatype") != "FP32":
                raise PredictorError(
                    f"the predictor at {self.url} answered {OUTPUT} as {out.get('datatype')}, "
                    "not FP32"
                )
            shape = [int(d) for d in out["shape"]]
            if size is not None:
                data = np.frombuffer(body, "<f4", count=int(size) // 4, offset=offset)
            else:
                data = np.asarray(out["data"], dtype=np.float32)
            per_time = data.reshape(shape)
        except (KeyError, TypeError, ValueError) as e:  # not a v2 answer, or one that lies
            raise PredictorError(
                f"the predictor at {self.url} answered no readable "
                f"{OUTPUT} ({type(e).__name__}: {e})"
            ) from None
        if len(shape) != 3 or shape[:2] != [batch, self.classes] or shape[2] < 1:
            raise PredictorError(
                f"the predictor at {self.url} answered {OUTPUT} of shape {shape}, want "
                f"[{batch}, {self.classes}, T']: is it serving this model directory's model.onnx?"
            )
        return per_time


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"])
    except (ValueError, KeyError, TypeError):
        return r.text[:300] or r.reason_phrase


def load(
    info: ModelInfo,
    device: str = "cpu",
    *,
    predictor_host: str,
    protocol: str = "v2",
    use_ssl: bool = False,
    timeout_s: float = 60.0,
    model: str = MODEL,
    max_batch_size: int = MAX_BATCH_SIZE,
) -> TritonRuntime:
    """`predictor_host` as KServe passes it to a transformer (`--predictor_host`): host[:port],
    no scheme. `device` is the predictor's business (Triton's instance_group), not this one's."""
    if protocol != "v2":
        raise ValueError(
            f"the triton runtime speaks the v2 REST protocol, not {protocol!r} "
            "(--predictor_protocol v2)"
        )
    if not predictor_host:
        raise ValueError("the triton runtime needs the predictor's address (--predictor_host)")
    if "://" not in predictor_host:
        predictor_host = f"{'https' if use_ssl else 'http'}://{predictor_host}"
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    value_range = None if info.onnx_takes_uint8 else info.preprocess.value_range
    return TritonRuntime(
        predictor_host, model, info.num_classes, timeout_s, max_batch_size, value_range
    )
