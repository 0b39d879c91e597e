"""Concurrent requests share forwards (model/serving/batching.py): the batcher's rules with a
recording runtime, then the real predictor answering concurrent requests in fewer forwards, each
with the answer it gets alone."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model.serving.batching import Batcher
from model.serving.predictor import Sign2TextModel
from tests.conftest import moving_square
from tests.test_serving import _frames_request, _outputs


class Recording:
    """A runtime whose logits say which clips they came from: row i is clip i's first value."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.delay_s, self.fail_on = delay_s, fail_on

    def logits(self, clips: np.ndarray) -> np.ndarray:
        self.sizes.append(len(clips))
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in clips[:, 0, 0, 0, 0]:
            raise RuntimeError("forward failed")
        return clips[:, :1, 0, 0, 0] * np.ones((1, 3), np.float32)


def _clips(tag: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3, 2, 4, 4), tag, np.float32) + np.arange(n)[:, None, None, None, None]


def _call_together(batcher: Batcher, calls: list[np.ndarray]) -> list:
    start = threading.Barrier(len(calls))

    def one(clips):
        start.wait()
        try:
            return batcher.logits(clips)
        except RuntimeError as e:
            return e

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_concurrent_callers_share_forwards_and_each_gets_its_rows():
    runtime = Recording(delay_s=0.05)
    batcher = Batcher(runtime, max_batch=4, max_wait_s=0.2)
    calls = [_clips(10.0 * i) for i in range(8)]
    got = _call_together(batcher, calls)
    for clips, logits in zip(calls, got, strict=True):
        np.testing.assert_array_equal(logits, np.repeat(clips[:, :1, 0, 0, 0], 3, axis=1))
    assert sum(runtime.sizes) == 8 and max(runtime.sizes) <= 4
    assert len(runtime.sizes) <= 3  # 8 callers, batches of up to 4: 2 forwards, 3 at worst
    assert (batcher.batches, batcher.clips) == (len(runtime.sizes), 8)
    batcher.close()


def test_a_callers_batch_is_never_split_and_never_overfills_one():
    runtime = Recording(delay_s=0.05)
    batcher = Batcher(runtime, max_batch=4, max_wait_s=0.2)
    calls = [_clips(100.0, 6), _clips(200.0, 3), _clips(300.0, 3)]  # sentence-mode-sized
    got = _call_together(batcher, calls)
    for clips, logits in zip(calls, got, strict=True):
        assert logits.shape == (len(clips), 3)
        np.testing.assert_array_equal(logits[:, 0], clips[:, 0, 0, 0, 0])
    assert sorted(runtime.sizes) == [3, 3, 6]  # the 6 alone; 3 + 3 would overfill 4
    batcher.close()


def test_max_batch_one_is_one_caller_per_forward_and_a_failure_reaches_only_its_batch():
    runtime = Recording(fail_on=30.0)
    batcher = Batcher(runtime, max_batch=1, max_wait_s=0.2)
    got = _call_together(batcher, [_clips(10.0 * i) for i in range(5)])
    assert runtime.sizes == [1] * 5
    assert [isinstance(g, RuntimeError) for g in got] == [False, False, False, True, False]
    assert batcher.logits(_clips(7.0))[0, 0] == 7.0  # the forward thread goes on
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.logits(_clips(1.0))


def test_no_batch_waits_longer_than_max_wait():
    runtime = Recording()
    batcher = Batcher(runtime, max_batch=64, max_wait_s=0.05)
    t = time.monotonic()
    batcher.logits(_clips(1.0))  # alone: waits max_wait for company, then runs
    assert 0.04 <= time.monotonic() - t < 1.0
    batcher.close()


def test_a_lone_request_does_not_wait_and_others_in_flight_are_waited_for():
    """Told that one request is in flight, the batcher runs its clips at once, however long the
    wait it may take; told that two are, it waits for the second, which joins the batch."""
    in_flight = [1]
    runtime = Recording()
    batcher = Batcher(runtime, max_batch=8, max_wait_s=5.0, in_flight=lambda: in_flight[0])
    t = time.monotonic()
    batcher.logits(_clips(1.0))
    assert time.monotonic() - t < 2.5 and runtime.sizes == [1]
    in_flight[0] = 2
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.logits, _clips(2.0))
        time.sleep(0.2)  # the second request is still decoding
        second = pool.submit(batcher.logits, _clips(3.0))
        assert first.result()[0, 0] == 2.0 and second.result()[0, 0] == 3.0
    assert runtime.sizes == [1, 2]  # one forward for both
    batcher.close()


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino"])
def test_served_concurrent_requests_batch_and_answer_as_alone(onnx_sentence_model, runtime):
    """Six concurrent word-mode requests through the real predictor: fewer forwards than
    requests, and each gets the glosses and scores it gets alone."""
    videos = [moving_square(30, seed=i)[..., ::-1].copy() for i in range(6)]
    m = Sign2TextModel(
        onnx_sentence_model,
        runtime=runtime,
        max_batch_size=8,
        max_batch_wait_s=0.5,
        max_in_flight=6,
    )
    m.load()
    assert m.classifier.runtime.name == runtime
    alone = [_outputs(asyncio.run(m.predict(_frames_request(v)))) for v in videos]
    forwards, clips = m._batcher.batches, m._batcher.clips

    async def together():
        return await asyncio.gather(*(m.predict(_frames_request(v)) for v in videos))

    both = [_outputs(r) for r in asyncio.run(together())]
    assert m._batcher.batches - forwards < len(videos)
    assert m._batcher.clips - clips == len(videos)
    for a, b in zip(alone, both, strict=True):
        assert a["glosses"].tolist() == b["glosses"].tolist()
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-6)
    m.stop()
