"""KServe v2 serving: the predictor in-process, then the real server in a subprocess driven by
real clients (tests/serving_client.py, in their own processes: kserve and tritonclient.grpc
cannot share one) over REST binary, REST JSON and gRPC, plus the bad-input matrix."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from model.files import hash_file
from model.predict import Classifier
from model.serving.guard import DEFAULT_LIMITS
from model.serving.predictor import Sign2TextModel
from model.video import decode as video_decode
from model.video import limits as video_limits
from model.video.clip import PreprocessConfig, clip_from_frames, resize_frames
from model.video.decode import OverLimit, decode
from model.video.limits import read_video
from tests.conftest import moving_square, write_video
from tests.model_server import ENV, LABELS, OPENER, ROOT, Server, serve, small_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return small_model_dir(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    good = write_video(d / "good.mp4", moving_square(40)).read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 2])  # moov atom lost: won't open
    # Opens (container and frame count intact) but every frame's data is zeros: no frame decodes.
    i = good.find(b"mdat")
    size = int.from_bytes(good[i - 4 : i], "big")
    zeroed = bytearray(good)
    zeroed[i + 4 : i - 4 + size] = bytes(size - 8)
    (d / "zero_frames.mp4").write_bytes(zeroed)
    write_video(d / "too_long.mp4", moving_square(110, 48, 64))  # 4.4 s at 25 fps
    (d / "still.png").write_bytes(cv2.imencode(".png", moving_square(1)[0])[1].tobytes())
    return d


def _video_request(data: bytes, **params) -> InferRequest:
    inp = InferInput("video", [1], "BYTES", data=np.array([data], dtype=np.object_))
    return InferRequest("sign2text", [inp], parameters=params)


def _frames_request(frames_rgb: np.ndarray, **params) -> InferRequest:
    inp = InferInput("frames", list(frames_rgb.shape), "UINT8", data=frames_rgb)
    return InferRequest("sign2text", [inp], parameters=params)


def _outputs(response) -> dict[str, np.ndarray]:
    return {o.name: o.data for o in response.outputs}


# --- in-process ---------------------------------------------------------------------------


def test_in_process_word_mode_matches_classifier(model_dir, files):
    m = Sign2TextModel(model_dir)
    assert not m.ready
    assert m.load() and m.ready

    out = _outputs(asyncio.run(m.predict(_video_request((files / "good.mp4").read_bytes()))))
    glosses = [g.decode() for g in out["glosses"]]
    assert len(glosses) == 5 and set(glosses) <= set(LABELS)
    assert out["scores"].dtype == np.float32 and np.all(np.diff(out["scores"]) <= 0)
    # The served path is the in-process path: same preprocessing, same numbers.
    expected = Classifier(model_dir).word(files / "good.mp4", 5)
    assert glosses == expected.glosses
    np.testing.assert_allclose(out["scores"], expected.scores, rtol=1e-5)


def test_in_process_frames_are_rgb(model_dir):
    m = Sign2TextModel(model_dir)
    m.load()
    bgr = moving_square(12)
    out = _outputs(asyncio.run(m.predict(_frames_request(bgr[..., ::-1].copy(), top_k=7))))
    clf = Classifier(model_dir)
    probs = clf.probabilities(clip_from_frames(bgr, clf.info.preprocess))[0]
    expected = clf.top_k(probs, 7)
    assert [g.decode() for g in out["glosses"]] == expected.glosses
    np.testing.assert_allclose(out["scores"], expected.scores, rtol=1e-5)
    # ...and the channel flip matters to the model, so the check above could fail.
    unflipped = clf.probabilities(clip_from_frames(bgr[..., ::-1].copy(), clf.info.preprocess))
    assert not np.allclose(probs, unflipped[0], rtol=0, atol=1e-7)


def test_in_process_sentence_mode_wiring(model_dir, files, monkeypatch):
    """Outputs and the transcribe() call, against a stand-in for model.sentence."""
    calls = []

    def transcribe(classifier, frames_bgr, *, window=None, stride=None, threshold=None, **cost):
        calls.append((classifier, frames_bgr))
        word = types.SimpleNamespace
        return [
            word(gloss="hello", start=0, end=9, confidence=0.9),
            word(gloss="go", start=10, end=20, confidence=0.75),
        ]

    monkeypatch.setattr("model.sentence.transcribe", transcribe)
    m = Sign2TextModel(model_dir)
    m.load()
    rgb = moving_square(6)[..., ::-1].copy()
    out = _outputs(asyncio.run(m.predict(_frames_request(rgb, mode="sentence"))))
    assert [w.decode() for w in out["words"]] == ["hello", "go"]
    assert out["spans"].dtype == np.int32 and out["spans"].tolist() == [[0, 9], [10, 20]]
    np.testing.assert_allclose(out["confidences"], [0.9, 0.75])
    assert calls[0][0] is m.classifier
    cfg = m.classifier.info.preprocess  # frames arrive resized to the model's size, once
    np.testing.assert_array_equal(calls[0][1], resize_frames(rgb[..., ::-1], cfg))  # BGR

    video = (files / "good.mp4").read_bytes()
    asyncio.run(m.predict(_video_request(video, mode="sentence")))
    every = decode(files / "good.mp4", np.arange(40))
    np.testing.assert_array_equal(calls[1][1], resize_frames(every, cfg))

    with pytest.raises(InvalidInput, match="mode"):
        asyncio.run(m.predict(_video_request(video, mode="paragraph")))


def test_in_process_sentence_parameters(monkeypatch):
    """window / stride / threshold reach sentence mode (real model.sentence, the context-trained
    fixture model); bad values are 400s that say which parameter, and the model still serves."""
    from model.sentence import transcribe

    fixture = Path(__file__).parent / "fixtures" / "sentence_model"
    m = Sign2TextModel(fixture)
    m.load()
    rgb = moving_square(60)[..., ::-1].copy()
    opts = {"window": 20, "stride": 3, "threshold": 0.3}
    out = _outputs(asyncio.run(m.predict(_frames_request(rgb, mode="sentence", **opts))))
    words = transcribe(m.classifier, rgb[..., ::-1], **opts)
    assert [w.decode() for w in out["words"]] == [w.gloss for w in words]
    assert out["spans"].tolist() == [[w.start, w.end] for w in words]
    default = transcribe(m.classifier, rgb[..., ::-1])
    every_frame = transcribe(m.classifier, rgb[..., ::-1], threshold=0.0)
    assert every_frame != default  # parameters change the answer: the check above could fail
    for bad, phrase in (
        ({"threshold": "high"}, "threshold must be a number"),
        ({"threshold": 1.5}, "threshold must be"),
        ({"window": 10**9}, "window must be"),
        ({"stride": 0}, "stride must be"),
        ({"window": "wide"}, "window must be an integer"),
    ):
        with pytest.raises(InvalidInput, match=phrase):
            asyncio.run(m.predict(_frames_request(rgb, mode="sentence", **bad)))
    assert asyncio.run(m.predict(_frames_request(rgb, mode="sentence"))).outputs


def test_load_from_uri_downloads_with_kserve_storage(model_dir, tmp_path, monkeypatch):
    """A URI goes through kserve_storage (here http:// on 127.0.0.1; s3:// has its own download,
    tested in test_storage.py)."""
    import functools
    import http.server
    import tarfile
    import threading

    site = tmp_path / "site"
    site.mkdir()
    with tarfile.open(site / "model.tar.gz", "w:gz") as tar:
        for f in model_dir.iterdir():
            tar.add(f, arcname=f.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where Storage downloads to
    try:
        m = Sign2TextModel(f"http://127.0.0.1:{httpd.server_address[1]}/model.tar.gz")
        assert not m.ready
        m.load()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert m.ready and m.classifier.labels == LABELS


class _Counting:
    """A cv2.VideoCapture that counts the frames read from it."""

    def __init__(self, cap, counts: dict):
        self._cap, self._counts = cap, counts

    def grab(self):
        self._counts["frames"] += 1
        return self._cap.grab()

    def read(self):
        self._counts["frames"] += 1
        return self._cap.read()

    def __getattr__(self, name):
        return getattr(self._cap, name)


@pytest.fixture
def video_reads(monkeypatch) -> dict:
    """How often a request opens the video, probes it, and reads a frame out of it."""
    counts = {"opens": 0, "probes": 0, "frames": 0}
    real_open, real_probe = video_decode.open_video, video_limits.probe

    def counted_open(path):
        counts["opens"] += 1
        return _Counting(real_open(path), counts)

    def counted_probe(path):
        counts["probes"] += 1
        return real_probe(path)

    monkeypatch.setattr(video_decode, "open_video", counted_open)
    monkeypatch.setattr(video_limits, "probe", counted_probe)
    return counts


def test_a_request_probes_once_and_reads_each_frame_once(files, video_reads):
    """What the decoder process runs per request (read_video), counted in-process."""
    cfg = PreprocessConfig(num_frames=8, resize=64, crop=56)
    read_video(files / "good.mp4", "word", cfg, DEFAULT_LIMITS)  # 40 frames
    # word mode: the probe, then one pass that stops after the last frame it samples
    assert video_reads["probes"] == 1 and video_reads["opens"] == 2, video_reads
    assert video_reads["frames"] <= 41, video_reads

    video_reads.update(opens=0, probes=0, frames=0)
    read_video(files / "good.mp4", "sentence", cfg, DEFAULT_LIMITS)
    # sentence mode: the probe, then every frame decoded once (+1: the read that finds the end)
    assert video_reads == {"opens": 2, "probes": 1, "frames": 41}


def test_frame_limit_refuses_on_the_claim_and_reads_no_further(model_dir, files, video_reads):
    limits = dataclasses.replace(DEFAULT_LIMITS, max_frames=10)
    cfg = PreprocessConfig(num_frames=8, resize=64, crop=56)
    with pytest.raises(OverLimit, match="video has 40 frames; the limit is 10"):
        read_video(files / "good.mp4", "sentence", cfg, limits)
    assert video_reads["frames"] == 0  # the container's claim is enough to refuse
    m = Sign2TextModel(model_dir, limits=limits)
    m.load()
    video = (files / "good.mp4").read_bytes()
    with pytest.raises(InvalidInput, match="video has 40 frames; the limit is 10"):
        asyncio.run(m.predict(_video_request(video, mode="sentence")))
    m.stop()


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
        assert names == {"glosses", "scores", "words", "spans", "confidences", "frame_probs"}
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


def test_evaluation_and_serving_feed_identical_tensors(model_dir, files, tmp_path, monkeypatch):
    """Same video, same config: the tensor evaluation scores is the tensor serving scores."""
    from components.data.dataset import Sample
    from components.evaluation.evaluate import evaluate

    seen: list = []
    real = Classifier.probabilities

    def record(self, clips):
        seen.append(np.array(clips))
        return real(self, clips)

    monkeypatch.setattr(Classifier, "probabilities", record)
    (tmp_path / "data" / "videos").mkdir(parents=True)
    shutil.copy(files / "good.mp4", tmp_path / "data" / "videos" / "v1.mp4")
    sample = Sample("v1", 0, LABELS[0], "test", 0, 1, -1, None, 25.0)
    evaluate(
        model_dir,
        tmp_path / "data",
        tmp_path / "eval",
        splits=("test",),
        samples=[sample],
        progress=False,
    )
    served = Sign2TextModel(model_dir)
    served.load()
    asyncio.run(served.predict(_video_request((files / "good.mp4").read_bytes())))
    assert len(seen) == 2
    evaluated, serving = (t.reshape(-1, *t.shape[-4:]) for t in seen)
    assert np.array_equal(evaluated, serving)


SENTENCE_FIXTURE = Path(__file__).parent / "fixtures" / "sentence_model"


def test_over_max_in_flight_is_refused_at_once_with_a_retry_time():
    from model.serving.guard import Overloaded, overloaded_handler

    m = Sign2TextModel(SENTENCE_FIXTURE, max_in_flight=2)
    m.load()
    m._in_flight = 2  # two requests already waiting or running
    rgb = moving_square(20)[..., ::-1].copy()
    with pytest.raises(Overloaded, match="busy") as e:
        asyncio.run(m.predict(_frames_request(rgb)))
    response = asyncio.run(overloaded_handler(None, e.value))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    m._in_flight = 0
    assert _outputs(asyncio.run(m.predict(_frames_request(rgb))))["glosses"].size == 5
    m.stop()


def _counting_forwards(m, monkeypatch, delay_s: float = 0.0) -> list:
    calls, real = [], m.classifier.logits

    def logits(clips):
        calls.append(len(clips))
        time.sleep(delay_s)
        return real(clips)

    monkeypatch.setattr(m.classifier, "logits", logits)
    return calls


def test_a_request_past_its_time_budget_stops_between_windows(monkeypatch):
    from model.serving.guard import Overloaded

    m = Sign2TextModel(SENTENCE_FIXTURE, time_budget_s=0.5)
    m.load()
    calls = _counting_forwards(m, monkeypatch, delay_s=0.2)
    rgb = moving_square(200, 60, 80)[..., ::-1].copy()  # 101 windows at stride 2: 13 batches
    with pytest.raises(Overloaded, match="time budget of 0.5 s"):
        asyncio.run(m.predict(_frames_request(rgb, mode="sentence", stride=2)))
    assert 1 <= len(calls) <= 4, calls  # stopped within a batch of the budget, not at 13
    m.stop()


def test_a_cancelled_request_stops_its_work(monkeypatch, caplog):
    m = Sign2TextModel(SENTENCE_FIXTURE)
    m.load()
    calls = _counting_forwards(m, monkeypatch, delay_s=0.2)
    rgb = moving_square(200, 60, 80)[..., ::-1].copy()

    async def leave_early():
        task = asyncio.ensure_future(m.predict(_frames_request(rgb, mode="sentence", stride=2)))
        while not calls:
            await asyncio.sleep(0.01)
        task.cancel()  # what a REST disconnect (RequestGuard) or a gRPC cancel does
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level("INFO"):
        asyncio.run(leave_early())
        deadline = time.monotonic() + 10  # the worker stops at its next check
        while "stopped a request's work" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) <= 3, calls  # of 13 batches
    assert "stopped a request's work: the client went away" in caplog.text
    m.stop()


def test_stop_removes_a_downloaded_model_and_the_decoder(tmp_path, monkeypatch):
    import model.serving.predictor as serving

    download = tmp_path / "sign2text-fetch-x"
    shutil.copytree(SENTENCE_FIXTURE, download)
    monkeypatch.setattr(serving, "fetch", lambda uri: download)
    m = Sign2TextModel("s3://bucket/models/v1/")
    m.load()
    video = write_video(tmp_path / "v.mp4", moving_square(20)).read_bytes()
    asyncio.run(m.predict(_video_request(video)))
    children = [d._proc for d in m.decoders if d._proc is not None]
    assert len(children) == 1 and children[0].poll() is None
    m.stop()
    assert not download.exists() and children[0].poll() is not None


def test_frame_probs_come_only_when_asked_for():
    """Sentence mode's per-frame probabilities of each word's gloss and of no sign, for the app's
    timeline: sent only to a client that names the output (frames x words + 1 values)."""
    from kserve.protocol.infer_type import RequestedOutput

    m = Sign2TextModel(SENTENCE_FIXTURE)
    m.load()
    rgb = moving_square(90, seed=3)[..., ::-1].copy()
    plain = _outputs(asyncio.run(m.predict(_frames_request(rgb, mode="sentence"))))
    assert "frame_probs" not in plain
    req = _frames_request(rgb, mode="sentence")
    req.request_outputs = [RequestedOutput(n) for n in ("words", "spans", "frame_probs")]
    out = _outputs(asyncio.run(m.predict(req)))
    words, probs = [w.decode() for w in out["words"]], out["frame_probs"]
    assert words and probs.shape == (90, len(words) + 1)
    assert ((probs >= 0) & (probs <= 1)).all()
    for j, (a, b) in enumerate(out["spans"]):  # a word's gloss is likely over its own span
        assert probs[a : b + 1, j].mean() > probs[a : b + 1, -1].mean() * 0.5
    m.stop()
