"""The compiled Kubeflow pipeline spec: what a cluster would run (secrets, the gate's condition,
the exit handler, caching; the train step's two tasks, GPU and retries are in
tests/test_pipeline_train_branches.py), that the committed spec is current, and the pipeline
CLI's errors. No cluster is involved: this reads the spec KFP's compiler writes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from pipelines.kfp_components import DEFAULT_IMAGE
from pipelines.runner import (
    compile_pipeline,
    parse_overrides,
    pipeline_parameters,
    spec_image,
    spec_images,
    spec_parameters,
    submit,
)
from pipelines.sign2text import (
    NAME,
    S3_ENDPOINT,
    S3_KEYS,
    S3_SECRET,
)
from sign2text.cli import main
from tests.fake_kfp import run_fake_kfp

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
COMPILED = ROOT / "pipelines" / "sign2text.yaml"


@pytest.fixture(scope="module")
def pushed_spec(tmp_path_factory) -> Path:
    """The spec as `make images` leaves it: compiled for an image a cluster could pull."""
    out = tmp_path_factory.mktemp("spec") / "p.yaml"
    return compile_pipeline(out, image="reg.test/s2t:9", params_file=PARAMS)


@pytest.fixture(scope="module")
def spec(pushed_spec) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(pushed_spec.read_text())
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(pipeline: dict, component: str) -> dict:
    return pipeline["components"][component]["dag"]["tasks"]


def test_committed_spec_is_current(tmp_path):
    # For the image it names: the placeholder, or the one `make images` compiled in.
    fresh = compile_pipeline(tmp_path / "fresh.yaml", spec_image(COMPILED), PARAMS)
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/sign2text.yaml is stale: run `make pipeline`"
    )


def test_deploy_runs_only_when_the_gate_passes(spec):
    pipeline, _ = spec
    tasks = _tasks(pipeline, "comp-exit-handler-1")
    (cond,) = [t for t in tasks.values() if t["taskInfo"]["name"] == "gate-passed"]
    assert cond["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-model-Output'] == 'pass'"
    )
    inside = _tasks(pipeline, cond["componentRef"]["name"])
    assert set(inside) == {"publish-model", "deploy-model"}
    assert "deploy-model" not in _tasks(pipeline, "comp-exit-handler-1")


def test_exit_handler_records_the_outcome(spec):
    pipeline, _ = spec
    root = pipeline["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "record-outcome"}
    exit_task = root["record-outcome"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["inputs"]["parameters"]["status"] == {
        "taskFinalStatus": {"producerTask": "exit-handler-1"}
    }


def test_object_store_credentials_come_from_a_secret_only(spec):
    pipeline, k8s = spec
    for step in ("fetch-data", "train-model", "evaluate-model", "publish-model", "deploy-model"):
        keys, endpoint = k8s[f"exec-{step}"]["secretAsEnv"]
        assert keys["secretName"] == endpoint["secretName"] == S3_SECRET
        assert {e["envVar"] for e in keys["keyToEnv"]} == set(S3_KEYS)
        assert not keys["optional"]  # no keys, no step
        assert [e["envVar"] for e in endpoint["keyToEnv"]] == [S3_ENDPOINT]
        assert endpoint["optional"]  # AWS S3 needs no endpoint
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("key", "secret", "password"))]
    assert "AWS_SECRET_ACCESS_KEY=" not in yaml.safe_dump(pipeline)


def test_data_steps_are_cached_by_data_hash_and_resolving_is_not(spec):
    pipeline, _ = spec
    tasks = _tasks(pipeline, "comp-exit-handler-1")
    assert tasks["resolve-data"]["cachingOptions"] == {}  # caching off
    for name in ("fetch-data", "validate-data", "convert-data"):  # train: in its branches
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    # fetch-data is keyed by the md5 resolve-data outputs, not by the git revision.
    fetch_inputs = tasks["fetch-data"]["inputs"]["parameters"]
    assert fetch_inputs["data_md5"]["taskOutputParameter"]["producerTask"] == "resolve-data"
    assert "data_rev" not in fetch_inputs
    # convert is keyed by the data sections of params only: new epochs must not re-convert.
    convert_params = tasks["convert-data"]["inputs"]["parameters"]["params"]
    assert convert_params["taskOutputParameter"]["outputParameterKey"] == "data"


def test_image_is_chosen_at_compile_time_and_artifacts_are_typed(spec):
    pipeline, _ = spec
    executors = pipeline["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"reg.test/s2t:9"}
    outputs = {
        name: {
            k: v["artifactType"]["schemaTitle"]
            for k, v in c["outputDefinitions"]["artifacts"].items()
        }
        for name, c in pipeline["components"].items()
        if "artifacts" in c.get("outputDefinitions", {})
    }
    assert outputs["comp-evaluate-model"] == {
        "confusion": "system.ClassificationMetrics",
        "evaluation": "system.Artifact",
        "metrics": "system.Metrics",
        "summary": "system.Markdown",
    }
    assert outputs["comp-validate-data"] == {"docs": "system.HTML", "validation": "system.Dataset"}
    assert outputs["comp-fetch-data"] == {"dataset": "system.Dataset"}
    assert outputs["comp-train-model"] == {
        "model": "system.Model",
        "metrics": "system.Metrics",
        "curves": "system.HTML",
    }
    assert outputs["comp-publish-model"] == {"package": "system.Model"}


def test_parameters_have_defaults_from_params_yaml(spec):
    pipeline, _ = spec
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    active = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["epochs"]["defaultValue"] == active["train"]["epochs"]
    assert params["num_frames"]["defaultValue"] == active["model"]["num_frames"]
    assert params["resize"]["defaultValue"] == active["model"]["resize"]
    assert params["min_top1"]["defaultValue"] == active["evaluate"]["min_top1"]
    for name in (
        "data_rev",
        "subset",
        "crop",
        "batch_size",
        "lr",
        "tolerance",
        "canary_percents",
        "namespace",
        "isvc_name",
        "model_bucket",
    ):
        assert "defaultValue" in params[name], name


def test_overrides_are_typed_and_checked():
    kinds = pipeline_parameters(PARAMS)
    # submit checks them against the spec it uploads: the same parameters and types.
    assert spec_parameters(COMPILED) == kinds
    assert parse_overrides(["epochs=3", "lr=0.01", "data_rev=v1"], kinds) == {
        "epochs": 3,
        "lr": 0.01,
        "data_rev": "v1",
    }
    with pytest.raises(ValueError, match="unknown pipeline parameter 'epoch'"):
        parse_overrides(["epoch=3"], kinds)
    with pytest.raises(ValueError, match="epochs wants int"):
        parse_overrides(["epochs=three"], kinds)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["epochs"], kinds)
    with pytest.raises(ValueError, match="unknown pipeline parameter 'base_params'"):
        parse_overrides(["base_params={}"], kinds)


def _cli(capsys, *args: str) -> tuple[int, str]:
    """`sign2text pipeline ...` in-process (kfp is imported already): exit code and stderr."""
    code = main(["pipeline", *args])
    return code, capsys.readouterr().err


def test_cli_compile_with_image(tmp_path, capsys):
    code, err = _cli(capsys, "compile", "--out", str(tmp_path / "p.yaml"), "--image", "r.test/x:1")
    assert code == 0, err
    assert "image: r.test/x:1" in (tmp_path / "p.yaml").read_text()
    code, err = _cli(capsys, "compile", "--out", str(tmp_path / "q.yaml"), "--image", "")
    assert code == 2 and "--image must be" in err
    assert not (tmp_path / "q.yaml").exists()


def test_cli_submit_to_an_unreachable_host_fails_clearly(capsys, pushed_spec):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = _cli(
        capsys,
        "submit",
        "--host",
        f"http://127.0.0.1:{port}",
        "--arg",
        "epochs=2",
        "--package",
        str(pushed_spec),
    )
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("sign2text:")]  # kfp adds warnings
    assert line.startswith(f"sign2text: error: Kubeflow Pipelines at http://127.0.0.1:{port}")
    assert "Connection refused" in line
    code, err = _cli(capsys, "submit", "--host", "127.0.0.1:8888")
    assert code == 2 and "must be an http(s):// URL" in err
    code, err = _cli(capsys, "submit", "--host", "http://127.0.0.1:1", "--arg", "epoch=2")
    assert code == 2 and "unknown pipeline parameter 'epoch'" in err


def test_cli_submit_needs_the_spec_not_params_yaml(tmp_path, capsys, monkeypatch, pushed_spec):
    """Its --arg values are checked against the spec it uploads, wherever it runs."""
    monkeypatch.chdir(tmp_path)  # no params.yaml, no pipelines/sign2text.yaml
    code, err = _cli(capsys, "submit", "--host", "http://127.0.0.1:1", "--arg", "epochs=2")
    assert code == 2
    assert err == (
        "sign2text: error: pipelines/sign2text.yaml not found: "
        "run `sign2text pipeline compile` first\n"
    )
    args = ("--host", "http://127.0.0.1:1", "--package", str(pushed_spec), "--arg", "epoch=2")
    code, err = _cli(capsys, "submit", *args)
    assert code == 2 and "unknown pipeline parameter 'epoch'" in err


def test_cli_run_local_checks_its_inputs_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with monkeypatch.context() as mp:  # params.yaml as the steps find it: here, or --params
        mp.chdir(tmp_path)
        code, err = _cli(capsys, "run-local", "--data", str(tmp_path / "nope"))
        assert code == 2 and err.startswith("sign2text: error: params file not found: params.yaml")
        code, err = _cli(capsys, "run-local", "--params", str(PARAMS), "--data", "nope")
        assert code == 2 and "dataset folder not found" in err
    code, err = _cli(capsys, "run-local", "--data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2 and "dataset folder not found" in err
    (tmp_path / "data").mkdir()
    code, err = _cli(capsys, "run-local", "--data", str(tmp_path / "data"), "--out", str(tmp_path))
    assert code == 2 and "set AWS_ENDPOINT_URL" in err
    assert not (tmp_path / "runs").exists()


def test_submit_uploads_a_new_version_each_time_and_starts_a_run(pushed_spec):
    """Against a FAKE Kubeflow Pipelines API on loopback (no cluster here): what kfp.Client
    sends for the first submit (create the pipeline) and the next (a new version)."""
    with run_fake_kfp() as kfp_api:
        first = submit(
            kfp_api.url, package=pushed_spec, arguments={"epochs": 2, "data_rev": "v1"}, version="a"
        )
        second = submit(kfp_api.url, package=pushed_spec, arguments={}, version="b")
    uploads = [r for r in kfp_api.requests if r["path"].endswith(("/upload", "/upload_version"))]
    assert [u["path"].rsplit("/", 1)[1] for u in uploads] == ["upload", "upload_version"]
    assert all(pushed_spec.read_bytes() in u["body"] for u in uploads)
    assert uploads[1]["query"]["name"] == ["b"] and uploads[1]["query"]["pipelineid"] == [NAME]
    assert first["version_id"] == f"{NAME}-v1" and second["version_id"] == f"{NAME}-b"
    run_a, run_b = kfp_api.runs()
    assert run_a["pipeline_version_reference"] == {
        "pipeline_id": NAME,
        "pipeline_version_id": f"{NAME}-v1",
    }
    assert run_b["pipeline_version_reference"]["pipeline_version_id"] == f"{NAME}-b"
    assert run_a["runtime_config"]["parameters"] == {"epochs": 2, "data_rev": "v1"}
    assert run_a["experiment_id"] == run_b["experiment_id"]  # one experiment, found again
    assert first["run_id"] != second["run_id"]


def test_submit_refuses_the_placeholder_image_before_contacting_the_host(capsys):
    """The committed spec names DEFAULT_IMAGE (example.com): uploading it as is would only fail
    later, pod by pod, pulling the image. Nothing reaches the API."""
    assert spec_images(COMPILED) == {DEFAULT_IMAGE}
    with run_fake_kfp() as kfp_api:
        code, err = _cli(capsys, "submit", "--host", kfp_api.url)
    assert kfp_api.requests == []
    assert code == 2
    assert err == (
        f"sign2text: error: {COMPILED.relative_to(ROOT)} names the placeholder image "
        f"{DEFAULT_IMAGE}, which no cluster can pull: compile it for your pushed image first "
        "(make pipeline IMAGE=REGISTRY/sign2text-components:TAG, or make images)\n"
    )


def test_compile_keeps_the_image_the_spec_names_and_warns_on_the_placeholder(
    tmp_path, capsys, pushed_spec
):
    out = tmp_path / "p.yaml"
    out.write_bytes(pushed_spec.read_bytes())
    code, err = _cli(capsys, "compile", "--out", str(out))  # e.g. `make pipeline` after a change
    assert code == 0 and "warning" not in err
    assert out.read_bytes() == pushed_spec.read_bytes()
    code, err = _cli(capsys, "compile", "--out", str(tmp_path / "new.yaml"))
    assert code == 0 and spec_images(tmp_path / "new.yaml") == {DEFAULT_IMAGE}
    assert f"warning: {tmp_path / 'new.yaml'} names the placeholder image {DEFAULT_IMAGE}" in err
    assert "compile with --image REGISTRY/sign2text-components:TAG before uploading" in err
