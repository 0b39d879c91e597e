"""The KServe v2 predictor in-process (model/serving/predictor.py): word and sentence mode over
video and frames, matching the in-process Classifier number for number, sentence-mode parameters
and per-frame probabilities, loading from a URI, how often a request reads its video, and the
tensor evaluation scores being the tensor serving scores. The real server and its command line
are in test_serving_server.py, the predictor's guards in test_serving_guards.py."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from model.predict import Classifier
from model.serving.guard import DEFAULT_LIMITS
from model.serving.predictor import Sign2TextModel
from model.video import decode as video_decode
from model.video import limits as video_limits
from model.video.clip import PreprocessConfig, clip_from_frames, resize_frames
from model.video.decode import OverLimit, decode
from model.video.limits import read_video
from tests.conftest import moving_square, write_video
from tests.model_server import LABELS, small_model_dir


@pytest.fixture(scope="module", name="model_dir")
def model_dir_fixture(tmp_path_factory) -> Path:
    return small_model_dir(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module", name="files")
def files_fixture(tmp_path_factory) -> Path:
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
