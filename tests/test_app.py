"""The web app (app/) in a real headless Chromium, against the real app server and the real
model server (both `python -m ...` in their own processes) with the fixture model. Chromium's
fake camera plays a generated clip. Controls are found by their accessible names (the labels
the issue fixes), the result by data-testid="prediction". Screenshots of each state are kept
in the test's folder."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.release.local_deploy import free_port, stop_process
from model.predict import Classifier
from tests.browser import LOCAL_ARGS, offline_chromium
from tests.conftest import moving_square, write_video
from tests.model_server import ENV, OPENER, ROOT, serve
from tests.s3 import Relay, s3_server_fixture  # noqa: F401

BUCKET, PREFIX = "app-feedback", "feedback"

FIXTURE = ROOT / "tests" / "fixtures" / "sentence_model"


@contextlib.contextmanager
def app_server(model_url: str, log: Path, *extra: str, env: dict | None = None):
    port = free_port()
    cmd = [sys.executable, "-m", "app.main", "--model-url", model_url, "--port", str(port), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        yield wait_healthy(url, proc, log, 30)
    finally:
        stop_process(proc)


def wait_healthy(url: str, proc, log: Path, timeout_s: float) -> str:
    """`url` once the app there answers /healthz; fails with its log if `proc` ends first."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            if OPENER.open(url + "/healthz", timeout=2).status == 200:
                return url
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _y4m(frames: np.ndarray, path: Path, fps: int = 25) -> Path:
    """BGR frames -> a Y4M file, the format Chromium's fake camera plays (in a loop)."""
    h, w = frames.shape[1:3]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("app-videos")
    write_video(d / "sign.mp4", moving_square(40))
    write_video(d / "signs.mp4", moving_square(90, seed=3))
    data = (d / "sign.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(d / "still.png"), np.full((64, 64, 3), 200, np.uint8))
    _y4m(moving_square(50, 120, 160, seed=5), d / "camera.y4m")
    return d


@pytest.fixture(scope="module")
def relay(s3_server):
    s3_server.make_bucket(BUCKET)
    r = Relay(s3_server.endpoint)  # the app's S3 endpoint: closed and reopened by a test
    yield r
    r.down()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, videos, s3_server, relay):
    """Model server + app (feedback to S3 through the relay; a static file server for links) +
    Chromium with a fake camera."""
    logs = tmp_path_factory.mktemp("app-logs")
    env = ENV | s3_server.env() | {"AWS_ENDPOINT_URL": relay.endpoint, "AWS_MAX_ATTEMPTS": "1"}
    feedback = ("--feedback", f"s3://{BUCKET}/{PREFIX}", "--spool", str(logs / "spool"))
    with serve(FIXTURE, logs / "model.log") as model, contextlib.ExitStack() as stack:
        model_url = f"http://127.0.0.1:{model.http}"
        app = stack.enter_context(
            app_server(model_url, logs / "app.log", "--allow-private-urls", *feedback, env=env)
        )
        files = stack.enter_context(_file_server(videos))
        camera = (
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={videos / 'camera.y4m'}",
        )
        driver = stack.enter_context(offline_chromium(LOCAL_ARGS + camera))
        driver.set_window_size(900, 1300)  # screenshots show the whole page
        driver.get(app)
        yield driver, app, files, logs


@contextlib.contextmanager
def _file_server(root: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def control(driver, name: str):
    """The control whose accessible name is `name`: a <label for=...> or a button's text."""
    from selenium.webdriver.common.by import By

    labels = driver.find_elements(By.XPATH, f"//label[normalize-space()='{name}']")
    if labels:
        return driver.find_element(By.ID, labels[0].get_attribute("for"))
    return driver.find_element(By.XPATH, f"//button[normalize-space()='{name}']")


def _answer(driver, shot: Path, timeout: float = 60) -> tuple[str, str]:
    """Waits for the page to settle; (prediction text, status text); saves a screenshot."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = driver.find_element(By.ID, "status").text
        if status not in ("Working…",) and not status.startswith("Recording"):
            break
        time.sleep(0.2)
    time.sleep(0.2)
    driver.save_screenshot(str(shot))
    prediction = driver.find_element(By.CSS_SELECTOR, "[data-testid=prediction]").text
    return prediction, driver.find_element(By.ID, "status").text


def _mode(driver, mode: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(control(driver, "Mode")).select_by_value(mode)


def _upload(driver, path: Path | None, url: str = "") -> None:
    control(driver, "Video file").clear() if path is None else None
    driver.execute_script("document.getElementById('file').value = ''")
    if path is not None:
        control(driver, "Video file").send_keys(str(path))
    field = control(driver, "Video URL")
    field.clear()
    if url:
        field.send_keys(url)
    control(driver, "Predict").click()


def test_upload_shows_what_predict_local_says(stack, videos, tmp_path):
    driver, *_ = stack
    clf = Classifier(FIXTURE)
    _mode(driver, "word")
    _upload(driver, videos / "sign.mp4")
    words, status = _answer(driver, tmp_path / "word-upload.png")
    assert words == clf.word(videos / "sign.mp4", 5).glosses[0], status
    _mode(driver, "sentence")
    _upload(driver, videos / "signs.mp4")
    words, status = _answer(driver, tmp_path / "sentence-upload.png")
    assert words == " ".join(w.gloss for w in clf.sentence(videos / "signs.mp4")), status
    # the timeline: each word's probability and no sign's, frame by frame
    series = driver.execute_script("return document.getElementById('probs').dataset.series")
    assert json.loads(series) == [*words.split(), "no sign"]


def test_a_link_shows_the_same(stack, videos, tmp_path):
    driver, _, files, _ = stack
    clf = Classifier(FIXTURE)
    _mode(driver, "word")
    _upload(driver, None, f"{files}/sign.mp4")
    words, status = _answer(driver, tmp_path / "word-link.png")
    assert words == clf.word(videos / "sign.mp4", 5).glosses[0], status


@pytest.mark.parametrize(("name", "phrase"), [("still.png", "still image"), ("cut.mp4", "video")])
def test_a_bad_file_says_why_and_the_page_keeps_working(stack, videos, tmp_path, name, phrase):
    driver, *_ = stack
    _mode(driver, "word")
    _upload(driver, videos / name)
    words, status = _answer(driver, tmp_path / f"bad-{name}.png")
    assert words == "" and phrase in status, status
    _upload(driver, videos / "sign.mp4")
    words, status = _answer(driver, tmp_path / "after-bad.png")
    assert words and not status, status


def test_a_recorded_webcam_clip_shows_words(stack, tmp_path):
    driver, *_ = stack
    _mode(driver, "word")
    control(driver, "Record").click()
    deadline = time.monotonic() + 20  # the camera opens (the fake one plays the generated clip)
    while control(driver, "Record").get_attribute("aria-pressed") != "true":
        assert time.monotonic() < deadline, driver.find_element("id", "status").text
        time.sleep(0.1)
    time.sleep(2.5)
    driver.save_screenshot(str(tmp_path / "recording.png"))
    control(driver, "Record").click()  # a toggle: pressed again, it stops and sends the clip
    words, status = _answer(driver, tmp_path / "recorded.png")
    assert words, status


def _feedback(driver, verdict: str, gloss: str, shot: Path) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.execute_script("document.getElementById('feedback-status').textContent = ''")
    Select(control(driver, "Correct gloss")).select_by_value(gloss)
    control(driver, verdict).click()
    deadline = time.monotonic() + 30
    while not (text := driver.find_element(By.ID, "feedback-status").text):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    driver.save_screenshot(str(shot))
    return text


def _records(s3_server) -> dict[str, dict]:
    client = s3_server.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/records/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    return {
        k.rsplit("/", 1)[1].removesuffix(".json"): json.loads(
            client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
        )
        for k in keys
    }


def wrong_with_a_gloss_lands(driver, s3_server, predicted: str, video: Path, shot: Path):
    """Press "Wrong" under the shown prediction with another gloss: one feedback record lands
    in the store, saying so, with the uploaded video's bytes. -> (its id, record, gloss)."""
    gloss = "go" if predicted != "go" else "up"
    before = set(_records(s3_server))
    assert "stored" in _feedback(driver, "Wrong", gloss, shot)
    (fid,) = set(_records(s3_server)) - before
    record = _records(s3_server)[fid]
    assert (record["verdict"], record["gloss"], record["predicted"]) == (
        "wrong",
        gloss,
        [predicted],
    )
    stored = s3_server.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/{record['video']}")
    assert stored["Body"].read() == video.read_bytes()
    return fid, record, gloss


def test_wrong_plus_a_gloss_becomes_a_sample_that_validates(stack, videos, s3_server, tmp_path):
    from components.data.dataset import load_samples
    from components.data.feedback_ingest import ingest_feedback
    from components.validation.validate import validate
    from model.files import hash_file

    driver, *_ = stack
    _mode(driver, "word")
    _upload(driver, videos / "sign.mp4")
    predicted, _ = _answer(driver, tmp_path / "before-feedback.png")
    fid, record, gloss = wrong_with_a_gloss_lands(
        driver, s3_server, predicted, videos / "sign.mp4", tmp_path / "feedback-stored.png"
    )
    assert record["model"]["version"] == hash_file(FIXTURE / "model.pt")[:12]

    with _environment(s3_server.env()):
        ingest_feedback(f"s3://{BUCKET}/{PREFIX}", tmp_path / "fb", progress=False)
    sample = {s.video_id: s for s in load_samples(tmp_path / "fb")}[f"feedback-{fid}"]
    assert sample.gloss == gloss
    validate(tmp_path / "fb", tmp_path / "v", progress=False, cache_dir=tmp_path / "cache")
    valid = json.loads((tmp_path / "v" / "valid.json").read_text())
    assert f"feedback-{fid}" in {s["video_id"] for s in valid}


def test_feedback_while_the_store_is_down_arrives_when_it_is_back(
    stack, videos, s3_server, relay, tmp_path
):
    driver, *_ = stack
    _mode(driver, "word")
    _upload(driver, videos / "sign.mp4")
    _answer(driver, tmp_path / "before.png")
    before = set(_records(s3_server))
    relay.down()
    try:
        text = _feedback(driver, "Correct", "up", tmp_path / "feedback-queued.png")
        assert "kept here" in text, text
        assert set(_records(s3_server)) == before
    finally:
        relay.up()
    deadline = time.monotonic() + 60  # the app retries queued feedback every 10 s
    while set(_records(s3_server)) == before:
        assert time.monotonic() < deadline, "the queued feedback never arrived"
        time.sleep(0.5)
    (fid,) = set(_records(s3_server)) - before
    assert _records(s3_server)[fid]["verdict"] == "correct"


@contextlib.contextmanager
def _environment(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_live_mode_shows_words_as_the_camera_plays(stack, tmp_path):
    from selenium.webdriver.common.by import By

    driver, *_ = stack
    control(driver, "Live").click()
    deadline = time.monotonic() + 60
    words = ""
    while not words:
        assert time.monotonic() < deadline, driver.find_element(By.ID, "status").text
        time.sleep(0.5)
        words = driver.find_element(By.CSS_SELECTOR, "[data-testid=prediction]").text
    driver.save_screenshot(str(tmp_path / "live.png"))
    assert control(driver, "Live").get_attribute("aria-pressed") == "true"
    control(driver, "Live").click()
    assert control(driver, "Live").get_attribute("aria-pressed") == "false"
    assert "Live:" not in driver.find_element(By.ID, "status").text


def test_links_are_fetched_within_limits(videos):
    """The app's fetch of a link: http(s) only, loopback/private refused unless allowed, a size
    cap while streaming, a timeout."""
    import asyncio

    from app.urlfetch import FetchError, fetch

    def get(url, **kw):
        return asyncio.run(fetch(url, **{"max_bytes": 1 << 20, **kw}))

    with _file_server(videos) as files:
        for url in (
            "ftp://example.org/a.mp4",
            "file:///etc/passwd",
            f"{files}/sign.mp4",
            "http://169.254.169.254/latest/meta-data/",
        ):
            with pytest.raises(FetchError, match="only http|private"):
                get(url)
        data, name = get(f"{files}/sign.mp4", allow_private=True)
        assert data == (videos / "sign.mp4").read_bytes() and name == "sign.mp4"
        with pytest.raises(FetchError, match="larger than"):
            get(f"{files}/camera.y4m", allow_private=True)
        with pytest.raises(FetchError, match="HTTP 404"):
            get(f"{files}/nothing.mp4", allow_private=True)

    silent = socket.socket()  # accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    with silent, pytest.raises(FetchError, match="longer than"):
        get(f"http://127.0.0.1:{silent.getsockname()[1]}/v.mp4", allow_private=True, timeout_s=1)
