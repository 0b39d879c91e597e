"""The Triton path: the repository `sign2text model triton-repo` writes, the triton runtime
(model/runtimes/triton_runtime.py) against a v2 server, and manifests/overlays/triton.

Triton itself cannot run here; tests/triton_standin.py stands in for it: a real KServe
ModelServer serving the written repository with ONNX Runtime, enforcing its max_batch_size.
One ONNX export of the demo model (~15 s) serves the whole module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from components.data.synth_render import class_spec, render_clip, signer_look
from components.release.local_deploy import free_port, stop_process
from model.predict import Classifier
from model.runtimes.triton_runtime import PredictorError, TritonRuntime
from model.runtimes.triton_runtime import load as load_triton
from sign2text.cli import main
from tests.crd_schema import validate as validate_kserve
from tests.kustomize import OVERLAYS, manifests_copy, one, render
from tests.model_server import ENV, ROOT, serve

FIXTURE = ROOT / "tests" / "fixtures" / "sentence_model"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
MAX_BATCH = 3  # below sentence mode's 8 windows per batch: the runtime must split them


@pytest.fixture(scope="module")
def exported(onnx_sentence_model):
    return onnx_sentence_model  # conftest's: the demo-trained fixture model, exported


@pytest.fixture(scope="module")
def repository(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo")
    argv = [
        "model",
        "triton-repo",
        str(exported),
        str(out),
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-queue-delay-us",
        "500",
    ]
    assert main(argv) == 0
    return out


def _get(url: str) -> int:
    try:
        with OPENER.open(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def standin(repository, tmp_path_factory):
    """tests/triton_standin.py on the repository; yields its host:port (--predictor_host)."""
    port = free_port()
    log = tmp_path_factory.mktemp("standin") / "standin.log"
    cmd = [sys.executable, "-m", "tests.triton_standin", str(repository), "--http_port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{port}/v2/models/sign2text/ready") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the stand-in did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """httpx honours *_PROXY: the runtime's requests to 127.0.0.1 must go nowhere else."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _signs(*classes: int) -> np.ndarray:
    """BGR frames of the bundled dataset's signer signing `classes` in a row."""
    frames = []
    for k in classes:
        clip, _ = render_clip(class_spec(k), signer_look(0, 0), (160, 120), 40, 10, 10)
        frames += clip
    return np.stack(frames)


# --- the repository ---------------------------------------------------------------------------

PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""


def test_repository_is_a_triton_onnx_model_with_dynamic_batching(exported, repository):
    model = repository / "sign2text"
    assert sorted(p.relative_to(repository).as_posix() for p in model.rglob("*")) == [
        "sign2text/1",
        "sign2text/1/model.onnx",
        "sign2text/config.pbtxt",
    ]
    assert (model / "1" / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
    # Parsed with Triton's own ModelConfig proto, in a process of its own (tritonclient.grpc
    # and kserve cannot share one): an unknown field or a malformed value fails here.
    done = subprocess.run(
        [sys.executable, "-c", PARSE, str(model / "config.pbtxt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    record = json.loads((exported / "config.json").read_text())["onnx"]
    assert config["name"] == "sign2text" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == MAX_BATCH
    (inp,), (out,) = config["input"], config["output"]
    assert (inp["name"], inp["data_type"]) == ("clip", "TYPE_UINT8")  # the graph scales clips
    assert [int(d) for d in inp["dims"]] == record["input"]["shape"][1:] == [3, 16, 112, 112]
    assert (out["name"], out["data_type"]) == ("per_time_logits", "TYPE_FP32")
    assert [int(d) for d in out["dims"]] == record["output"]["shape"][1:]
    assert int(out["dims"][0]) == 11
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "500"}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert "KIND_CPU" in (model / "config.pbtxt").read_text()  # the comment for CPU fleets


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sign2text: error: "), err
    return err


def test_repository_needs_a_verified_export(exported, repository, tmp_path, capsys):
    err = _refused(["model", "triton-repo", str(FIXTURE), str(tmp_path / "a")], capsys)
    assert "no exported model.onnx" in err and "sign2text model export" in err
    assert not (tmp_path / "a").exists()
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    with open(stale / "model.onnx", "ab") as f:
        f.write(b"\0")
    err = _refused(["model", "triton-repo", str(stale), str(tmp_path / "b")], capsys)
    assert "sha256" in err
    # An existing repository is replaced only when asked.
    err = _refused(["model", "triton-repo", str(exported), str(repository)], capsys)
    assert "--overwrite" in err
    out = tmp_path / "c"
    (out / "sign2text" / "2").mkdir(parents=True)  # a version left from before
    assert main(["model", "triton-repo", str(exported), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "sign2text").iterdir()) == ["1", "config.pbtxt"]
    assert "max_batch_size: 8" in (out / "sign2text" / "config.pbtxt").read_text()
    err = _refused(["model", "triton-repo", str(exported), str(out), "--max-batch-size=0"], capsys)
    assert "--max-batch-size" in err


# --- the runtime against the stand-in ---------------------------------------------------------


def test_triton_runtime_answers_as_onnx_runtime(exported, standin, video_file):
    """Word and sentence mode through the predictor give ONNX Runtime's answers in-process;
    sentence mode's batches of 8 windows go as requests of at most the repository's 3."""
    onnx = Classifier(exported, runtime="onnx")
    triton = Classifier(exported, runtime="triton", predictor_host=standin)
    assert triton.runtime.name == "triton"
    for video in (video_file, _signs(2)[::2]):
        want, got = onnx.word(video, top_k=5), triton.word(video, top_k=5)
        assert got.glosses == want.glosses
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)
    assert triton.runtime.max_batch_size == MAX_BATCH  # asked of the predictor
    frames = _signs(1, 4)
    want, got = onnx.sentence(frames, stride=4), triton.sentence(frames, stride=4)
    assert want, "a vacuous comparison: no words in the sentence"
    assert [(w.gloss, w.start, w.end) for w in got] == [(w.gloss, w.start, w.end) for w in want]
    np.testing.assert_allclose([w.confidence for w in got], [w.confidence for w in want], rtol=1e-4)


def test_triton_runtime_errors_name_the_predictor(exported, standin):
    clip = np.zeros((1, 3, 16, 112, 112), np.uint8)
    port = free_port()  # nothing listens there
    down = Classifier(exported, runtime="triton", predictor_host=f"127.0.0.1:{port}")
    with pytest.raises(PredictorError, match=rf"127\.0\.0\.1:{port}/v2/models/sign2text .*unreach"):
        down.logits(clip)
    # A predictor serving another network: its answer has the wrong number of classes.
    other = TritonRuntime(f"http://{standin}", "sign2text", classes=7)
    with pytest.raises(PredictorError, match=r"shape \[1, 11, \d+\], want \[1, 7, T'\]"):
        other.logits(clip)
    missing = TritonRuntime(f"http://{standin}", "nope", classes=11)
    with pytest.raises(PredictorError, match=r"/v2/models/nope answered HTTP 404"):
        missing.logits(clip)
    info = Classifier(exported, runtime="onnx").info
    with pytest.raises(ValueError, match="--predictor_protocol v2"):
        load_triton(info, predictor_host=standin, protocol="grpc-v2")


def test_a_predictor_outage_is_a_503_not_the_clients_fault(exported):
    """Served in front of a predictor that is down: 503 with Retry-After, not a 400 or 500."""
    import asyncio

    from model.serving.guard import Overloaded
    from model.serving.predictor import Sign2TextModel
    from tests.test_serving import _frames_request

    m = Sign2TextModel(
        exported, runtime="triton", runtime_options={"predictor_host": f"127.0.0.1:{free_port()}"}
    )
    m.load()
    with pytest.raises(Overloaded, match="predictor is unavailable") as e:
        asyncio.run(m.predict(_frames_request(_signs(1)[..., ::-1].copy())))
    assert e.value.retry_after_s == 5
    m.stop()


def test_server_in_front_of_the_standin_is_a_transformer(exported, standin, tmp_path):
    """`python -m model.serving.server --predictor_host H` (what KServe runs as the transformer)
    answers word mode with the in-process ONNX Runtime answer, the network running on the
    stand-in."""
    from model.serving.server import _runtime, build_parser

    args = build_parser().parse_args(["--model-dir", "m", "--predictor_host", "p.ns"])
    options = {"predictor_host": "p.ns", "protocol": "v2", "use_ssl": False, "timeout_s": 600.0}
    assert _runtime(args) == {"runtime": "triton", "runtime_options": options}
    assert _runtime(build_parser().parse_args(["--model-dir", "m"])) == {"runtime": "auto"}
    # The transformer's model directory, with a model.onnx that no runtime here could run:
    # only the predictor's network can answer.
    light = tmp_path / "light"
    light.mkdir()
    for name in ("config.json", "labels.txt"):
        shutil.copy(exported / name, light / name)
    (light / "model.onnx").write_bytes(b"not a network")
    frames = _signs(3)[::2, ::2, ::2]  # RGB on the wire
    want = Classifier(exported, runtime="onnx").word(np.ascontiguousarray(frames[..., ::-1]), 3)
    inp = {"name": "frames", "datatype": "UINT8", "shape": list(frames.shape)}
    body = {"inputs": [inp | {"data": frames.reshape(-1).tolist()}], "parameters": {"top_k": 3}}
    with serve(light, tmp_path / "server.log", "--predictor_host", standin) as srv:
        req = urllib.request.Request(
            f"http://127.0.0.1:{srv.http}/v2/models/sign2text/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with OPENER.open(req, timeout=60) as r:
            outputs = {o["name"]: o["data"] for o in json.loads(r.read())["outputs"]}
        status, meta = srv.get("/v2/models/sign2text")
    assert outputs["glosses"] == want.glosses
    np.testing.assert_allclose(outputs["scores"], want.scores, rtol=1e-4)
    record = json.loads((exported / "config.json").read_text())["onnx"]
    assert status == 200 and json.loads(meta)["versions"] == [record["sha256"][:12]]


# --- the overlay ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(manifests_copy(tmp_path_factory.mktemp("render")) / "overlays" / "triton")


def test_triton_overlay_validates_against_the_crds(rendered):
    from model.serving.server import build_parser

    assert "triton" in OVERLAYS
    isvc = one(rendered, "InferenceService", "sign2text-triton")
    validate_kserve(isvc)
    assert isvc["metadata"]["namespace"] == "sign2text"
    pred, tf = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    # The predictor: KServe's Triton runtime on the repository, on a GPU.
    model = pred["model"]
    assert (model["modelFormat"]["name"], model["runtime"]) == ("triton", "kserve-tritonserver")
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith("s3://sign2text/triton/")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["nodeSelector"] and pred["tolerations"]
    assert pred["serviceAccountName"] == tf["serviceAccountName"] == "sign2text-storage"
    # The transformer: the project's server, fetching the model directory (config.json,
    # labels.txt) through KServe's storage initializer into /mnt/models.
    (c,) = tf["containers"]
    assert c["name"] == "kserve-container" and c["image"].startswith("sign2text-serving:")
    assert not c["image"].endswith("-cuda"), "decoding and preprocessing need no GPU"
    assert c["command"] == ["python", "-m", "model.serving.server"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STORAGE_URI"].startswith("s3://sign2text/models/")
    # KServe appends --predictor_host (and --model_name, --http_port where absent) to these.
    args = build_parser().parse_args([*c["args"], "--predictor_host", "sign2text-triton-predictor"])
    assert args.model_dir == "/mnt/models" and args.model_name == "sign2text"
    assert args.predictor_protocol == "v2" and args.http_port == 8080
    assert any(a.startswith("--model_name") for a in c["args"]), "else KServe names it the isvc"
    assert any(a.startswith("--http_port") for a in c["args"])
    (port,) = c["ports"]
    assert (port["name"], port["containerPort"]) == ("http1", 8080)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/models/sign2text/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for container in (c, model):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        res = container["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) & set(res["limits"])
