"""Decoding a KServe v2 inference request into what the classifier is asked.

    parse(InferRequest, classes=..., max_video_bytes=..., max_frames=...) -> Request
    request_from_binary(body, json_length, model_name) -> InferRequest   (REST binary extension)

Input: `video` (BYTES [1], an encoded file) or `frames` (UINT8 [T, H, W, 3], RGB).
Parameters: `top_k` (int, default 5; 0 = every gloss, ranked), `mode` (`word` | `sentence` |
`windows`); sentence mode also takes `window`, `stride` (int, frames) and `threshold` (float),
whose ranges transcribe checks; `windows` (a stream's next windows, for live mode: sentence
mode's first step alone, model/sentence.py's score_windows) takes `window`, `stride` and `start`
(int, the first window's centre frame).

Everything wrong with a request raises kserve's InvalidInput (HTTP 400 / gRPC INVALID_ARGUMENT)
with a message for the client, before any decoding work is spent on it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from model.kserve_compat import (
    InferInput,
    InferRequest,
    InvalidInput,
    RequestedOutput,
    deserialize_bytes_tensor,
    to_np_dtype,
)

NAME = "sign2text"  # the model's name in the v2 paths, /v2/models/sign2text/...
MODES = ("word", "sentence", "windows")
INPUTS = ("video", "frames")
MAX_BYTES_ELEMENTS = 16  # a BYTES input is one video; a few more still get a clear message


@dataclass(frozen=True)
class Request:
    """One checked request: the mode, and exactly one of video / frames."""

    mode: str  # one of MODES, decided here and nowhere else
    top_k: int
    sentence: dict = field(default_factory=dict)  # window / stride / threshold / start as given
    outputs: frozenset[str] = frozenset()  # outputs the client named (empty: the defaults)
    video: bytes | None = None  # an encoded file, within max_video_bytes
    frames: np.ndarray | None = None  # T x H x W x 3 uint8 RGB as sent, within max_frames


def parse(req: InferRequest, *, classes: int, max_video_bytes: int, max_frames: int) -> Request:
    """Check an InferRequest against the contract above; `classes` bounds top_k."""
    params = {k: _plain(v) for k, v in (req.parameters or {}).items()}
    top_k = _int_param(params, "top_k", 5)
    if top_k == 0:  # every gloss, ranked: what a client needs to learn the model's labels
        top_k = classes
    if not 1 <= top_k <= classes:
        raise InvalidInput(f"top_k must be between 1 and {classes} (0: all), got {top_k}")
    mode = params.get("mode", "word")
    if mode not in MODES:
        raise InvalidInput(f"parameter mode must be one of {list(MODES)}, got {mode!r}")
    sentence = _sentence_params(params, mode)

    names = [i.name for i in req.inputs]
    if not names:
        raise InvalidInput("no input: send `video` (BYTES [1]) or `frames` (UINT8 [T,H,W,3])")
    unknown = sorted(set(names) - set(INPUTS))
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}: expected `video` or `frames`")
    if len(names) > 1:
        raise InvalidInput(f"send exactly one of `video` or `frames`, got {names}")
    inp = req.inputs[0]
    named = frozenset(o.name for o in req.request_outputs or [])
    if inp.name == "video":
        return Request(mode, top_k, sentence, named, video=_video_bytes(inp, max_video_bytes))
    return Request(mode, top_k, sentence, named, frames=_frames(inp, max_frames))


# InferParameter fields of the v2 gRPC protocol that kserve 0.21's copy of the proto lacks
# (Triton's clients send a float parameter as double_param): field number -> its decoding.
_UNKNOWN_CHOICES = {
    4: lambda raw: struct.unpack("<d", struct.pack("<Q", raw))[0],  # double_param (fixed64)
    5: lambda raw: raw,  # uint64_param (varint)
}


def _plain(value):
    """gRPC parameters arrive as InferParameter messages; REST ones as plain JSON values."""
    if not hasattr(value, "WhichOneof"):
        return value
    if which := value.WhichOneof("parameter_choice"):
        return getattr(value, which)
    from google.protobuf.unknown_fields import UnknownFieldSet

    for unknown in UnknownFieldSet(value):
        if unknown.field_number in _UNKNOWN_CHOICES:
            return _UNKNOWN_CHOICES[unknown.field_number](unknown.data)
    return None


def _int_param(params: dict, name: str, default: int) -> int:
    value = params.get(name, default)
    # JSON clients send 5.0 or "5" as readily as 5
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r}")
    return value


def _sentence_params(params: dict, mode: str) -> dict:
    """Sentence mode's window / stride / threshold; the windows mode's window / stride / start."""
    ints = ("window", "stride", "start") if mode == "windows" else ("window", "stride")
    opts = {name: _int_param(params, name, 0) for name in ints if name in params}
    if "threshold" in params and mode == "sentence":
        value = params["threshold"]
        try:
            if isinstance(value, bool):
                raise TypeError
            opts["threshold"] = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"parameter threshold must be a number, got {value!r}") from None
    return opts


def _as_numpy(inp) -> np.ndarray:
    try:
        return inp.as_numpy()
    except InvalidInput:
        raise
    except Exception as e:  # whatever the client's data fails with, it is the client's data
        msg = f"input {inp.name}: data does not match its datatype/shape: {e}"
        raise InvalidInput(msg) from None


def _video_bytes(inp, max_bytes: int) -> bytes:
    if inp.datatype != "BYTES":
        raise InvalidInput(f"input video must be BYTES, got {inp.datatype}")
    if [int(d) for d in inp.shape] != [1]:
        raise InvalidInput(f"input video must have shape [1] (one file), got {list(inp.shape)}")
    arr = _as_numpy(inp)
    if arr.size != 1:
        raise InvalidInput(f"input video must hold one element, got {arr.size}")
    data = arr.reshape(-1)[0]
    if isinstance(data, str):  # REST JSON carries BYTES as text
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes | bytearray):
        raise InvalidInput(f"input video must be bytes, got {type(data).__name__}")
    if not data:
        raise InvalidInput("input video is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidInput(f"input video is {len(data)} bytes; the limit is {max_bytes} bytes")
    return bytes(data)


def _frames(inp, max_frames: int) -> np.ndarray:
    if inp.datatype != "UINT8":
        raise InvalidInput(f"input frames must be UINT8, got {inp.datatype}")
    shape = [int(d) for d in inp.shape]
    if len(shape) != 4 or shape[3] != 3:
        raise InvalidInput(f"input frames must be [T, H, W, 3] RGB, got shape {shape}")
    if min(shape) < 1:
        raise InvalidInput(f"input frames has an empty dimension: shape {shape}")
    # checked on the declared shape, before the data is turned into an array
    if shape[0] > max_frames:
        raise InvalidInput(f"input frames has {shape[0]} frames; the limit is {max_frames}")
    return _as_numpy(inp)


def request_from_binary(body: bytes, json_length: str, model_name: str) -> InferRequest:
    """A REST binary-data-extension request -> InferRequest, keeping BYTES tensors as bytes.

    kserve 0.21's InferRequest.from_bytes turns binary BYTES tensors into UTF-8 str (JSON
    semantics), so an encoded video fails there with a 500 before any model code runs, and
    models get no hook ahead of that decoding. This is the same parse minus that conversion
    (binary tensors stay numpy arrays, which also skips a per-element Python list for frames).
    """
    try:
        n = int(json_length)
        header = orjson.loads(body[:n])
    except (ValueError, orjson.JSONDecodeError) as e:
        raise InvalidInput(f"unreadable binary request header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('the request header must be a JSON object with an "inputs" list')
    offset, inputs = n, []
    for spec in header["inputs"]:
        name, shape, datatype, params = _input_spec(spec)
        if "data" in spec:
            data = spec["data"]
        elif "binary_data_size" in params:
            size = params.pop("binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name}: bad binary_data_size {size!r}")
            raw = body[offset : offset + size]
            if len(raw) != size:
                raise InvalidInput(f"input {name}: binary_data_size {size} runs past the body")
            offset += size
            if datatype == "BYTES" and math.prod(shape) > MAX_BYTES_ELEMENTS:
                # refused on the declared shape: splitting millions of length prefixes in
                # Python would hold the event loop for seconds
                raise InvalidInput(
                    f"input {name}: {math.prod(shape)} BYTES elements; the limit is "
                    f"{MAX_BYTES_ELEMENTS} (one video)"
                )
            data = _binary_tensor(raw, name, datatype)
        else:
            raise InvalidInput(f"input {name}: no data and no binary_data_size")
        inputs.append(InferInput(name, shape, datatype, data=data, parameters=params))
    try:
        outputs = [
            RequestedOutput(_text(o["name"]), o.get("parameters"))
            for o in header.get("outputs") or []
        ]
    except (KeyError, TypeError, AttributeError):
        raise InvalidInput("each requested output needs a name") from None
    request_id, parameters = header.get("id"), header.get("parameters")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"the request id must be a string, got {request_id!r:.40}")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("the request parameters must be a JSON object")
    return InferRequest(
        model_name,
        inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=outputs or None,
    )


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _input_spec(spec) -> tuple[str, list[int], str, dict]:
    """One input's name, shape, datatype and parameters, each of the type the protocol says."""
    if not isinstance(spec, dict):
        raise InvalidInput("each input must be a JSON object with name, shape, datatype")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    params = spec.get("parameters") or {}
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput("each input needs name, shape, datatype (name and datatype strings)")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name:.40}: shape must be a list of integers >= 0")
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name:.40}: parameters must be a JSON object")
    return name, shape, datatype.upper(), dict(params)


def _binary_tensor(raw: bytes, name: str, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(raw)
        except struct.error:
            raise InvalidInput(
                f"input {name}: malformed BYTES data (4-byte length prefixes)"
            ) from None
    dtype = to_np_dtype(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name}: unknown datatype {datatype}")
    try:
        return np.frombuffer(raw, dtype=dtype)
    except ValueError as e:
        raise InvalidInput(f"input {name}: {len(raw)} bytes are not whole {datatype}s") from e
