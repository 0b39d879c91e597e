"""The KServe v2 server: its command line (`sign2text serve`, the server's own parser), then the
real server in a subprocess driven by real clients (tests/serving_client.py, in their own
processes: kserve and tritonclient.grpc cannot share one) over REST binary, REST JSON and gRPC,
the bad-input matrix, stage metrics, and `sign2text predict` against it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from model.files import hash_file
from model.predict import Classifier
from tests.conftest import moving_square
from tests.model_server import ENV, LABELS, OPENER, ROOT, Server, serve
from tests.test_serving import files_fixture, model_dir_fixture  # noqa: F401


def test_cli_serve_runs_the_server_with_its_own_parser(monkeypatch):
    from sign2text import cli

    got = []
    monkeypatch.setattr("model.serving.server.serve", lambda args: got.append(args) or 0)
    argv = ["--model-dir", "s3://b/m", "--max-duration-s", "3", "--workers", "2", "--device=cpu"]
    assert cli.main(["serve", *argv]) == 0
    (args,) = got
    assert (args.model_dir, args.max_duration_s, args.workers) == ("s3://b/m", 3.0, 2)
    assert (args.http_port, args.grpc_port, args.max_video_mb) == (8080, 8081, 32)
    assert cli.main(["serve", "--model-dir", "m", "--http_port", "9", "--max-frames", "7"]) == 0
    assert (got[1].http_port, got[1].max_frames) == (9, 7)


def test_more_than_one_rest_worker_is_refused_before_anything_starts(monkeypatch):
    """kserve's --workers N spawns interpreters that import a bare app (no body limit, client
    timeouts or --host): refused with the reason, before a model loads or a port opens."""
    import kserve

    from model.serving import server

    monkeypatch.setattr(kserve, "ModelServer", lambda **_: pytest.fail("a server was built"))
    with pytest.raises(SystemExit, match="--workers 2: .*request limits.*replicas"):
        server.main(["--model-dir", "does-not-exist", "--workers", "2"])


def test_cli_serve_help_is_the_servers(capsys):
    from model.serving.server import build_parser
    from sign2text import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sign2text serve")
    for flag in (
        "--device",
        "--workers",
        "--max-frames",
        "--http_port",
        "--grpc_port",
        "--model-dir",
        "--http-port",
        "--grpc-port",
        "--max-video-mb",
        "--max-duration-s",
    ):
        assert flag in out, flag
    # every flag the repository's own callers pass still parses
    args = build_parser().parse_args(
        [
            "--model-dir",
            "d",
            "--http-port",
            "1",
            "--grpc-port",
            "2",
            "--max-video-mb",
            "3",
            "--max-duration-s",
            "4",
            "--max-frames",
            "5",
            "--workers",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert (args.http_port, args.grpc_port, args.workers, args.model_name) == (1, 2, 2, "sign2text")


# --- the real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    # small limits to test them cheaply
    with serve(model_dir, log, "--max-video-mb", "1", "--max-duration-s", "3") as srv:
        yield srv


def run_client(server: Server, files: Path, scenario: str) -> dict:
    cmd = [sys.executable, "tests/serving_client.py", scenario, "--files", str(files)]
    cmd += ["--rest-addr", f"127.0.0.1:{server.http}", "--grpc-addr", f"127.0.0.1:{server.grpc}"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{r.stderr[-3000:]}\nserver log:\n{server.log.read_text()[-2000:]}"
    return json.loads(r.stdout)


def _assert_ranked(result: dict, k: int = 3) -> None:
    assert len(result["glosses"]) == k and set(result["glosses"]) <= set(LABELS)
    assert all(a >= b for a, b in zip(result["scores"], result["scores"][1:], strict=False))
    assert all(0 < s <= 1 for s in result["scores"])


def test_tritonclient_rest_binary_rest_json_and_grpc(server, files, model_dir):
    r = run_client(server, files, "triton")
    _assert_ranked(r["http_binary"])  # REST binary extension carrying a real mp4
    _assert_ranked(r["grpc_raw"])  # gRPC raw_input_contents, read back from raw_output_contents
    assert r["grpc_raw"]["raw_output_contents"] == 2
    assert r["rest_json_frames"]["status"] == 200
    _assert_ranked(r["rest_json_frames"])
    expected = Classifier(model_dir).word(files / "good.mp4", 3)
    for transport in ("http_binary", "grpc_raw"):
        assert r[transport]["glosses"] == expected.glosses
        np.testing.assert_allclose(r[transport]["scores"], expected.scores, rtol=1e-5)
    for meta in (r["http_metadata"], r["grpc_metadata"]):
        assert meta["name"] == "sign2text"
        inputs = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]}
        assert inputs == {"video": ("BYTES", [1]), "frames": ("UINT8", [-1, -1, -1, 3])}
        names = {o["name"] for o in meta["outputs"]}
        expected_outputs = {"glosses", "scores", "words", "spans", "confidences", "frame_probs"}
        assert names == expected_outputs | {"window_probs", "window_centres", "window"}
        assert meta["platform"] == "torch-f32"  # the runtime and its precision (no model.onnx)
    # the version is the weights' hash: what a feedback record names the model by (REST; kserve
    # 0.21's gRPC servicer builds its metadata message without `versions`)
    assert r["http_metadata"]["versions"] == [hash_file(model_dir / "model.pt")[:12]]
    print("served latency (ms, median of 5):", r["latency_ms"])


def test_kserve_grpc_client(server, files):
    r = run_client(server, files, "kserve-grpc")
    assert r["raw_input_contents"]
    _assert_ranked(r)


REST_ERRORS = {
    "no_input": "no input",
    "not_v2_json": "not a v2 inference request",
    "malformed_json": "not a v2 inference request",
    "binary_size_past_body": "runs past the body",
    "both_inputs": "exactly one",
    "unknown_input": "unknown input",
    "video_wrong_datatype": "must be BYTES",
    "frames_wrong_datatype": "must be UINT8",
    "video_wrong_shape": "shape [1]",
    "frames_wrong_shape": "[T, H, W, 3]",
    "frames_data_mismatch": "does not match",
    "empty": "empty",
    "text": "not a readable video",
    "png": "still image",
    "random": "not a readable video",
    "truncated": "not a readable video",
    "zero_frames": "no decodable frames",
    "too_long": "4.4 s long; the limit is 3 s",
    "too_large": "the limit is 1048576 bytes",
    "frames_1_channel": "[T, H, W, 3]",
    "frames_4_channels": "[T, H, W, 3]",
    "top_k_negative": "top_k must be between 1 and 7",
    "top_k_too_big": "top_k must be between 1 and 7",
    "top_k_not_int": "top_k must be an integer",
    "unknown_mode": "mode must be one of",
    "sentence_without_no_sign": "no no-sign output",  # the test model has none
}


def test_bad_inputs_rest(server, files):
    results = run_client(server, files, "bad-rest")
    assert set(results) == set(REST_ERRORS)
    for case, phrase in REST_ERRORS.items():
        r = results[case]
        assert r["status"] == 400, (case, r)
        assert phrase in r["error"], (case, r)
        assert "/dev/shm" not in r["error"] and "/tmp" not in r["error"], (case, r)
        assert r["followup_ok"], (case, r)
    assert server.alive()


def test_bad_inputs_grpc(server, files):
    results = run_client(server, files, "bad-grpc")
    for case, r in results.items():
        want = "RESOURCE_EXHAUSTED" if case == "over_grpc_limit" else "INVALID_ARGUMENT"
        assert r["status"] == f"StatusCode.{want}", (case, r)
        if case in REST_ERRORS:
            assert REST_ERRORS[case] in r["error"], (case, r)
        assert r["followup_ok"], (case, r)
    assert len(results) >= 12
    assert server.alive()


def test_stage_metrics(server):
    frames = moving_square(6)[..., ::-1]
    body = {
        "inputs": [
            {"name": "frames", "datatype": "UINT8", "shape": list(frames.shape)}
            | {"data": frames.reshape(-1).tolist()}
        ]
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http}/v2/models/sign2text/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with OPENER.open(req, timeout=30) as r:
        assert r.status == 200
    status, text = server.get("/metrics")
    assert status == 200
    counts = {}
    for line in text.decode().splitlines():
        if line.startswith("sign2text_stage_seconds_count{"):
            stage = line.split('stage="')[1].split('"')[0]
            counts[stage] = float(line.rsplit(" ", 1)[1])
    assert set(counts) == {"decode", "preprocess", "inference"}
    assert all(c >= 1 for c in counts.values()), counts


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sign2text.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_predict_cli_over_rest_and_grpc(server, files, model_dir):
    from model.predict import Classifier

    video = str(files / "good.mp4")
    expected = Classifier(model_dir).word(video, 3)
    for where in (
        ["--url", f"http://127.0.0.1:{server.http}"],
        ["--grpc", f"127.0.0.1:{server.grpc}"],
    ):
        r = _cli("predict", video, *where, "--top-k", "3", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["glosses"] == expected.glosses
        np.testing.assert_allclose(out["scores"], expected.scores, rtol=1e-4)
    table = _cli("predict", video, "--url", f"http://127.0.0.1:{server.http}", "--top-k", "2")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == [
        "rank",
        "gloss",
        "probability",
    ]


def test_predict_cli_reports_server_errors_in_one_line(server, files):
    r = _cli(
        "predict",
        str(files / "good.mp4"),
        "--url",
        f"http://127.0.0.1:{server.http}",
        "--top-k",
        "99",
    )
    assert r.returncode == 2 and "top_k" in r.stderr and "Traceback" not in r.stderr
    r = _cli("predict", str(files / "good.mp4"), "--url", "http://127.0.0.1:9")  # nothing there
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_client_needs_neither_torch_nor_kserve():
    code = (
        "import sys, sign2text.cli, components.infra.v2client; "
        "assert not {'torch', 'kserve'} & set(sys.modules), sorted(sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
