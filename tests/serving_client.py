"""Clients for tests/test_serving_server.py, run in their own process: kserve and tritonclient.grpc
register the same protobuf package, so they cannot share the test's (kserve-importing) process.

    python tests/serving_client.py SCENARIO --rest-addr HOST:PORT --grpc-addr HOST:PORT --files DIR

prints one JSON object. Scenarios: triton (tritonclient over REST binary + gRPC raw, REST JSON
frames, metadata), kserve-grpc (kserve.InferenceGRPCClient), bad-rest, bad-grpc (bad-input
matrices, each case followed by a good request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

TOP_K = 3


def _video(files: Path, name: str = "good.mp4") -> bytes:
    return (files / name).read_bytes()


def _frames(channels: int = 3, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 40, 48, channels), dtype=np.uint8)


def _timed(fn, n: int = 5) -> tuple[object, float]:
    """Result of the last call and the median wall time in ms."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return result, round(statistics.median(times), 2)


def _words(result) -> dict:
    glosses = result.as_numpy("glosses")
    scores = result.as_numpy("scores")
    return {
        "glosses": [g.decode() if isinstance(g, bytes) else str(g) for g in glosses.tolist()],
        "scores": [float(s) for s in scores.tolist()],
    }


# Never through a proxy: the server is on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _rest_json(http: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{http}/v2/models/sign2text/infer",
        data=data,
        headers=headers or {"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _OPENER.open(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _frames_body(frames: np.ndarray, **params) -> dict:
    inp = {"name": "frames", "datatype": "UINT8", "shape": list(frames.shape)}
    return {"inputs": [inp | {"data": frames.reshape(-1).tolist()}], "parameters": params}


# --- tritonclient -------------------------------------------------------------------------


def _triton_inputs(mod, video: bytes | None = None, frames=None, video_array=None):
    """`video` as the contract wants it, or any `video_array` (wrong dtype / shape) instead."""
    inputs = []
    if video is not None:
        video_array = np.array([video], dtype=np.object_)
    if video_array is not None:
        arr = video_array
        dt = "BYTES" if arr.dtype == np.object_ else mod.np_to_triton_dtype(arr.dtype)
        i = mod.InferInput("video", list(arr.shape), dt)
        if mod.__name__.endswith("http"):
            i.set_data_from_numpy(arr, binary_data=True)
        else:
            i.set_data_from_numpy(arr)
        inputs.append(i)
    if frames is not None:
        i = mod.InferInput("frames", list(frames.shape), "UINT8")
        i.set_data_from_numpy(frames)
        inputs.append(i)
    return inputs


def scenario_triton(args) -> dict:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    video = _video(args.files)
    http = thttp.InferenceServerClient(args.http)
    grpc = tgrpc.InferenceServerClient(args.grpc)
    params = {"top_k": TOP_K, "mode": "word"}

    def via_http():
        return http.infer("sign2text", _triton_inputs(thttp, video), parameters=params)

    def via_grpc():
        return grpc.infer("sign2text", _triton_inputs(tgrpc, video), parameters=params)

    frames = _frames()
    r_http, ms_http = _timed(via_http)
    r_grpc, ms_grpc = _timed(via_grpc)
    (status, body), ms_json = _timed(
        lambda: _rest_json(args.http, _frames_body(frames, top_k=TOP_K))
    )
    json_out = {o["name"]: o for o in body.get("outputs", [])}
    grpc_raw = grpc.infer("sign2text", _triton_inputs(tgrpc, video), parameters=params)
    return {
        "http_binary": _words(r_http),
        "grpc_raw": _words(r_grpc)
        | {"raw_output_contents": len(grpc_raw.get_response().raw_output_contents)},
        "rest_json_frames": {
            "status": status,
            "glosses": json_out.get("glosses", {}).get("data"),
            "scores": json_out.get("scores", {}).get("data"),
        },
        "http_metadata": http.get_model_metadata("sign2text"),
        "grpc_metadata": grpc.get_model_metadata("sign2text", as_json=True),
        "latency_ms": {"http_binary": ms_http, "grpc_raw": ms_grpc, "rest_json_frames": ms_json},
    }


def scenario_kserve_grpc(args) -> dict:
    import asyncio

    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run() -> dict:
        client = InferenceGRPCClient(args.grpc, retries=0)
        inp = InferInput("video", [1], "BYTES")
        inp.set_data_from_numpy(np.array([_video(args.files)], dtype=np.object_))
        request = InferRequest("sign2text", [inp], parameters={"top_k": TOP_K})
        uses_raw = len(request.to_grpc().raw_input_contents) == 1
        response = await client.infer(request)
        out = {o.name: o.as_numpy() for o in response.outputs}
        await client.close()
        return {
            "raw_input_contents": uses_raw,
            "glosses": [g.decode() for g in out["glosses"].tolist()],
            "scores": [float(s) for s in out["scores"].tolist()],
        }

    return asyncio.run(run())


# --- bad inputs ---------------------------------------------------------------------------


def _bad_payloads(files: Path) -> dict:
    rng = np.random.default_rng(0)
    return {
        "empty": b"",
        "text": b"this is not a video\n" * 20,
        "png": (files / "still.png").read_bytes(),
        "random": rng.bytes(20000),
        "truncated": (files / "truncated.mp4").read_bytes(),
        "zero_frames": (files / "zero_frames.mp4").read_bytes(),
        "too_long": (files / "too_long.mp4").read_bytes(),
        "too_large": rng.bytes(int(1.5 * (1 << 20))),  # server runs with --max-video-mb 1
    }


def scenario_bad_rest(args) -> dict:
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    client = thttp.InferenceServerClient(args.http)
    good_video = _video(args.files)
    frames = _frames()
    p = _bad_payloads(args.files)

    def binary(**kw):
        params = kw.pop("params", {})
        return lambda: client.infer("sign2text", _triton_inputs(thttp, **kw), parameters=params)

    def json_body(body, headers=None):
        return lambda: _rest_json(args.http, body, headers)

    header = json.dumps(
        {
            "inputs": [
                {"name": "video", "shape": [1], "datatype": "BYTES"}
                | {"parameters": {"binary_data_size": 1000}}
            ]
        }
    ).encode()

    cases = {
        "no_input": json_body({"inputs": []}),
        "not_v2_json": json_body(b'{"inputs": "video"}'),
        "malformed_json": json_body(b'{"inputs": ['),
        "binary_size_past_body": json_body(
            header + b"\0" * 10, {"Inference-Header-Content-Length": str(len(header))}
        ),
        "both_inputs": binary(video=good_video, frames=frames),
        "unknown_input": json_body(
            {"inputs": [{"name": "audio", "datatype": "UINT8", "shape": [1], "data": [1]}]}
        ),
        "video_wrong_datatype": binary(video_array=np.zeros(1, np.float32)),
        "frames_wrong_datatype": json_body(
            {
                "inputs": [
                    {"name": "frames", "datatype": "FP32", "shape": [1, 2, 2, 3]}
                    | {"data": [0.5] * 12}
                ]
            }
        ),
        "video_wrong_shape": binary(
            video_array=np.array([good_video, good_video], dtype=np.object_)
        ),
        "frames_wrong_shape": json_body(
            {
                "inputs": [
                    {"name": "frames", "datatype": "UINT8", "shape": [4, 4, 3], "data": [0] * 48}
                ]
            }
        ),
        "frames_data_mismatch": json_body(
            {
                "inputs": [
                    {"name": "frames", "datatype": "UINT8", "shape": [2, 4, 4, 3], "data": [0] * 7}
                ]
            }
        ),
        **{name: binary(video=data) for name, data in p.items()},
        "frames_1_channel": binary(frames=_frames(channels=1)),
        "frames_4_channels": binary(frames=_frames(channels=4)),
        "top_k_negative": binary(video=good_video, params={"top_k": -1}),
        "top_k_too_big": binary(video=good_video, params={"top_k": 1000}),
        "top_k_not_int": json_body(_frames_body(frames, top_k="many")),
        "unknown_mode": binary(video=good_video, params={"mode": "paragraph"}),
        "sentence_without_no_sign": binary(video=good_video, params={"mode": "sentence"}),
    }
    good = binary(video=good_video, params={"top_k": TOP_K})
    results = {}
    for name, send in cases.items():
        try:
            out = send()
            if isinstance(out, tuple):
                status, body = out
                entry = {"status": status, "error": body.get("error", "")}
            else:
                entry = {"status": 200, "error": ""}
        except InferenceServerException as e:
            entry = {"status": int(e.status() or 0), "error": e.message()}
        results[name] = entry | _followup(good)
    return results


def _followup(good) -> dict:
    """The good request sent after each bad one: the server must still answer it."""
    from tritonclient.utils import InferenceServerException

    try:
        return {"followup_ok": len(_words(good())["glosses"]) == TOP_K}
    except InferenceServerException as e:
        return {"followup_ok": False, "followup_error": e.message()}


def scenario_bad_grpc(args) -> dict:
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    client = tgrpc.InferenceServerClient(args.grpc)
    good_video = _video(args.files)
    p = _bad_payloads(args.files)

    def send(params=None, **kw):
        return lambda: client.infer(
            "sign2text", _triton_inputs(tgrpc, **kw), parameters=params or {}
        )

    cases = {
        "no_input": send(),
        "both_inputs": send(video=good_video, frames=_frames()),
        "video_wrong_datatype": send(video_array=np.zeros(1, np.float32)),
        **{name: send(video=p[name]) for name in ("empty", "text", "png", "truncated")},
        **{name: send(video=p[name]) for name in ("zero_frames", "too_long", "too_large")},
        # Over the gRPC message limit (max video + 1 MiB): refused by the transport itself.
        "over_grpc_limit": send(video=bytes(3 << 20)),
        "frames_4_channels": send(frames=_frames(channels=4)),
        "top_k_negative": send(video=good_video, params={"top_k": -1}),
        "unknown_mode": send(video=good_video, params={"mode": "paragraph"}),
    }
    good = send(video=good_video, params={"top_k": TOP_K})
    results = {}
    for name, call in cases.items():
        try:
            call()
            entry = {"status": "OK", "error": ""}
        except InferenceServerException as e:
            entry = {"status": str(e.status()), "error": e.message()}
        results[name] = entry | _followup(good)
    return results


SCENARIOS = {
    "triton": scenario_triton,
    "kserve-grpc": scenario_kserve_grpc,
    "bad-rest": scenario_bad_rest,
    "bad-grpc": scenario_bad_grpc,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--rest-addr", dest="http", required=True, help="HOST:PORT of the REST server")
    p.add_argument("--grpc-addr", dest="grpc", required=True, help="HOST:PORT of the gRPC server")
    p.add_argument("--files", type=Path, required=True, help="folder with the test videos")
    args = p.parse_args()
    json.dump(SCENARIOS[args.scenario](args), sys.stdout, default=str)


if __name__ == "__main__":
    main()
