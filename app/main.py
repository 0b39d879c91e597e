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
    POST /api/feedback    multipart: `token`, `verdict` ("correct" | "wrong"), `gloss`, and the
                          video again (`file`, or the same `url`) -> {"id", "status"}
    WS   /api/live/ws     {"width", "height"}, then binary chunks of raw RGB frames, each
                          answered {"final": [words], "pending": [words]} (app/live.py)
    GET  /healthz, /readyz

Nothing of a user's lives in this process between requests, so any number of replicas serve
the app behind a Service without session affinity: a prediction's token is a signed record of
the answer (app/tokens.py) that any replica checks against the video sent with the feedback,
and a live session is its WebSocket connection, held by the replica that accepted it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from app import tokens
from app.live import MAX_MESSAGE, Live
from app.model_client import ModelClient, ModelError
from app.urlfetch import FetchError, fetch

STATIC = Path(__file__).parent / "static"
MIB = 1 << 20
FLUSH_S = 10.0  # how often queued feedback is retried


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
    p.add_argument(
        "--token-key-file",
        default=None,
        help="a file holding the key that signs prediction tokens (at least 32 bytes; else "
        f"${tokens.ENV_KEY}, else a random key kept in the feedback store)",
    )
    return p


def create_app(args: argparse.Namespace) -> FastAPI:
    client = ModelClient(args.model_url)
    store = _store(args)
    keys = tokens.Keys(tokens.explicit_key(getattr(args, "token_key_file", None)), store)
    max_bytes = int(args.max_video_mb * MIB)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        flusher = asyncio.create_task(_flush_forever(store)) if store else None
        if keys.enabled:  # read (or create) the key now, not on the first prediction
            threading.Thread(target=_quietly, args=(keys.get,), daemon=True).start()
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

    async def form_of(request: Request):
        """The multipart form, or an error response when it is missing or too large."""
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            return _error("send the video with a Content-Length", 411)
        if int(declared) > max_bytes + MIB:
            return _error(f"the video is larger than {args.max_video_mb:g} MB", 413)
        return await request.form(max_files=1, max_fields=5)

    @web.post("/api/predict")
    async def predict(request: Request):
        form = await form_of(request)
        if isinstance(form, JSONResponse):
            return form
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
        token, why = None, None
        if keys.enabled:
            try:
                said = _said(answer)  # hashing a video of many MB: off the event loop too
                token = await asyncio.to_thread(
                    lambda: tokens.issue(keys.get(), video, filename, said)
                )
            except tokens.KeyUnavailable as e:
                why = f"this prediction cannot take feedback: {e}"
        return answer | {"token": token} | ({"feedback_error": why} if why else {})

    @web.post("/api/feedback")
    async def feedback(request: Request):
        if store is None:
            return _error("this app was started without --feedback: nowhere to keep it", 409)
        form = await form_of(request)
        if isinstance(form, JSONResponse):
            return form
        token, verdict, gloss = (form.get(k) for k in ("token", "verdict", "gloss"))
        gloss = gloss if isinstance(gloss, str) and gloss else None
        if not isinstance(token, str) or not token:
            return _error("send the prediction's token, the verdict, the gloss and the video", 400)
        if verdict not in ("correct", "wrong") or (verdict == "wrong" and not gloss):
            return _error("verdict must be correct, or wrong with the correct gloss", 400)
        try:  # the token first: a link is fetched again only for a prediction of ours
            claims = await asyncio.to_thread(keys.check, token)
            video, _ = await _video_of(form, max_bytes, args.allow_private_urls)
            await asyncio.to_thread(tokens.same_video, claims, video)
        except tokens.TokenError as e:
            return _error(str(e), e.status)
        except tokens.KeyUnavailable as e:
            return _error(f"feedback cannot be checked right now: {e}", 503)
        except (FetchError, ValueError) as e:
            return _error(f"send the video that was predicted: {e}", 400)
        record = _record(claims["answer"], verdict, gloss)
        try:  # the store writes to S3 or disk: off the event loop
            return await asyncio.to_thread(store.submit, video, claims["name"], record)
        except ValueError as e:  # SpoolFull: neither the store nor the local spool took it
            return _error(f"feedback cannot be kept right now: {e}", 503)

    live = Live(client)

    @web.websocket("/api/live/ws")
    async def live_ws(ws: WebSocket):
        await live.serve(ws)

    return web


def _quietly(get) -> None:
    with contextlib.suppress(tokens.KeyUnavailable):  # logged; retried on the next prediction
        get()


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


def _said(answer: dict) -> dict:
    """What a feedback record needs of an answer (its token carries this, not the whole
    result with its frame-by-frame probabilities)."""
    result = answer["result"]
    if answer["mode"] == "word":
        predicted, scores = result["glosses"][:1], result["scores"][:1]
    else:
        predicted, scores = result["words"], result["confidences"]
    return {
        "mode": answer["mode"],
        "predicted": predicted,
        "scores": scores,
        "model": answer["model"],
    }


def _record(said: dict, verdict: str, gloss: str | None) -> dict:
    predicted = said["predicted"]
    return {
        "predicted": predicted,
        "scores": said["scores"],
        "mode": said["mode"],
        "model": said["model"],
        "verdict": verdict,
        "gloss": gloss if verdict == "wrong" else " ".join(predicted),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def run(args: argparse.Namespace) -> None:
    """Serve the app with build_parser's arguments until stopped."""
    import uvicorn

    uvicorn.run(
        create_app(args),
        host=args.host,
        port=args.port,
        log_level="info",
        ws_max_size=MAX_MESSAGE,  # a larger live message is refused with close code 1009
        # Live frames go as sent, as the HTTP bodies they replace did: deflating ~0.7 MB of
        # raw RGB twice a second costs both ends CPU that the model's reads need.
        ws_per_message_deflate=False,
    )


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
