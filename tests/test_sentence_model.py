"""Sentence mode end to end: signs of the bundled dataset's test signers (never seen in training),
strung together into real mp4 files, through a real trained model -- in-process, and served by
the real ModelServer to the `sign2text predict` client over REST and gRPC in another process.

The model is tests/fixtures/sentence_model: the model `make demo` trains (see SOURCES.md there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.data.dataset import load_samples
from components.data.synth import synthesize
from components.training.context import load_videos, score, sign_strings
from model.predict import Classifier
from model.sentence import transcribe
from model.video.decode import count_frames, decode
from tests import containers
from tests.model_server import ENV, ROOT, serve

FIXTURE = Path(__file__).parent / "fixtures" / "sentence_model"
STRINGS = 12


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier(FIXTURE)


@pytest.fixture(scope="module")
def strings(clf, tmp_path_factory) -> list[tuple[Path, list[tuple[int, int, int]]]]:
    """STRINGS mp4 files of 2-4 test-split signs by one signer, and where each sign is."""
    root = tmp_path_factory.mktemp("bundled")
    synthesize(root, progress=False, only_splits=("test",))  # `make data`'s defaults
    videos = load_videos(root, load_samples(root, ("test",)), clf.labels)
    out = []
    for n, (frames, spans) in enumerate(sign_strings(videos, STRINGS, seed=7)):
        path = root / f"string{n}.mp4"
        h, w = frames.shape[1:3]
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
        for f in frames:
            vw.write(f)
        vw.release()
        out.append((path, spans))
    return out


def _transcript(clf: Classifier, path: Path):
    return transcribe(clf, decode(path, np.arange(count_frames(path))))


def test_strung_together_signs_give_the_words_and_spans(clf, strings):
    results = []
    for path, spans in strings:
        words = _transcript(clf, path)
        r = score(words, spans, clf.labels)
        truth = [(clf.labels[k], a, b) for a, b, k in spans]
        print(
            path.name,
            "OK " if r["correct"] else "BAD",
            truth,
            [(w.gloss, w.start, w.end) for w in words],
        )
        results.append(r)
    assert len(results) == STRINGS and sum(r["truth_words"] for r in results) >= 2 * STRINGS
    correct = sum(r["correct"] for r in results)
    errors = sum(r["edit_distance"] for r in results) / sum(r["truth_words"] for r in results)
    # Every word in order with its span overlapping the truth (IoU >= 0.5) in at least 11 of 12;
    # the fixture model gets all 12 (docs/serving.md, "Sentence mode").
    assert correct >= STRINGS - 1, f"{correct}/{STRINGS} strings right, word error rate {errors}"
    assert errors <= 0.05


def test_openvino_gives_torchs_words_in_process(clf, strings, onnx_sentence_model):
    """The openvino runtime on the fixture's model.onnx (f32 here: the fixture records no bf16
    gate) answers word and sentence mode with torch's words, spans within one stride."""
    ov = Classifier(onnx_sentence_model, runtime="openvino")
    assert (ov.runtime.name, ov.runtime.precision) == ("openvino", "f32")
    for path, _ in strings[:4]:
        want, got = _transcript(clf, path), _transcript(ov, path)
        assert [w.gloss for w in got] == [w.gloss for w in want]
        spans = np.array([[w.start, w.end] for w in got])
        assert np.abs(spans - np.array([[w.start, w.end] for w in want])).max() <= 2
        a, b = clf.word(path, 3), ov.word(path, 3)
        assert a.glosses == b.glosses
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)


# how the server runs -> the runtime it is asked for
RUNTIMES = {
    "process": "onnx",
    "openvino-process": "openvino",
    "onnx-image": "openvino",  # what the image serves by default ("auto" on the CPU)
    "torch-image": "torch",
}


def _served(how: str, model: Path, tmp_path: Path):
    """The server as the ONNX serving image runs it: in a process with the model packaged with
    its model.onnx, `--runtime onnx` (or openvino) and no torch to import (a `torch` on
    PYTHONPATH that raises), or the image itself, run as the cluster runs it; or the torch
    serving image."""
    log = tmp_path / "server.log"
    if how.endswith("image"):
        tag = containers.image("serving" if how == "torch-image" else "serving-onnx")
        return containers.serve_image(tag, model, log, "--runtime", RUNTIMES[how])
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("no torch in the ONNX image")\n')
    return serve(model, log, "--runtime", RUNTIMES[how], env={"PYTHONPATH": str(blocker.parent)})


@pytest.mark.parametrize(
    "how",
    [
        "process",
        "openvino-process",
        "onnx-image",
        pytest.param("torch-image", marks=pytest.mark.heavy),
    ],
)
def test_served_sentence_mode_matches_in_process(clf, strings, onnx_sentence_model, tmp_path, how):
    """The `predict` client, REST and gRPC, against the server as the ONNX serving image runs
    it (_served). Word and sentence mode give the torch network's in-process answers on the
    same file (the server decodes it the same way)."""
    with _served(how, onnx_sentence_model, tmp_path) as srv:
        log = srv.log
        assert f"sign2text: {RUNTIMES[how]} runtime at f32 (" in log.read_text()
        # The runtime and its precision are the metadata's platform (REST here; gRPC in
        # tests/test_serving_server.py).
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{srv.http}/v2/models/sign2text", timeout=30) as r:
            assert json.loads(r.read())["platform"] == f"{RUNTIMES[how]}-f32"
        for path, spans in strings[:1]:
            expected = _transcript(clf, path)
            assert [w.gloss for w in expected] == [clf.labels[k] for _, _, k in spans]
            for out in _predict(srv, path, "--mode", "sentence"):
                assert out["words"] == [w.gloss for w in expected]
                # ONNX Runtime's sums differ from torch's in the last bits (1e-6): a frame at a
                # word's edge may move, never more than one stride (2 frames).
                want = np.array([[w.start, w.end] for w in expected])
                assert np.abs(np.array(out["spans"]) - want).max() <= 2
                np.testing.assert_allclose(
                    out["confidences"], [w.confidence for w in expected], rtol=1e-3
                )
        # Request parameters travel too: a shorter window, a coarser stride.
        path = strings[0][0]
        expected = transcribe(clf, decode(path, np.arange(count_frames(path))), window=24, stride=3)
        assert expected != _transcript(clf, path)  # else the check below could not fail
        args = ("--mode", "sentence", "--window", "24", "--stride", "3", "--threshold", "0.5")
        for out in _predict(srv, path, *args):
            want = np.array([[w.start, w.end] for w in expected])
            assert np.abs(np.array(out["spans"]) - want).max() <= 3
        want = clf.word(path, 5)
        for out in _predict(srv, path, "--top-k", "5"):
            assert out["glosses"] == want.glosses
            np.testing.assert_allclose(out["scores"], want.scores, rtol=1e-4, atol=1e-6)
        assert srv.alive()


def _predict(srv, path: Path, *args: str) -> list[dict]:
    """`sign2text predict --json` over REST, then over gRPC."""
    out = []
    for where in (["--url", f"http://127.0.0.1:{srv.http}"], ["--grpc", f"127.0.0.1:{srv.grpc}"]):
        cmd = [sys.executable, "-m", "sign2text.cli", "predict", str(path), *where, *args, "--json"]
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout))
    return out
