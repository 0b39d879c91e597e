"""model/serving/request.py on its own: v2 requests -> Request, and every way a request is refused.

The same cases go through the real server over REST and gRPC in test_serving_server.py; here each
is one function call, so the parsing rules can be read next to their messages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, serialize_byte_tensor

from model.serving.request import Request, parse, request_from_binary

LIMITS = {"classes": 7, "max_video_bytes": 100, "max_frames": 8}


def _video(data=b"\x00mp4", **params) -> InferRequest:
    inp = InferInput("video", [1], "BYTES", data=np.array([data], dtype=np.object_))
    return InferRequest("sign2text", [inp], parameters=params)


def _frames(shape=(2, 4, 4, 3), **params) -> InferRequest:
    inp = InferInput("frames", list(shape), "UINT8", data=np.zeros(shape, np.uint8))
    return InferRequest("sign2text", [inp], parameters=params)


def test_a_video_request():
    got = parse(_video(top_k=3.0), **LIMITS)
    assert got == Request(mode="word", top_k=3, sentence={}, video=b"\x00mp4")


def test_a_sentence_request_keeps_only_the_parameters_given():
    got = parse(_frames(mode="sentence", window="12", threshold=0.25), **LIMITS)
    assert (got.mode, got.top_k, got.sentence) == ("sentence", 5, {"window": 12, "threshold": 0.25})
    assert got.video is None and got.frames.shape == (2, 4, 4, 3)


def test_grpc_parameters_of_every_v2_kind_including_double():
    """Triton's gRPC clients send a float as double_param, which kserve's copy of the v2 proto
    does not know: it arrives as an unknown field, and is read all the same."""
    import struct

    from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter

    grpc = {
        "mode": InferParameter(string_param="sentence"),
        "window": InferParameter(int64_param=12),
        "threshold": InferParameter.FromString(b"\x21" + struct.pack("<d", 0.25)),  # double
        "stride": InferParameter.FromString(b"\x28\x03"),  # uint64_param 3
    }
    got = parse(_frames(**grpc), **LIMITS)
    assert got.sentence == {"window": 12, "threshold": 0.25, "stride": 3}


def _input(name, shape, datatype, data):
    return InferRequest("sign2text", [InferInput(name, shape, datatype, data=data)])


BAD = {
    "no input": InferRequest("sign2text", []),
    "unknown input": _input("audio", [1], "BYTES", np.array([b"x"], dtype=np.object_)),
    "exactly one": InferRequest("sign2text", _video().inputs + _frames().inputs),
    "must be BYTES": _input("video", [4], "UINT8", np.zeros(4, np.uint8)),
    "shape [1]": _input("video", [2], "BYTES", np.array([b"a", b"b"], dtype=np.object_)),
    "empty (0 bytes)": _video(b""),
    "the limit is 100 bytes": _video(bytes(101)),
    "must be UINT8": _input("frames", [1, 2, 2, 3], "FP32", np.zeros((1, 2, 2, 3), np.float32)),
    "[T, H, W, 3]": _frames((2, 4, 4, 1)),
    "empty dimension": _frames((2, 0, 4, 3)),
    "9 frames; the limit is 8": _frames((9, 2, 2, 3)),
    "does not match": _input("frames", [2, 2, 2, 3], "UINT8", [1, 2, 3]),
    "top_k must be between 1 and 7 (0: all), got -1": _video(top_k=-1),
    "top_k must be between 1 and 7 (0: all), got 8": _video(top_k=8),
    "top_k must be an integer": _video(top_k="five"),
    "mode must be one of": _video(mode="paragraph"),
    "window must be an integer": _video(mode="sentence", window=1.5),
    "threshold must be a number": _video(mode="sentence", threshold=True),
}


@pytest.mark.parametrize("phrase", BAD)
def test_bad_requests_are_invalid_input(phrase):
    with pytest.raises(InvalidInput, match=re.escape(phrase)):
        parse(BAD[phrase], **LIMITS)


def test_top_k_0_asks_for_every_gloss():
    assert parse(_video(top_k=0), **LIMITS).top_k == LIMITS["classes"]


def _binary(header: dict, body: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + body, str(len(head))


def test_binary_requests_keep_bytes_as_bytes():
    video = b"\xff\xfe not utf-8"
    raw = serialize_byte_tensor(np.array([video], dtype=np.object_)).item()
    spec = {"name": "video", "shape": [1], "datatype": "BYTES"}
    body, n = _binary(
        {"inputs": [spec | {"parameters": {"binary_data_size": len(raw)}}], "parameters": {}},
        raw,
    )
    req = request_from_binary(body, n, "sign2text")
    assert parse(req, **LIMITS).video == video


def _sized(datatype: str, shape: list[int], size: int) -> dict:
    spec = {"name": "v", "shape": shape, "datatype": datatype}
    return {"inputs": [spec | {"parameters": {"binary_data_size": size}}]}


@pytest.mark.parametrize(
    ("header", "body", "phrase"),
    [
        (None, b"{not json", "unreadable binary request header"),
        ({"inputs": "video"}, b"", '"inputs" list'),
        ({"inputs": [{"name": "video"}]}, b"", "needs name, shape, datatype"),
        ({"inputs": [{"name": "v", "shape": [1], "datatype": "BYTES"}]}, b"", "no data"),
        (_sized("UINT8", [4], 9), b"1234", "runs past the body"),
        (_sized("FP32", [1], 3), b"123", "not whole FP32s"),
        (_sized("BYTES", [1], 3), b"123", "malformed BYTES"),
        # headers that used to reach kserve's own code and come back as 500s
        ({"inputs": [{"name": "v", "shape": ["x"], "datatype": "UINT8"}]}, b"", "integers"),
        ({"inputs": [{"name": ["v"], "shape": [1], "datatype": "UINT8"}]}, b"", "strings"),
        ({"inputs": ["video"]}, b"", "JSON object"),
        ({**_sized("UINT8", [1], 1), "id": 5}, b"1", "id must be a string"),
        ({**_sized("UINT8", [1], 1), "parameters": [1]}, b"1", "parameters must be"),
        ({**_sized("UINT8", [1], 1), "outputs": [{"name": 3}]}, b"1", "needs a name"),
        # refused on the declared shape, before millions of length prefixes are split
        (_sized("BYTES", [30_000_000], 4), b"\0" * 4, "the limit is 16"),
    ],
)
def test_bad_binary_requests_are_invalid_input(header, body, phrase):
    if header is None:
        data, n = body, str(len(body))
    else:
        data, n = _binary(header, body)
    with pytest.raises(InvalidInput, match=re.escape(phrase)):
        request_from_binary(data, n, "sign2text")
