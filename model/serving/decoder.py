"""Decoding untrusted videos in a child process with a memory ceiling.

A small file can make FFmpeg allocate gigabytes inside one frame (a 16000 x 16000 JPEG in an
AVI whose header says 64 x 64): no check in Python runs before that memory is spent, so the
bound comes from the operating system. The child (`python -m model.serving.decoder`) imports OpenCV
and numpy only, sets RLIMIT_DATA, and runs model/video/limits.py's read_video for each request; an
allocation past the ceiling fails inside FFmpeg (the frame does not decode) or kills the child,
and either way the request gets a clear error while the server keeps its memory. A request
that is cancelled or runs past its deadline kills the child too; the next request starts a
fresh one.

    Decoder(memory_bytes).read(path, mode, cfg, limits, deadline=..., cancelled=...) -> frames

Protocol over two pipes (multiprocessing Connections): the parent sends (path, mode, cfg dict,
limits dict); the child answers ("ok", shape, dtype) followed by the raw frame bytes, or
("error", kind, message).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from model.video.clip import PreprocessConfig
from model.video.decode import OverLimit, VideoError
from model.video.limits import Limits

POLL_S = 0.05  # how often a waiting read looks at its deadline and cancellation


class Cancelled(Exception):
    """The client left, or the request's time budget ran out (the message says which)."""


class Decoder:
    """One child process at a time, used by one request at a time (a lock serialises)."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = int(memory_bytes)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    def read(
        self,
        path: str | os.PathLike,
        mode: str,
        cfg: PreprocessConfig,
        limits: Limits,
        *,
        deadline: float = float("inf"),
        cancelled: threading.Event | None = None,
    ) -> np.ndarray:
        """model/video/limits.py's read_video(path, mode, cfg, limits), run in the child.

        Raises VideoError subclasses for the video's faults (OverLimit when it needs more
        memory than the ceiling), Cancelled when `cancelled` is set or time.monotonic() passes
        `deadline` first."""
        with self._lock:
            self._start()
            self._send.send((str(path), mode, cfg.to_dict(), dataclasses.asdict(limits)))
            while not self._recv.poll(POLL_S):
                why = _stop_reason(deadline, cancelled)
                if why or self._proc.poll() is not None:
                    if why:
                        self._stop()
                        raise Cancelled(why)
                    break
            try:
                head = self._recv.recv()
                if head[0] == "ok":
                    frames = np.empty(head[1], dtype=head[2])
                    self._recv.recv_bytes_into(memoryview(frames).cast("B"))
                    return frames
            except (EOFError, OSError):  # the child died: the kernel refused it memory
                self._stop()
                raise OverLimit(
                    f"decoding this video needs more than the decoder's "
                    f"{self.memory_bytes >> 20} MiB of memory"
                ) from None
        kind, message = head[1], head[2]
        raise (OverLimit if kind == "memory" else _ERRORS.get(kind, VideoError))(message)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        root = str(Path(__file__).resolve().parents[1])  # where the `model` package lives
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            # One thread each: every thread's stack, malloc arena and OpenBLAS buffer counts
            # against the ceiling, which would then depend on the machine's core count
            # (measured: 243 MB of address space after importing cv2 on 2 cores, 63 MB so).
            **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_ARENA_MAX"), "1"),
        }
        argv = [sys.executable, "-m", "model.serving.decoder", str(to_child), str(from_child)]
        self._proc = subprocess.Popen(
            [*argv, str(self.memory_bytes)], pass_fds=(to_child, from_child), env=env
        )
        os.close(to_child)
        os.close(from_child)
        self._send = Connection(from_parent, readable=False)
        self._recv = Connection(to_parent, writable=False)

    def _stop(self) -> None:
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def _stop_reason(deadline: float, cancelled: threading.Event | None) -> str | None:
    if cancelled is not None and cancelled.is_set():
        return "the client went away"
    if time.monotonic() > deadline:
        return "the request ran past its time budget"
    return None


def _error_kinds() -> dict[str, type[VideoError]]:
    from model.video import decode

    kinds = [v for v in vars(decode).values() if isinstance(v, type) and issubclass(v, VideoError)]
    return {k.__name__: k for k in kinds}


_ERRORS = _error_kinds()


def _serve(recv: Connection, send: Connection) -> None:
    """The child's loop: one request at a time until the parent closes the pipe."""
    import cv2

    from model.video import decode
    from model.video.limits import read_video

    cv2.setNumThreads(1)
    decode.FFMPEG_THREADS = 1

    while True:
        try:
            path, mode, cfg, limits = recv.recv()
        except EOFError:
            return
        try:
            frames = read_video(path, mode, PreprocessConfig.from_dict(cfg), Limits(**limits))
        except VideoError as e:
            send.send(("error", type(e).__name__, str(e)))
        except (MemoryError, cv2.error) as e:
            text = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            if isinstance(e, MemoryError) or re.search("memory|alloc", text, re.I):
                send.send(("error", "memory", f"decoding this video ran out of memory ({text})"))
            else:
                send.send(("error", "VideoError", f"OpenCV cannot decode this video: {text}"))
        else:
            frames = np.ascontiguousarray(frames)
            send.send(("ok", frames.shape, frames.dtype.str))
            send.send_bytes(memoryview(frames).cast("B"))


def main(argv: list[str]) -> None:
    import resource

    recv_fd, send_fd, memory = (int(a) for a in argv)
    # RLIMIT_DATA counts what FFmpeg and OpenCV allocate (heap and private mappings), not the
    # shared libraries mapped in, so the ceiling is about the video, not about imports.
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    _serve(Connection(recv_fd, writable=False), Connection(send_fd, readable=False))


if __name__ == "__main__":
    main(sys.argv[1:])
