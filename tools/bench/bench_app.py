"""`make bench-app`: the web app's cost over the model it fronts, side by side in one run.

1. Upload-to-result: POST /api/predict (multipart, through the app) vs the same video sent
   straight to the model server's REST endpoint (binary BYTES); medians of alternating runs and
   their ratio.
2. Live latency: one signer's synthetic test videos strung together (the signs' frame ranges
   known) are fed to the live WebSocket as the page feeds it (160 x 120, 25 fps, real time, one
   message in flight, the frames that come meanwhile in the next); for each word that becomes
   final, the time from the camera delivering the last frame of its sign to receiving the word.
   p50 / p95 over the signs the model names; words said twice are counted.
3. The same on the page, in headless Chromium, its fake camera playing the stream.
The model is the shipped sentence fixture (tests/fixtures/sentence_model, the demo's size) with
the model.onnx `sign2text package` exports of it (tests/fixtures/sentence_model_onnx), so the
server runs what it runs on a CPU by default (OpenVINO); both servers are separate processes on
127.0.0.1.

`--baseline REF` runs the app of git revision REF (its app/ alone, from `git archive`) beside
this one, on the same model server, and measures live mode on both, alternating (`--rounds`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import httpx
import numpy as np
from websockets.sync.client import connect

from components.data.dataset import load_samples
from components.data.synth import synthesize
from components.release.local_deploy import free_port, stop_process
from components.training.context import load_videos, signer_groups, string_together
from model.predict import Classifier

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MODEL = FIXTURES / "sentence_model"
RUNS = 10
SIGNS = 20
FPS, W, H = 25.0, 160, 120
REST_S = 5.0  # of rest after the last sign


def _model_dir(tmp: Path) -> Path:
    """The fixture as `sign2text package` ships it: model.pt, labels, model.onnx and its record."""
    out = tmp / "model"
    shutil.copytree(MODEL, out)
    for name in ("model.onnx", "config.json"):
        shutil.copy(FIXTURES / "sentence_model_onnx" / name, out / name)
    return out


def _start(cmd: list[str], url: str, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(cwd)}  # the app of that tree, whatever the caller's
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if opener.open(url, timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    stop_process(proc)
    raise SystemExit(f"{cmd[2]} did not start:\n{log.read_text()[-2000:]}")


def _direct(client: httpx.Client, model_url: str, video: bytes) -> None:
    spec = {
        "name": "video",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(video) + 4},
    }
    header = json.dumps({"inputs": [spec], "parameters": {"mode": "word", "top_k": 5}}).encode()
    body = header + len(video).to_bytes(4, "little") + video
    r = client.post(
        f"{model_url}/v2/models/sign2text/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    r.raise_for_status()


def _via_app(client: httpx.Client, app_url: str, video: bytes) -> None:
    r = client.post(
        f"{app_url}/api/predict", files={"file": ("sign.mp4", video)}, data={"mode": "word"}
    )
    r.raise_for_status()


def upload_ratio(model_url: str, app_url: str, video: bytes) -> dict:
    times: dict[str, list[float]] = {"direct": [], "app": []}
    with httpx.Client(timeout=60, trust_env=False) as client:
        _direct(client, model_url, video), _via_app(client, app_url, video)  # warm both
        for _ in range(RUNS):
            for name, send in (("direct", _direct), ("app", _via_app)):
                t = time.perf_counter()
                send(client, model_url if name == "direct" else app_url, video)
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"direct_ms": med["direct"], "app_ms": med["app"], "ratio": med["app"] / med["direct"]}


def _stream(tmp: Path) -> tuple[np.ndarray, list[tuple[int, int, int]], list[str]]:
    """One signer's test videos strung together, then REST_S of rest: (BGR frames,
    [(start, end, label)], labels)."""
    data = tmp / "data"
    synthesize(
        data, classes=10, per_class=12, signers=24, seed=7, progress=False, only_splits=("test",)
    )
    labels = Classifier(MODEL).labels
    samples = [s for s in load_samples(data) if s.split == "test"]
    videos = load_videos(data, samples, labels)
    # Signers one after another (the page sends 160 x 120 whatever the camera's size).
    order = [i for g in signer_groups(videos) for i in g][:SIGNS]
    resized = [
        dataclasses.replace(v, frames=np.stack([cv2.resize(f, (W, H)) for f in v.frames]))
        for v in videos
    ]
    frames, spans = string_together(resized, order)
    # Then the signer rests: the last signs' words can come, and Chromium's camera, which loops
    # its file, starts the stream again only after every word of the first pass. The rest is
    # the last video's own rest after its sign, back and forth: a frozen frame is no rest to the
    # model (it reads one as the sign it ends).
    last = resized[order[-1]]
    tail = last.frames[last.end + 1 :]
    rest = np.concatenate([tail, tail[::-1]]) if len(tail) else last.frames[:1]
    rest = np.resize(rest, (int(REST_S * FPS), *rest.shape[1:]))  # repeated to fill REST_S
    return np.concatenate([frames, rest]), spans, labels


def live_latency(app_url: str, stream, chunk: int = 1) -> dict:
    """The page's protocol from a script: a frame every 1 / FPS s; whenever no message is in
    flight and at least `chunk` frames wait, they go (50 at most)."""
    frames, spans, labels = stream
    rgb = np.ascontiguousarray(frames[..., ::-1])  # RGB, as the page sends
    heard: list[tuple[str, int, int, float]] = []  # (word, start, end, time received)
    url = app_url.replace("http", "ws", 1) + "/api/live/ws"
    with connect(url, proxy=None, max_size=None) as ws:
        ws.send(json.dumps({"width": W, "height": H}))
        start, sent, busy = time.perf_counter(), 0, False
        while sent < len(rgb) or busy:
            now = time.perf_counter()
            come = min(len(rgb), int((now - start) * FPS))  # frame k comes at (k + 1) / FPS
            if not busy and come - sent >= min(chunk, len(rgb) - sent):
                ws.send(rgb[sent : min(come, sent + 50)].tobytes())
                sent, busy = min(come, sent + 50), True
                continue
            wait = max(0.0, start + (come + 1) / FPS - time.perf_counter())
            if not busy:
                time.sleep(wait)
                continue
            try:
                answer = json.loads(ws.recv(timeout=wait if come < len(rgb) else 60))
            except TimeoutError:
                continue
            got, busy = time.perf_counter(), False
            heard += [(w["word"], w["start"], w["end"], got) for w in answer["final"]]
    latencies, named = [], 0
    for s, e, label in spans:
        match = [h for h in heard if h[0] == labels[label] and h[1] <= e and h[2] >= s]
        if match:
            named += 1
            latencies.append(match[0][3] - (start + (e + 1) / FPS))
    ms = [s * 1000 for s in latencies]
    said = [(h[0], h[1], h[2]) for h in heard]
    repeats = _said_twice(said, spans, labels, offsets=[0])
    return _latencies(len(spans), named, ms, words_heard=len(heard), repeats=repeats, said=said)


def _said_twice(said, spans, labels, offsets) -> int:
    """Words said again for a sign whose word was said: final words [(word, start, end)] in the
    session's frames, put on the stream's signs at the offset (of those given) that puts most
    words on a sign of their gloss."""

    def on_signs(offset: int) -> list[int]:
        return [
            sum(w == labels[label] and a + offset <= e and b + offset >= s for w, a, b in said)
            for s, e, label in spans
        ]

    counts = max((on_signs(o) for o in offsets), key=lambda c: sum(map(bool, c)), default=[])
    return sum(max(0, c - 1) for c in counts)


# Recorded in the page before live mode starts: the final words (with their frame spans in the
# session) of every answer on the live WebSocket.
PAGE_SOCKET = """
window.__final = [];
const Plain = window.WebSocket;
window.WebSocket = class extends Plain {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (e) => {
      const final = JSON.parse(e.data).final || [];
      for (const w of final) window.__final.push([w.word, w.start, w.end]);
    });
  }
};
"""

# Recorded in the page: when the camera presents each frame (requestVideoFrameCallback's
# presentedFrames counts them from the stream's start), and when each word appears.
PAGE_PROBE = """
const v = document.getElementById('preview');
window.__shown = []; window.__words = [];
const onFrame = (now, meta) => { window.__shown.push([meta.presentedFrames, performance.now()]);
                                 v.requestVideoFrameCallback(onFrame); };
v.requestVideoFrameCallback(onFrame);
new MutationObserver(() => {
  const text = document.querySelector('[data-testid=prediction]').textContent.trim();
  window.__words.push([text, performance.now()]);
}).observe(document.querySelector('[data-testid=prediction]'), {childList: true, subtree: true,
                                                                characterData: true});
"""


def _latencies(signs: int, named: int, ms: list[float], **counts) -> dict:
    """How many signs were named, and the p50 / p95 of their latencies in ms."""
    q = np.percentile(ms, [50, 95]) if ms else [float("nan")] * 2
    return {"signs": signs, "named": named, **counts, "p50_ms": float(q[0]), "p95_ms": float(q[1])}


def _y4m(frames: np.ndarray, path: Path) -> Path:
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{int(FPS)}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def page_live_latency(app_url: str, stream, camera: Path) -> dict:
    """Live mode in headless Chromium, its fake camera playing the 20-sign stream: from the
    moment the camera presents a sign's last frame to the moment its word is on the page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    frames, spans, labels = stream
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(app_url)
        time.sleep(1)
        driver.execute_script(PAGE_SOCKET)
        driver.find_element("id", "live").click()
        time.sleep(0.5)
        driver.execute_script(PAGE_PROBE)
        time.sleep(len(frames) / FPS + 0.5)  # the whole stream once, its rest included
        shown = driver.execute_script("return window.__shown")
        changes = driver.execute_script("return window.__words")
        final = [tuple(w) for w in driver.execute_script("return window.__final")]
    finally:
        driver.quit()
    # presentedFrames counts from the camera's start, which the probe may miss the first of:
    # the camera loops the file, so frame k of the stream is presented count k + 1 (mod len).
    at = {}
    for count, t in shown:
        k = int(count) - 1
        if 0 <= k < len(frames):
            at.setdefault(k, t)
    appeared = []  # (word, time it first appeared), in page order
    for text, t in changes:
        words = text.split()
        while len(appeared) < len(words):
            appeared.append((words[len(appeared)], t))
    latencies, named, j = [], 0, 0
    for _, e, label in spans:
        for i in range(j, len(appeared)):
            if appeared[i][0] == labels[label]:
                if e in at:
                    latencies.append(appeared[i][1] - at[e])
                named, j = named + 1, i + 1
                break
    # The session's frame 0 is a camera frame some way into the stream: repeats are counted on
    # the signs at the offset that puts most words on their signs. Two like words in a row may
    # also be a sign misread as its neighbour (sentence mode's reading too): counted apart.
    repeats = _said_twice(final, spans, labels, offsets=range(-len(frames), len(frames)))
    alike = sum(a[0] == b[0] for a, b in zip(appeared, appeared[1:], strict=False))
    said = [a[0] for a in appeared]
    counts = {"timed": len(latencies), "repeats": repeats, "alike": alike, "said": said}
    return _latencies(len(spans), named, latencies, **counts)


def _baseline(ref: str, tmp: Path) -> Path:
    """Revision `ref`'s app/ (nothing else: the app imports nothing of the rest) in tmp."""
    out = tmp / "baseline"
    out.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "app"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _chunk(root: Path) -> int:
    """Frames per message that app's page sends at least (its CHUNK; 1: every frame)."""
    found = re.search(r"\bCHUNK = (\d+)", (root / "app/static/app.js").read_text())
    return int(found[1]) if found else 1


def _misses(truth: list[str], result: dict) -> None:
    """The words signed and those said, when a sign was missed or a word repeated."""
    if result["named"] < result["signs"] or result["repeats"]:
        print(f"  signed: {' '.join(truth)}\n  said:   {result['said']}")


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{cpu}, {os.cpu_count()} cores"


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.bench_app", description=__doc__)
    ap.add_argument("--baseline", help="a git revision whose app runs beside this one (live)")
    ap.add_argument("--rounds", type=int, default=1, help="live runs of each app, alternating")
    args = ap.parse_args(argv)
    print(f"{_machine()}; {_load()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mport = free_port()
        model_url = f"http://127.0.0.1:{mport}"
        model = _start(
            [
                sys.executable,
                "-m",
                "model.serving.server",
                "--model-dir",
                str(_model_dir(tmp)),
                "--http-port",
                str(mport),
                "--grpc-port",
                str(free_port()),
                "--host",
                "127.0.0.1",
            ],
            f"{model_url}/v2/health/ready",
            tmp / "model.log",
        )
        runtime = re.search(r"sign2text: (\S+ runtime at \S+)", (tmp / "model.log").read_text())
        print(f"model server: {runtime[1] if runtime else 'runtime not logged'}")
        roots = {"this": ROOT} | (
            {args.baseline: _baseline(args.baseline, tmp)} if args.baseline else {}
        )
        apps, procs = {}, [model]
        try:
            for name, root in roots.items():
                port = free_port()
                procs.append(
                    _start(
                        [
                            sys.executable,
                            "-m",
                            "app.main",
                            "--model-url",
                            model_url,
                            "--port",
                            str(port),
                        ],
                        f"http://127.0.0.1:{port}/healthz",
                        tmp / f"app-{len(apps)}.log",
                        cwd=root,
                    )
                )
                apps[name] = (f"http://127.0.0.1:{port}", _chunk(root))
            from components.data.synth import moving_square, write_video

            app_url = apps["this"][0]
            video = write_video(tmp / "sign.mp4", moving_square(40)).read_bytes()
            up = upload_ratio(model_url, app_url, video)
            print(
                f"upload-to-result (median of {RUNS}): via the app {up['app_ms']:.1f} ms, "
                f"straight to the model {up['direct_ms']:.1f} ms: {up['ratio']:.2f}x"
            )
            stream = _stream(tmp)
            truth = [stream[2][label] for _, _, label in stream[1]]
            for _ in range(args.rounds):
                for name, (url, chunk) in apps.items():
                    live = live_latency(url, stream, chunk)
                    print(
                        f"live, app {name} (API, {chunk} frame(s) a message at least): "
                        f"{live['named']} of {live['signs']} signs named, {live['repeats']} "
                        f"repeated ({live['words_heard']} words final); camera delivers the "
                        f"sign's last frame -> word: p50 {live['p50_ms']:.0f} ms, "
                        f"p95 {live['p95_ms']:.0f} ms; {_load()}"
                    )
                    _misses(truth, live)
            if not (shutil.which("chromium") and shutil.which("chromedriver")):
                print("live on the page: skipped (no chromium + chromedriver on PATH)")
                return
            camera = _y4m(stream[0], tmp / "stream.y4m")
            for _ in range(args.rounds):
                for name, (url, _) in apps.items():
                    page = page_live_latency(url, stream, camera)
                    print(
                        f"live on the page, app {name} (headless Chromium, fake camera): "
                        f"{page['named']} of {page['signs']} signs named, {page['timed']} "
                        f"timed, {page['repeats']} repeated ({page['alike']} like words in a "
                        f"row); camera presents the sign's last "
                        f"frame -> word on the page: p50 {page['p50_ms']:.0f} ms, "
                        f"p95 {page['p95_ms']:.0f} ms; {_load()}"
                    )
                    _misses(truth, page)
        finally:
            for proc in reversed(procs):
                stop_process(proc)


if __name__ == "__main__":
    main()
