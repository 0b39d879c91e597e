"""What keeps one client from costing the server more than a request's share.

- `RequestGuard` (ASGI middleware): a body limit enforced while reading (413, from the
  Content-Length before anything is read), a time limit between body chunks (408), and, once
  the body is in, a watch for the client going away, which cancels the request's work. Both
  refusals close the connection: the rest of that body is never read.
- `SlowHeaders`: uvicorn's h11 protocol with a time limit for a request's headers, which
  uvicorn does not have (a client sending one header byte a minute would hold a connection).
- `Overloaded` (503 + Retry-After / gRPC UNAVAILABLE): too many requests in flight, or one ran
  past its time budget. Raised by model/serving/predictor.py.
- `OneLineClientErrors`: a client's mistake is logged as one line, not a traceback (kserve
  logs every 400 with exc_info; a client sending garbage would fill the log).
"""

from __future__ import annotations

import asyncio
import logging
import math

from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import Unavailable
from uvicorn.protocols.http.h11_impl import H11Protocol

from model.kserve_compat import InvalidInput
from model.video.limits import Limits

# Safe for any input: the decoded working set stays small whatever the file claims. The
# server's --max-* options start from these.
DEFAULT_LIMITS = Limits(
    max_duration_s=60.0,
    max_frames=1500,
    max_pixels=3840 * 2160,  # 4K
    max_aspect=4.0,
    max_kept_bytes=256 << 20,
)


class Overloaded(Unavailable):
    """503 (REST, with Retry-After) / UNAVAILABLE (gRPC): try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.reason


def _reply(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


async def overloaded_handler(_, exc: Overloaded) -> JSONResponse:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return _reply(503, exc.reason, headers)


HANDLERS = {Overloaded: overloaded_handler}


class RequestGuard:
    """Pure ASGI middleware (no body buffering of its own)."""

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float):
        self.app = app
        self.max_body = int(max_body_bytes)
        self.body_timeout = float(body_timeout_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            # Refused unread: the connection closes rather than draining what we refused.
            what = f"{int(declared)} bytes" if declared.isdigit() else "not a number"
            msg = f"request body is {what}; the limit is {self.max_body} bytes"
            return await _reply(413, msg, {"Connection": "close"})(scope, receive, send)

        received, body_done, responded, refused = 0, asyncio.Event(), False, False

        async def refuse(status: int, message: str):
            # Answered here, not by raising into the app: FastAPI turns any error while
            # reading a body into its own 400. The app then sees the client gone.
            nonlocal refused
            refused = True
            await _reply(status, message, {"Connection": "close"})(scope, receive, send)
            return {"type": "http.disconnect"}

        async def guarded_receive():
            nonlocal received
            if body_done.is_set() or refused:
                return await receive() if not refused else {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                msg = f"no request data for {self.body_timeout:g} s; send the body faster"
                return await refuse(408, msg)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    msg = f"request body is over the limit of {self.max_body} bytes"
                    return await refuse(413, msg)
                if not message.get("more_body", False):
                    body_done.set()
            return message

        async def watched_send(message):
            nonlocal responded
            if refused:
                return  # the client has its answer already
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        task = asyncio.current_task()
        gone = False

        async def watch():  # after the body, the next event can only be the client leaving
            nonlocal gone
            await body_done.wait()
            message = await receive()
            if message["type"] == "http.disconnect" and not responded:
                gone = True
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, guarded_receive, watched_send)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # nobody to answer: the work stopped (serving sees the cancel)
        except Exception:
            if not refused:
                raise  # the app's failure to read a body we refused is no news
        finally:
            watcher.cancel()


class SlowHeaders(H11Protocol):
    """h11 with a limit on how long a request's headers may take to arrive."""

    header_timeout_s = 30.0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self):
        super().on_response_complete()
        self._arm()  # the next request on this keep-alive connection gets the same limit

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # headers are in: the body has RequestGuard's own limit

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def _arm(self):
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self):
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _too_slow(self):
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def slow_headers(header_timeout_s: float) -> type[SlowHeaders]:
    """SlowHeaders with this limit on a request's headers."""
    return type("SlowHeaders", (SlowHeaders,), {"header_timeout_s": header_timeout_s})


class OneLineClientErrors(logging.Filter):
    """A client's mistake (400, 413, 503 ...) logs as one line: its reason, no traceback."""

    CLIENT = (InvalidInput, Overloaded)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.CLIENT):
            record.msg, record.args = "client error (%s): %s", (type(exc).__name__, exc)
            record.exc_info = None
            record.exc_text = None
        return True
