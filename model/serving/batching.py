"""Concurrent requests' clips into one forward pass: a bounded micro-batcher.

Serving decodes and preprocesses each request in a worker thread of its own; every forward goes
through one `Batcher`, which has the runtime's call (`logits(clips)`, model/runtimes/choice.py) so
the Classifier runs on it unchanged. The first clips to arrive wait at most `max_wait_s` for
others, and not at all when every request in flight (`in_flight()`, the server's count) is
already in the batch: a lone client pays no wait. A batch holds at most `max_batch` clips (a
caller's own batch, e.g. sentence mode's windows, larger than that runs alone, never split).
One thread runs the forwards, so the network has every core while the workers decode; its batch
stays bounded, so one forward's memory does too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from model.runtimes.choice import Runtime


class Batcher:
    def __init__(
        self,
        runtime: Runtime,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        in_flight: Callable[[], int] | None = None,
    ):
        """in_flight: how many requests may send clips now (None: unknown, always wait)."""
        if max_batch < 1 or not max_wait_s >= 0:
            raise ValueError(
                f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}"
            )
        self.runtime, self.max_batch, self.max_wait_s = runtime, int(max_batch), float(max_wait_s)
        self.in_flight = in_flight
        self.name = runtime.name
        self.precision = getattr(runtime, "precision", "f32")
        self.reason = getattr(runtime, "reason", "")
        self._queue: deque[tuple[np.ndarray, Future]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = self.clips = 0  # forwards run, clips through them: the mean batch size

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """The runtime's logits(clips), computed in a batch with other callers' clips."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:  # lazily: a batcher never asked starts no thread
                self._thread = threading.Thread(
                    target=self._run, name="sign2text-forward", daemon=True
                )
                self._thread.start()
            self._queue.append((clips, future))
            self._ready.notify()
        return future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            pending, self._queue = list(self._queue), deque()
        for _, future in pending:
            future.set_exception(RuntimeError("the server is stopping"))

    def _next_batch(self) -> list[tuple[np.ndarray, Future]] | None:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft()]
            size = len(batch[0][0])
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                if self._queue:
                    if size + len(self._queue[0][0]) > self.max_batch:
                        break  # it goes first in the next batch
                    batch.append(self._queue.popleft())
                    size += len(batch[-1][0])
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or (self.in_flight is not None and self.in_flight() <= len(batch)):
                    break  # the wait is over, or nobody else could join
                self._ready.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                clips = batch[0][0] if len(batch) == 1 else np.concatenate([c for c, _ in batch])
                logits = self.runtime.logits(clips)
            except BaseException as e:  # every caller gets the error; the thread goes on
                for _, future in batch:
                    future.set_exception(e)
                continue
            self.batches, self.clips = self.batches + 1, self.clips + len(clips)
            start = 0
            for c, future in batch:
                future.set_result(logits[start : start + len(c)])
                start += len(c)
