"""Live mode: words appear as they are signed.

The page opens a WebSocket (/api/live/ws), sends the frame size as JSON ({"width", "height"}),
then the camera's frames in small chunks (binary messages of raw RGB, a few frames each); the
app answers each chunk with {"final": [words], "pending": [words]}. The connection is the
session: it keeps the last BUFFER frames, and after each chunk the model's sentence mode reads
that rolling window (the model's `frames` input). A word is final once at least `settle` frames
follow its end (every window that could change it has been seen); final words are returned
once, by their position in the whole stream, so overlapping reads never repeat a word. Words
not yet final come back as `pending`, for the page to show in a lighter style.

Limits: frames at most LIVE_SIDE a side, LIVE_CHUNK frames a message (more closes the socket,
code 1009, saying so; so does anything but whole frames, code 1008); a connection idle for
IDLE_S is closed; at most MAX_SESSIONS connections per process, the next refused with 1013.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.model_client import ModelError

BUFFER = 120  # frames read per request: ~5 s at 25 fps
MAX_SESSIONS = 16  # live connections per process; the next is refused (close code 1013)
IDLE_S = 120.0  # a connection that sends nothing for this long is closed
LIVE_SIDE = 320  # live frames are at most this wide and high (the page sends 160 x 120)
LIVE_CHUNK = 50  # frames per message at most
MAX_MESSAGE = LIVE_CHUNK * LIVE_SIDE * LIVE_SIDE * 3  # the server's WebSocket message limit
SETTLE = 16  # frames after a word's end before it is final (half the default 30-frame window)
LIVE_CONTEXT = 30  # frames kept before the next word: a window's worth (the default window)
LIVE_STRIDE = 3  # windows every 3 frames: still finer than I3D's 8-frame time step
# Close codes (RFC 6455): a message against the protocol, one too big, and "try again later".
POLICY, TOO_BIG, TRY_AGAIN = 1008, 1009, 1013


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


class Live:
    """The WebSocket endpoint: the connection is the session. All of a session's state is in
    `serve`'s frame, so whichever replica accepted the connection holds it and no other ever
    needs it; a page whose connection drops opens a new session (on any replica)."""

    def __init__(self, client):
        self.client = client
        self.open = 0  # live connections in this process

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        origin = ws.headers.get("origin")
        if origin and urlsplit(origin).netloc != ws.headers.get("host"):
            # A WebSocket is not held to the same-origin policy: another site's page must not
            # open sessions from its visitors' browsers.
            await ws.close(POLICY, "live sessions are for the app's own page")
            return
        if self.open >= MAX_SESSIONS:
            await ws.close(TRY_AGAIN, f"{MAX_SESSIONS} live sessions here already; try again soon")
            return
        self.open += 1
        try:
            await self._session(ws)
        except WebSocketDisconnect:
            pass  # the page went away mid-answer
        finally:
            self.open -= 1

    async def _session(self, ws: WebSocket) -> None:
        session, size = Session(), None
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), IDLE_S)
            except TimeoutError:
                await ws.close(1000, f"nothing for {IDLE_S:g} s: live session closed")
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                size = _size(message["text"])
                if size is None:
                    await ws.close(POLICY, SIZE_FIRST)
                    return
                continue
            chunk = message.get("bytes") or b""
            if size is None:
                await ws.close(POLICY, SIZE_FIRST)
                return
            w, h = size
            frame = w * h * 3
            if len(chunk) > LIVE_CHUNK * frame:
                await ws.close(TOO_BIG, f"at most {LIVE_CHUNK} frames of {w} x {h} per message")
                return
            if not chunk or len(chunk) % frame:
                await ws.close(POLICY, f"a message is whole {w} x {h} RGB frames")
                return
            await ws.send_json(await self._read(session, chunk, w, h))

    async def _read(self, session: Session, chunk: bytes, w: int, h: int) -> dict:
        session.add(chunk, w, h)
        if session.count < 2:
            return {"final": [], "pending": []}
        try:
            out = await self.client.sentence_frames(
                bytes(session.frames), session.count, h, w, stride=LIVE_STRIDE
            )
        except ModelError as e:  # the model is down or refused: the session goes on
            return {"final": [], "pending": [], "error": str(e)}
        final, pending = session.words(out["words"], out["spans"], SETTLE)
        session.forget_said(keep=LIVE_CONTEXT)
        return {"final": final, "pending": pending}


SIZE_FIRST = f'send {{"width", "height"}} first, each 1 to {LIVE_SIDE}'


def _size(text: str) -> tuple[int, int] | None:
    try:
        sent = json.loads(text)
        w, h = sent["width"], sent["height"]
    except (ValueError, KeyError, TypeError):
        return None
    ok = all(type(v) is int and 1 <= v <= LIVE_SIDE for v in (w, h))
    return (w, h) if ok else None
