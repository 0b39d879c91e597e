"""The web app: `python -m app.main --model-url URL` (the app image's CMD; `sign2text app` runs
the same parser and server).

A FastAPI app serving one static page (app/static/) and a small JSON API. It talks to the model
only over its KServe v2 REST endpoint (app/model_client.py), so it carries no torch and no model
code. Why FastAPI and a plain page rather than Streamlit or Gradio: the webcam and live modes
need the browser's own MediaRecorder and a request per clip, which a page of our own does
directly; FastAPI and uvicorn are already in the project's pinned tree (KServe's server).

    GET  /                the page
    GET  /api/model       {"name", "version", "labels", "feedback"}
    POST /api/predict     multipart: `file` (a video) or `url` (a link the app fetches), `mode`
                          -> {"token", "mode", "result", "model"}
    POST /api/feedback    {"token", "verdict": "correct" | "wrong", "gloss"} -> {"id", "status"}
    POST /api/live        -> {"session"};  POST /api/live/{session}?width=W&height=H with raw
                          RGB frames -> {"final": [words], "pending": [words]} (app/live.py)
    GET  /healthz, /readyz
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from app.live import Sessions
from app.model_client import ModelClient, ModelError
from app.urlfetch import FetchError, fetch

STATIC = Path(__file__).parent / "static"
MIB = 1 << 20
KEPT = 32  # recent predictions whose video is kept for feedback, oldest dropped first
KEPT_S = 3600.0
FLUSH_S = 10.0  # how often queued feedback is retried
LIVE_SIDE = 320  # live frames are at most this wide and high (the page sends 160 x 120)
LIVE_CHUNK = 50  # frames per live request at most
SETTLE = 16  # frames after a word's end before it is final (half the default 30-frame window)
LIVE_CONTEXT = 30  # frames kept before the next word: a window's worth (the default window)
LIVE_STRIDE = 3  # windows every 3 frames: still finer than I3D's 8-frame time step


def build_parser(
    prog: str = "python -m app.main", add_help: bool = True
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="The sign2text web app (talks to the model's KServe v2 REST endpoint).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-url", required=True, help="the model server's REST base URL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--feedback", default=None, help="where feedback goes: s3://BUCKET/PREFIX or a local folder"
    )
    p.add_argument(
        "--spool", default=None, help="local folder keeping feedback while the store is down"
    )
    p.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let video links reach loopback and private addresses",
    )
    p.add_argument("--max-video-mb", type=float, default=32, help="largest video")
    return p


class Predictions:
    """Recent predictions and their videos, so feedback needs no second upload. Bounded in
    count and age; a token is unguessable, so one user cannot send feedback on another's."""

    def __init__(self):
        self._items: OrderedDict[str, tuple[float, bytes, str, dict]] = OrderedDict()

    def add(self, video: bytes, filename: str, answer: dict) -> str:
        token = secrets.token_urlsafe(16)
        self._items[token] = (time.monotonic(), video, filename, answer)
        while len(self._items) > KEPT:
            self._items.popitem(last=False)
        return token

    def get(self, token: str) -> tuple[bytes, str, dict] | None:
        item = self._items.get(token)
        if item is None or time.monotonic() - item[0] > KEPT_S:
            return None
        return item[1:]


def create_app(args: argparse.Namespace) -> FastAPI:
    client = ModelClient(args.model_url)
    store = _store(args)
    kept = Predictions()
    max_bytes = int(args.max_video_mb * MIB)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        flusher = asyncio.create_task(_flush_forever(store)) if store else None
        yield
        if flusher:
            flusher.cancel()
        await client.close()

    web = FastAPI(title="sign2text", lifespan=lifespan, docs_url=None, redoc_url=None)
    web.mount("/static", StaticFiles(directory=STATIC), name="static")

    @web.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @web.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @web.get("/readyz")
    async def readyz():
        ok = await client.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @web.get("/api/model")
    async def model():
        try:
            meta, labels = await client.metadata(), await client.labels()
        except ModelError as e:
            return _error(str(e), 503)
        return meta | {"labels": labels, "feedback": store is not None}

    @web.post("/api/predict")
    async def predict(request: Request):
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            return _error("send the video with a Content-Length", 411)
        if int(declared) > max_bytes + MIB:
            return _error(f"the video is larger than {args.max_video_mb:g} MB", 413)
        form = await request.form(max_files=1, max_fields=4)
        mode = form.get("mode") or "word"
        if mode not in ("word", "sentence"):
            return _error(f"mode must be word or sentence, got {mode!r}", 400)
        try:
            video, filename = await _video_of(form, max_bytes, args.allow_private_urls)
            result = await client.predict(video, mode, top_k=5 if mode == "word" else None)
            meta = await client.metadata()
        except (FetchError, ValueError) as e:
            return _error(str(e), 400)
        except ModelError as e:
            return _error(str(e), e.status)
        answer = {"mode": mode, "result": result, "model": meta}
        return answer | {"token": kept.add(video, filename, answer)}

    @web.post("/api/feedback")
    async def feedback(request: Request):
        if store is None:
            return _error("this app was started without --feedback: nowhere to keep it", 409)
        try:
            body = await request.json()
            token, verdict, gloss = body["token"], body["verdict"], body.get("gloss")
        except (ValueError, KeyError, TypeError):
            return _error("send {token, verdict, gloss}", 400)
        item = kept.get(str(token))
        if item is None:
            return _error("that prediction is no longer kept here; predict again", 404)
        if verdict not in ("correct", "wrong") or (verdict == "wrong" and not gloss):
            return _error("verdict must be correct, or wrong with the correct gloss", 400)
        video, filename, answer = item
        record = _record(answer, verdict, gloss)
        try:  # the store writes to S3 or disk: off the event loop
            return await asyncio.to_thread(store.submit, video, filename, record)
        except ValueError as e:  # SpoolFull: neither the store nor the local spool took it
            return _error(f"feedback cannot be kept right now: {e}", 503)

    live = Sessions()

    @web.post("/api/live")
    async def live_start():
        return {"session": live.new()}

    @web.post("/api/live/{sid}")
    async def live_frames(sid: str, request: Request, width: int, height: int):
        session = live.get(sid)
        if session is None:
            return _error("no such live session; start again", 404)
        if not (1 <= width <= LIVE_SIDE and 1 <= height <= LIVE_SIDE):
            return _error(f"live frames must be at most {LIVE_SIDE} x {LIVE_SIDE}", 400)
        frame = width * height * 3
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or not 0 < int(declared) <= LIVE_CHUNK * frame:
            return _error(f"send 1 to {LIVE_CHUNK} frames of {width} x {height} RGB", 413)
        chunk = await request.body()
        if len(chunk) % frame:
            return _error(f"the body is not whole {width} x {height} RGB frames", 400)
        session.add(chunk, width, height)
        if session.count < 2:
            return {"final": [], "pending": []}
        try:
            out = await client.sentence_frames(
                bytes(session.frames), session.count, height, width, stride=LIVE_STRIDE
            )
        except ModelError as e:
            return _error(str(e), e.status)
        final, pending = session.words(out["words"], out["spans"], SETTLE)
        session.forget_said(keep=LIVE_CONTEXT)
        return {"final": final, "pending": pending}

    @web.delete("/api/live/{sid}")
    async def live_end(sid: str):
        live.end(sid)
        return {"ended": True}

    return web


def _store(args: argparse.Namespace):
    if not args.feedback:
        return None
    from app.feedback_store import FeedbackStore

    spool = args.spool or str(Path.home() / ".cache" / "sign2text" / "feedback-spool")
    return FeedbackStore(args.feedback, spool)


async def _flush_forever(store) -> None:
    while True:
        await asyncio.sleep(FLUSH_S)
        with contextlib.suppress(Exception):  # a store still down is retried next time
            await asyncio.to_thread(store.flush)


async def _video_of(form, max_bytes: int, allow_private: bool) -> tuple[bytes, str]:
    upload, url = form.get("file"), (form.get("url") or "").strip()
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"the video is larger than {max_bytes >> 20} MB")
        if not data:
            raise ValueError("the file is empty")
        return data, upload.filename
    if url:
        return await fetch(url, max_bytes=max_bytes, allow_private=allow_private)
    raise ValueError("choose a video file, give a video URL, or record one")


def _record(answer: dict, verdict: str, gloss: str | None) -> dict:
    result = answer["result"]
    if answer["mode"] == "word":
        predicted, scores = result["glosses"][:1], result["scores"][:1]
    else:
        predicted, scores = result["words"], result["confidences"]
    return {
        "predicted": predicted,
        "scores": scores,
        "mode": answer["mode"],
        "model": answer["model"],
        "verdict": verdict,
        "gloss": gloss if verdict == "wrong" else " ".join(predicted),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def run(args: argparse.Namespace) -> None:
    """Serve the app with build_parser's arguments until stopped."""
    import uvicorn

    uvicorn.run(create_app(args), host=args.host, port=args.port, log_level="info")


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
