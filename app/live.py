"""Live mode: words appear as they are signed.

The page sends the camera's frames in small chunks (raw RGB, a few per request). Each session
keeps the last BUFFER frames; after each chunk the model's sentence mode reads that rolling
window (the model's `frames` input). A word is final once at least `settle` frames follow its
end (every window that could change it has been seen); final words are returned once, by their
position in the whole stream, so overlapping reads never repeat a word. Words not yet final
come back as `pending`, for the page to show in a lighter style.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

BUFFER = 120  # frames read per request: ~5 s at 25 fps
MAX_SESSIONS = 16  # concurrent live sessions; the oldest idle one goes first
IDLE_S = 120.0


@dataclass
class Session:
    width: int = 0
    height: int = 0
    frames: bytearray = field(default_factory=bytearray)  # the buffer, RGB, frame after frame
    first: int = 0  # stream index of the buffer's first frame
    said_until: int = -1  # stream index of the last final word's end
    seen: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return len(self.frames) // (self.width * self.height * 3) if self.width else 0

    def add(self, chunk: bytes, width: int, height: int) -> None:
        if (width, height) != (self.width, self.height):  # camera changed: start afresh
            self.width, self.height, self.frames = width, height, bytearray()
            self.first += self.count
        self.frames += chunk
        extra = self.count - BUFFER
        if extra > 0:
            del self.frames[: extra * width * height * 3]
            self.first += extra
        self.seen = time.monotonic()

    def forget_said(self, keep: int) -> None:
        """Drop frames before the last final word's end, but `keep` (a window's worth of
        context): what is said is not read again, so each read costs only the recent frames."""
        drop = min(self.count, self.said_until + 1 - keep - self.first)
        if drop > 0:
            del self.frames[: drop * self.width * self.height * 3]
            self.first += drop

    def words(self, words: list[str], spans: list[list[int]], settle: int) -> tuple[list, list]:
        """(final words not said before, pending words) from a sentence-mode answer on the
        buffer; each word is {"word", "start", "end"} in stream frames."""
        final, pending = [], []
        last = self.count - 1
        for w, (a, b) in zip(words, spans, strict=True):
            item = {"word": w, "start": self.first + a, "end": self.first + b}
            if item["start"] <= self.said_until:
                continue  # said already (a read of overlapping windows)
            if last - b >= settle:
                final.append(item)
                self.said_until = item["end"]
            else:
                pending.append(item)
        return final, pending


class Sessions:
    def __init__(self):
        self._items: OrderedDict[str, Session] = OrderedDict()

    def new(self) -> str:
        now = time.monotonic()
        for sid in [s for s, v in self._items.items() if now - v.seen > IDLE_S]:
            del self._items[sid]
        while len(self._items) >= MAX_SESSIONS:
            self._items.popitem(last=False)
        sid = secrets.token_urlsafe(12)
        self._items[sid] = Session()
        return sid

    def get(self, sid: str) -> Session | None:
        session = self._items.get(sid)
        if session is not None:
            self._items.move_to_end(sid)
        return session

    def end(self, sid: str) -> None:
        self._items.pop(sid, None)
