"""The app image in front of the ONNX serving image, both run as the cluster runs them
(tests/containers.py: read-only root filesystem, uid 10001, the manifests' memory limits, the
spool a tmpfs as the pod's emptyDir), driven in a real headless Chromium: an upload shows the word
`predict-local` gives, and "Wrong" with a gloss lands in the real S3 server with the video."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

from components.release.local_deploy import free_port
from model.predict import Classifier
from tests import containers
from tests.browser import LOCAL_ARGS, offline_chromium
from tests.conftest import moving_square, write_video
from tests.s3 import s3_server_fixture  # noqa: F401
from tests.test_app import (
    BUCKET,
    PREFIX,
    _answer,
    _mode,
    _upload,
    wait_healthy,
    wrong_with_a_gloss_lands,
)

APP = containers.ROOT / "manifests" / "base" / "app.yaml"


def app_memory() -> str:
    """The app container's memory limit in the manifests, as docker's --memory takes it."""
    deployment = next(d for d in yaml.safe_load_all(APP.read_text()) if d["kind"] == "Deployment")
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    return app["resources"]["limits"]["memory"].removesuffix("i").lower()


@contextlib.contextmanager
def app_container(tag: str, model_url: str, s3_env: dict, log: Path):
    """The app image's own command with the manifests' arguments, on a free port."""
    port = free_port()
    args = ["python", "-m", "app.main", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--model-url", model_url, "--feedback", f"s3://{BUCKET}/{PREFIX}"]
    args += ["--spool", "/var/spool/sign2text", "--allow-private-urls"]
    options = [f"--env={k}={v}" for k, v in s3_env.items()]
    options += ["--env=HOME=/tmp", "--tmpfs=/var/spool/sign2text:rw,size=64m,uid=10001"]
    with containers.run(tag, args, log, memory=app_memory(), options=options) as app:
        yield wait_healthy(f"http://127.0.0.1:{port}", app, log, 60)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, s3_server, onnx_sentence_model):
    """The two images as they ship, and Chromium on the app's page."""
    logs = tmp_path_factory.mktemp("shipped")
    s3_server.make_bucket(BUCKET)
    serving, app = containers.image("serving-onnx"), containers.image("app")
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(
            containers.serve_image(serving, onnx_sentence_model, logs / "model.log")
        )
        url = stack.enter_context(
            app_container(app, f"http://127.0.0.1:{model.http}", s3_server.env(), logs / "app.log")
        )
        driver = stack.enter_context(offline_chromium(LOCAL_ARGS))
        driver.set_window_size(900, 1300)
        driver.get(url)
        yield driver, logs


def test_upload_then_wrong_with_a_gloss_lands_in_s3(
    shipped, s3_server, onnx_sentence_model, tmp_path
):
    driver, logs = shipped
    video = write_video(tmp_path / "sign.mp4", moving_square(40))
    _mode(driver, "word")
    _upload(driver, video)
    predicted, status = _answer(driver, tmp_path / "upload.png")
    assert predicted == Classifier(onnx_sentence_model).word(video, 5).glosses[0], status
    wrong_with_a_gloss_lands(driver, s3_server, predicted, video, tmp_path / "wrong.png")
    assert "Traceback" not in (logs / "app.log").read_text()
