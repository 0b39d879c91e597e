"""`sign2text deploy` as the pipeline's deploy step runs it: inside the components image, run as
the cluster would (read-only root filesystem, uid 10001), against a FAKE Kubernetes API server on
127.0.0.1 (no cluster can run here) and the real local S3 server. No InferenceService exists yet,
so deploy takes its create path: it publishes the package, creates both services from the
templates the image ships (the source tree's manifests/ is not in the image), waits for them,
and smoke-checks each over its own protocol against a real model server, the ONNX serving image,
which the fake's status names as the services' URL. Heavy: the components image is 7 GB (`make
test-images-full`)."""

from __future__ import annotations

import json
import shutil
from http.server import ThreadingHTTPServer

import pytest

from components.infra.objstore import is_published
from tests import containers
from tests.conftest import moving_square, write_video
from tests.kube_apiserver import BASE, Handler, apiserver_fixture  # noqa: F401
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.heavy
FIXTURE = containers.ROOT / "tests" / "fixtures" / "sentence_model"


class ReadyOnCreate(Handler):
    """The fake API server, with Knative's part played too: a created InferenceService is
    Ready at once, its first revision rolled out at 100% on the URL the test serves."""

    def _handle(self) -> None:
        if self.command == "POST" and self.path == BASE:
            body = self._body()
            name = body["metadata"]["name"]
            url = self.server.urls[name]
            rev = f"{name}-predictor-00001"
            body["metadata"]["generation"] = 1
            body["status"] = {
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "True"}],
                "components": {
                    "predictor": {
                        "latestCreatedRevision": rev,
                        "latestReadyRevision": rev,
                        "latestRolledoutRevision": rev,
                        "traffic": [
                            {"tag": "latest", "percent": 100, "revisionName": rev, "url": url}
                        ],
                    }
                },
            }
            self.server.seen.append(("POST", self.path, None, body))
            self.server.objects[name] = body
            return self._send(201, body)
        return super()._handle()

    do_GET = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815


def test_deploy_creates_and_smoke_checks_from_the_components_image(
    apiserver, s3_server, s3_env, onnx_sentence_model, tmp_path
):
    srv, kubeconfig = apiserver
    srv.RequestHandlerClass = ReadyOnCreate
    assert isinstance(srv, ThreadingHTTPServer)
    components = containers.image("components")
    serving = containers.image("serving-onnx")
    bucket = s3_server.make_bucket()
    inputs = tmp_path / "inputs"  # what the deploy step's pod would find on its volumes
    shutil.copytree(onnx_sentence_model, inputs / "package")
    (inputs / "package" / "lineage.json").write_text(
        json.dumps({"data_md5": "d1", "git_commit": "c1"})
    )
    (inputs / "smoke").mkdir()
    write_video(inputs / "smoke" / "sign.mp4", moving_square(40, 120, 160))
    shutil.copy(kubeconfig, inputs / "config")
    inputs = containers.readable_copy(inputs, tmp_path / "mounted")
    with containers.serve_image(serving, onnx_sentence_model, tmp_path / "serving.log") as served:
        srv.urls = {
            "sign2text": f"http://127.0.0.1:{served.http}",
            "sign2text-grpc": f"http://127.0.0.1:{served.grpc}",
        }
        uri = f"s3://{bucket}/models/sign2text/v1/"
        env = [f"--env={k}={v}" for k, v in s3_server.env().items()]
        mounts = [f"--volume={inputs}:/work:ro"]
        cmd = ["sign2text", "deploy", "--model-dir", "/work/package", "--model-uri", uri]
        cmd += ["--namespace", "ns1", "--kubeconfig", "/work/config", "--soak-s", "0"]
        cmd += ["--timeout-s", "60", "--smoke-video", "/work/smoke/sign.mp4"]
        log = tmp_path / "deploy.log"
        with containers.run(
            components, cmd, log, memory="4g", options=[*env, *mounts, "--env=HOME=/tmp"]
        ) as deploying:
            code = deploying.client.wait(timeout=600)
    out = log.read_text()
    assert code == 0, out[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "created" and result["model_uri"] == uri, result
    created = [body for verb, path, _, body in srv.seen if verb == "POST" and path == BASE]
    assert sorted(b["metadata"]["name"] for b in created) == ["sign2text", "sign2text-grpc"]
    for body in created:  # from the templates the image ships, pointed at the new model
        assert body["spec"]["predictor"]["model"]["storageUri"] == uri
        assert body["metadata"]["annotations"]["sign2text.io/git-commit"] == "c1"
    assert is_published(uri)
