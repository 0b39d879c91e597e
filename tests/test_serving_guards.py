"""The predictor's guards, on the context-trained fixture model: more requests in flight than
allowed are refused at once with a retry time, a request past its time budget or whose client
went away stops between windows, and stop() removes a downloaded model and the decoder."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from model.serving.predictor import Sign2TextModel
from tests.conftest import moving_square, write_video
from tests.test_serving import SENTENCE_FIXTURE, _frames_request, _outputs, _video_request


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
