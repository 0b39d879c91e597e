"""Live mode: words appear as they are signed.

The page opens a WebSocket (/api/live/ws), sends the frame size as JSON ({"width", "height"}),
then the camera's frames as they come (binary messages of raw RGB, one or a few frames each; one
message in flight, the frames that come meanwhile go together in the next); the app answers
each message with {"final": [words], "pending": [words]}. The connection is the session.

Each window of the stream is scored once: when a message completes windows (a window of the
model's length, centred on every LIVE_STRIDE-th frame, as sentence mode's), the app sends the
frames they need to the model's `windows` mode and turns their probabilities into words as
sentence mode would on the same frames (app/live_words.py), so a read costs the new windows
only and the session keeps at most a window's frames. A word is final as soon as no frame still
to come can change it (app/live_words.py says when: for a word followed by a rest, a window's
half and a few frames after its end); final words are said once, those not yet final come back
as `pending`, for the page to show in a lighter style.

Limits: frames at most LIVE_SIDE a side, LIVE_CHUNK frames a message (more closes the socket,
code 1009, saying so; so does anything but whole frames, code 1008); a connection idle for
IDLE_S is closed; at most MAX_SESSIONS connections per process, the next refused with 1013.
While the model cannot answer, frames wait, BUFFER at most; past that the stream starts afresh
from the newest frames (words not yet final are lost).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.live_words import Transcript
from app.model_client import ModelError

BUFFER = 120  # frames held at most while no window can be scored: ~5 s at 25 fps
MAX_SESSIONS = 16  # live connections per process; the next is refused (close code 1013)
IDLE_S = 120.0  # a connection that sends nothing for this long is closed
LIVE_SIDE = 320  # live frames are at most this wide and high (the page sends 160 x 120)
LIVE_CHUNK = 50  # frames per message at most
MAX_MESSAGE = LIVE_CHUNK * LIVE_SIDE * LIVE_SIDE * 3  # the server's WebSocket message limit
LIVE_STRIDE = 3  # windows every 3 frames: still finer than I3D's 8-frame time step
# Close codes (RFC 6455): a message against the protocol, one too big, and "try again later".
POLICY, TOO_BIG, TRY_AGAIN = 1008, 1009, 1013


@dataclass
class Session:
    """A live stream: the frames its next windows need, and what its scored windows said."""

    width: int = 0
    height: int = 0
    frames: bytearray = field(default_factory=bytearray)  # RGB, frame after frame
    first: int = 0  # stream index of frames[0]
    origin: int = 0  # where the scored stream starts: its first frame repeats before it
    next_centre: int = 0  # stream index of the next window's centre
    window: int | None = None  # the model's window, from its first answer
    glosses: list[str] | None = None  # the model's glosses, in its columns' order
    transcript: Transcript | None = None
    pending: list[dict] = field(default_factory=list)  # the words not yet final, as last said
    seen: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return len(self.frames) // (self.width * self.height * 3) if self.width else 0

    def add(self, chunk: bytes, width: int, height: int) -> None:
        if (width, height) != (self.width, self.height):  # camera changed: start afresh
            self.first += self.count
            self.width, self.height, self.frames = width, height, bytearray()
            self.restart()
        self.frames += chunk
        extra = self.count - max(BUFFER, (self.window or 0) + LIVE_CHUNK)
        if extra > 0:  # no window could be scored for long (the model away): start afresh
            del self.frames[: extra * width * height * 3]
            self.first += extra
            self.restart()
        self.seen = time.monotonic()

    def restart(self) -> None:
        """A new scored stream from the first frame held; words not yet final are dropped."""
        self.origin = self.next_centre = self.first
        self.transcript, self.pending = None, []

    def due(self) -> bool:
        """Whether the frames held complete a window not yet scored (or the model's window is
        still to be learnt)."""
        if self.window is None:
            return self.count >= 2
        last = self.first + self.count - 1
        return self.next_centre + self.window - 1 - self.window // 2 <= last

    def scored(self, out: dict) -> tuple[list, list]:
        """The model's answer on the frames held: its windows go into the transcript; the
        frames no later window needs are dropped. -> (final words, pending words)."""
        window, glosses = out["window"][0], out.get("glosses") or self.glosses
        probs, centres = out["window_probs"], out["window_centres"]
        learnt = self.window in (None, window) and glosses is not None
        if not learnt or any(len(p) != len(glosses) + 1 for p in probs):
            self.window, self.glosses = window, None  # another model: learn it afresh
            self.restart()
            return [], []
        self.window, self.glosses = window, glosses
        if self.transcript is None:
            self.transcript = Transcript(glosses, window)
        for c, p in zip(centres, probs, strict=True):
            self.transcript.add(self.first + c, p)
            self.next_centre = self.first + c + LIVE_STRIDE
        keep = max(self.origin, self.next_centre - window // 2)
        drop = min(self.count, keep - self.first)
        if drop > 0:
            del self.frames[: drop * self.width * self.height * 3]
            self.first += drop
        final, self.pending = self.transcript.settle()
        return final, self.pending


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
        if not session.due():
            return {"final": [], "pending": session.pending}
        try:
            out = await self.client.windows(
                bytes(session.frames),
                session.count,
                h,
                w,
                start=session.next_centre - session.first,
                stride=LIVE_STRIDE,
                glosses=session.glosses is None,
            )
        except ModelError as e:  # the model is down or refused: the session goes on
            return {"final": [], "pending": [], "error": str(e)}
        final, pending = session.scored(out)
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
