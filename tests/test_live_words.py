"""Live mode's words (app/live_words.py, app/live.py's Session) against sentence mode's
(model/sentence.py): the same frames give the same words and spans, whether scored at once by
`transcribe` or window by window as a stream arrives in pieces; a word said final is never
taken back or said again; and the model server's `windows` mode refuses bad parameters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput

from app import live
from app.live_words import HOLD, Transcript, segment
from app.model_client import WINDOWS_OUTPUTS
from components.data.dataset import load_samples
from components.data.synth import synthesize
from components.training.context import load_videos, sign_strings
from model import sentence as S
from model.predict import Classifier
from model.serving.predictor import Sign2TextModel
from tests.conftest import moving_square
from tests.test_serving import _frames_request, _outputs

GLOSSES = ["up", "down", "right", "left"]
WINDOW = 30  # the fixture's: min_len 15, max_gap 3
STRIDE = live.LIVE_STRIDE


# ---- the words' rules alone, on made-up labels ----------------------------------------------


def _probs(label: int, rng: random.Random) -> list[float]:
    """Probabilities a frame of `label` (-1: no sign) could have: its gloss (or no sign) ahead."""
    p = [rng.random() * 0.1 for _ in range(len(GLOSSES) + 1)]
    p[label] = 0.6 + rng.random() * 0.3  # label -1 is the last column, no sign
    return p


def _labels(rng: random.Random, n_runs: int) -> list[int]:
    """Runs of random glosses and rests, long and short, then a rest sentence mode ends on."""
    out: list[int] = []
    for _ in range(n_runs):
        label = rng.choice([-1, -1, *range(len(GLOSSES))])
        out += [label] * rng.choice([1, 2, 3, 4, 6, 8, 12, 15, 20, 30])
    return out + [-1] * 8  # at least max_gap of rest, whichever frames are centres


def _said(labels: list[int], probs: list[list[float]], stride: int, rng: random.Random):
    """Windows every `stride`-th frame, fed in random pieces; the words said after each piece
    -> (all final words in order, the pending words after each piece)."""
    t = Transcript(GLOSSES, WINDOW)
    centres = list(range(0, len(labels), stride))
    final, pendings, i = [], [], 0
    while i < len(centres):
        n = rng.randint(1, 6)
        for c in centres[i : i + n]:
            t.add(c, probs[c])
        i += n
        now, pending = t.settle()
        final += now
        pendings.append(pending)
    return final, pendings


def _reference(probs: list[list[float]], centres: list[int]) -> list[tuple[str, int, int]]:
    """model/sentence.py's steps 2 and 3 on the windows at `centres`, numpy's interp between."""
    p = np.array([probs[c] for c in centres], np.float64)
    t = np.arange(centres[-1] + 1)
    frame = np.stack([np.interp(t, centres, p[:, k]) for k in range(p.shape[1])], axis=1)
    g = len(GLOSSES)
    labels = np.where(1.0 - frame[:, g] >= 0.5, frame[:, :g].argmax(axis=1), -1)
    return [(GLOSSES[k], s, e) for k, s, e in S.segment(labels, WINDOW // 2, WINDOW // 8)]


def _as_tuples(words: list[dict]) -> list[tuple[str, int, int]]:
    return [(w["word"], w["start"], w["end"]) for w in words]


@pytest.mark.parametrize("stride", [1, 3])
def test_words_said_bit_by_bit_are_sentence_modes_on_the_whole(stride):
    for seed in range(300):
        rng = random.Random(seed)
        labels = _labels(rng, rng.randint(1, 14))
        probs = [_probs(k, rng) for k in labels]
        final, pendings = _said(labels, probs, stride, rng)
        centres = list(range(0, len(labels), stride))
        whole = _reference(probs, centres)
        # Everything said final, in order, is the whole's words, spans included: none said
        # twice, none taken back. The stream ends on a rest, so nothing is left pending.
        assert _as_tuples(final) == whole, (seed, labels)
        assert pendings[-1] == [], (seed, labels)


def test_a_word_is_final_as_soon_as_a_rest_follows_it():
    rng = random.Random(0)
    t = Transcript(GLOSSES, WINDOW)
    labels = [-1] * 5 + [0] * 20 + [-1] * 2
    for c, k in enumerate(labels):
        t.add(c, _probs(k, rng))
    assert t.settle() == ([], [{"word": "up", "start": 5, "end": 24}])  # a 2-frame pause
    t.add(len(labels), _probs(-1, rng))  # the third frame of rest: nothing joins across it
    assert t.settle() == ([{"word": "up", "start": 5, "end": 24}], [])
    for c in range(len(labels) + 1, len(labels) + 20):
        t.add(c, _probs(-1, rng))
        assert t.settle() == ([], [])  # said once


def test_a_long_run_of_the_next_sign_settles_the_word_before():
    rng = random.Random(1)
    t = Transcript(GLOSSES, WINDOW)
    labels = [0] * 20 + [1] * 14
    for c, k in enumerate(labels):
        t.add(c, _probs(k, rng))
    assert t.settle()[0] == []  # "down" is still short: it might yet join "up"
    t.add(len(labels), _probs(1, rng))
    final, pending = t.settle()
    assert _as_tuples(final) == [("up", 0, 19)] and _as_tuples(pending) == [("down", 20, 34)]


def test_held_words_are_final_past_the_hold():
    rng = random.Random(2)
    t = Transcript(GLOSSES, WINDOW)
    for c in range(HOLD + 1):
        t.add(c, _probs(0, rng))
    assert _as_tuples(t.settle()[0]) == [("up", 0, HOLD)] and t.labels == []


def test_the_plain_python_segment_is_sentence_modes():
    rng = random.Random(3)
    for _ in range(500):
        labels = _labels(rng, rng.randint(1, 12))
        for min_len, max_gap in ((15, 3), (4, 2), (1, 1)):
            ours = segment(labels, min_len, max_gap)
            assert ours == S.segment(np.array(labels), min_len, max_gap), labels


# ---- the app's sessions on a real model, against transcribe ---------------------------------


class InProcess:
    """app/model_client.py's `windows` on the model in this process, as the server answers."""

    def __init__(self, clf: Classifier):
        self.clf, self.calls = clf, 0

    async def windows(self, rgb, count, height, width, *, start, stride, glosses=False):
        self.calls += 1
        rgb = np.frombuffer(rgb, np.uint8).reshape(count, height, width, 3)
        centres, probs, window = self.clf.windows(
            np.ascontiguousarray(rgb[..., ::-1]), start=start, stride=stride
        )
        out = {"window_probs": probs.tolist(), "window_centres": centres.tolist()}
        return out | {"window": [window]} | ({"glosses": self.clf.labels} if glosses else {})


@pytest.fixture(scope="module")
def clf(onnx_sentence_model) -> Classifier:
    """The sentence fixture on the runtime the server picks on a CPU (OpenVINO)."""
    return Classifier(onnx_sentence_model)


@pytest.fixture(scope="module")
def streams(clf, tmp_path_factory) -> list[np.ndarray]:
    """Strung-together signs of the test signers at the page's size, then the signer at rest."""
    import cv2

    root = tmp_path_factory.mktemp("signs")
    synthesize(root, per_class=8, signers=24, progress=False, only_splits=("test",))
    videos = load_videos(root, load_samples(root, ("test",)), clf.labels)
    videos = [
        dataclasses.replace(v, frames=np.stack([cv2.resize(f, (160, 120)) for f in v.frames]))
        for v in videos
    ]
    out = []
    for frames, _ in sign_strings(videos, 3, seed=11, min_signs=3):
        rest = np.repeat(frames[:1], WINDOW, axis=0)  # the signer as before the first sign
        out.append(np.concatenate([frames, rest]))
    return out


def _live(client, rgb: np.ndarray, pieces: list[int]) -> tuple[list[dict], list[dict]]:
    """The app's session fed the stream in these pieces -> (final words, last pending)."""
    h, w = rgb.shape[1:3]
    server, session = live.Live(client), live.Session()

    async def run():
        final, answer, i = [], {}, 0
        for n in pieces:
            answer = await server._read(session, rgb[i : i + n].tobytes(), w, h)
            assert "error" not in answer, answer
            final += answer["final"]
            i += n
        return final, answer["pending"]

    return asyncio.run(run())


def test_live_sessions_say_transcribes_words_on_the_same_frames(clf, streams):
    client = InProcess(clf)
    for n, bgr in enumerate(streams):
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        rng = random.Random(n)
        pieces = []
        while sum(pieces) < len(rgb):
            pieces.append(min(rng.choice([1, 1, 2, 3, 7, 12]), len(rgb) - sum(pieces)))
        final, pending = _live(client, rgb, pieces)
        whole = [(w.gloss, w.start, w.end) for w in S.transcribe(clf, bgr, stride=STRIDE)]
        # What live mode says final is what sentence mode says of the whole, spans included.
        # Its last words may still be pending: the stream has not ended for live mode, and
        # sentence mode reads the last frames with windows that repeat the very last one.
        said = _as_tuples(final)
        assert said == whole[: len(said)] and len(said) >= len(whole) - 1 >= 2, (said, whole)
        assert [w["word"] for w in pending] == [w[0] for w in whole[len(said) :]][: len(pending)]
    # Each window scored once: a call per message that completes one, never the whole again.
    assert client.calls <= sum(len(s) for s in streams) // STRIDE + 3 * len(streams)


def test_a_live_session_holds_a_window_of_frames_at_most(clf, streams):
    client = InProcess(clf)
    rgb = np.ascontiguousarray(streams[0][..., ::-1])
    h, w = rgb.shape[1:3]
    server, session = live.Live(client), live.Session()
    for i in range(len(rgb)):
        asyncio.run(server._read(session, rgb[i : i + 1].tobytes(), w, h))
        assert session.count <= WINDOW + live.LIVE_STRIDE
        assert session.first + session.count == i + 1  # stream positions keep counting


# ---- the model server's windows mode -------------------------------------------------------


def test_served_windows_are_the_classifiers_and_bad_parameters_are_400s(onnx_sentence_model):
    """The predictor's `windows` mode in-process: the classifier's windows, the glosses only when
    named; a bad start, window or stride is InvalidInput (HTTP 400) saying which."""
    m = Sign2TextModel(onnx_sentence_model)
    m.load()
    rgb = moving_square(40, seed=4)[..., ::-1].copy()
    req = _frames_request(rgb, mode="windows", start=5, stride=3)
    req.request_outputs = [RequestedOutput(n) for n in (*WINDOWS_OUTPUTS, "glosses")]
    out = _outputs(asyncio.run(m.predict(req)))
    centres, probs, window = m.classifier.windows(rgb[..., ::-1].copy(), start=5, stride=3)
    assert centres.tolist() == [5, 8, 11, 14, 17, 20, 23] and window == WINDOW  # 23 + 15 < 40
    assert out["window_centres"].tolist() == centres.tolist() and out["window"].tolist() == [30]
    np.testing.assert_allclose(out["window_probs"], probs, rtol=1e-5, atol=1e-6)
    assert [g.decode() for g in out["glosses"]] == m.classifier.labels
    plain = _outputs(asyncio.run(m.predict(_frames_request(rgb, mode="windows"))))
    assert "glosses" not in plain and plain["window_centres"].tolist() == list(range(0, 25, 2))
    short = _outputs(asyncio.run(m.predict(_frames_request(rgb[:20], mode="windows"))))
    assert short["window_probs"].shape == (3, len(m.classifier.labels) + 1)  # centres 0, 2, 4
    for bad, phrase in (
        ({"start": -1}, "start must be an integer in"),
        ({"start": 40}, "start must be an integer in"),
        ({"start": "x"}, "parameter start must be an integer"),
        ({"stride": 0}, "stride must be an integer in"),
        ({"stride": 31}, "stride must be an integer in"),
        ({"window": 0}, "window must be an integer in"),
        ({"window": 1.5}, "parameter window must be an integer"),
    ):
        with pytest.raises(InvalidInput, match=phrase):
            asyncio.run(m.predict(_frames_request(rgb, mode="windows", **bad)))
    assert asyncio.run(m.predict(_frames_request(rgb, mode="windows"))).outputs  # still serves
    m.stop()
