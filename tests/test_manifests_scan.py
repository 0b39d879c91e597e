"""The kustomize manifests' static security scan (checkov, offline): every overlay's core objects
and the predictor and transformer pods KServe would build from them have no finding without a
written reason, and a deliberately insecure control pod is flagged."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kustomize import ROOT, find, one
from tests.test_manifests import _is_kserve, manifests_fixture, rendered_fixture  # noqa: F401

CHECKOV = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"


def predictor_pod(runtime: dict, isvc: dict) -> dict:
    """The predictor pod KServe would build from a runtime and an InferenceService.

    A stand-in for KServe's controller, which needs a cluster: the runtime's container with the
    InferenceService's model container fields laid over it (args appended, as KServe does),
    both pod-level parts merged. checkov does not read KServe kinds; this lets it scan the
    container the predictor really runs. The runtime's checkov.io/skip annotations (each with
    its reason) come along.
    """
    container = copy.deepcopy(runtime["spec"]["containers"][0])
    model = {
        k: v
        for k, v in isvc["spec"]["predictor"]["model"].items()
        if k not in ("modelFormat", "runtime", "protocolVersion", "storageUri")
    }
    container["args"] = container.get("args", []) + model.pop("args", [])
    container.update(model)
    pred = isvc["spec"]["predictor"]
    spec = {
        "serviceAccountName": pred["serviceAccountName"],
        "containers": [container],
        "volumes": runtime["spec"].get("volumes", []) + pred.get("volumes", []),
    }
    for key in ("nodeSelector", "tolerations"):
        if key in pred:
            spec[key] = pred[key]
    return _pod(runtime, isvc, "predictor", spec)


def transformer_pod(runtime: dict, isvc: dict) -> dict:
    """The transformer pod KServe would build (overlays/triton): the InferenceService's own
    container and pod fields. It runs the serving image under the same Knative constraints as
    the predictors, so the runtime's checkov.io/skip reasons hold for it too."""
    tf = copy.deepcopy(isvc["spec"]["transformer"])
    spec = {k: tf[k] for k in ("serviceAccountName", "containers", "volumes") if k in tf}
    return _pod(runtime, isvc, "transformer", spec)


def _pod(runtime: dict, isvc: dict, component: str, spec: dict) -> dict:
    """A Pod of `spec` for the InferenceService's component, carrying the runtime's
    checkov.io/skip annotations (each with its reason)."""
    skips = {
        k: v
        for k, v in runtime["metadata"].get("annotations", {}).items()
        if k.startswith("checkov.io/")
    }
    meta = {
        "name": f"{isvc['metadata']['name']}-{component}",
        "namespace": "sign2text",
        "labels": {"app": isvc["metadata"]["name"]},
        "annotations": skips,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def checkov(directory: Path) -> dict:
    """checkov's JSON report on the Kubernetes files in directory, with no network at all."""
    env = {
        **os.environ,
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",  # no PyPI version check
        "BC_SKIP_MAPPING": "TRUE",  # no guideline download
        # Anything that still tried to connect would hit a closed local port.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [
            CHECKOV,
            "-d",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def scan(rendered, tmp_path_factory) -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: run `make setup`")
    out = tmp_path_factory.mktemp("scan")
    for name, objects in rendered.items():
        rt = one(objects, "ServingRuntime", "sign2text")
        isvcs = find(objects, "InferenceService")
        ours = [i for i in isvcs if i["spec"]["predictor"]["model"]["runtime"] == "sign2text"]
        pods = [predictor_pod(rt, i) for i in ours]
        pods += [transformer_pod(rt, i) for i in isvcs if "transformer" in i["spec"]]
        core = [o for o in objects if not _is_kserve(o)]
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(core + pods))
    # A control the scanner must flag: the dev predictor with its hardening removed.
    bad = predictor_pod(
        one(rendered["dev"], "ServingRuntime", "sign2text"),
        one(rendered["dev"], "InferenceService", "sign2text"),
    )
    bad["metadata"]["name"] = "control-insecure"
    bad["spec"]["containers"][0]["securityContext"] = {"privileged": True, "runAsUser": 0}
    (out / "control").mkdir()
    (out / "control" / "control.yaml").write_text(yaml.safe_dump(bad))
    return checkov(out)


def test_security_scan_has_no_unjustified_finding(scan):
    results = scan["results"]
    failed = [r for r in results["failed_checks"] if "control" not in r["file_path"]]
    assert not failed, [(r["check_id"], r["check_name"], r["resource"]) for r in failed]
    for r in results["skipped_checks"]:
        reason = (r.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{r['check_id']} on {r['resource']} skipped without a reason"
    scanned = {r["resource"] for r in results["passed_checks"]}
    assert {
        "Pod.sign2text.sign2text-predictor",
        "Pod.sign2text.sign2text-grpc-predictor",
        "Pod.sign2text.sign2text-triton-transformer",
        "Deployment.sign2text.minio",
        "Deployment.sign2text.sign2text-app",
        "Service.sign2text.sign2text-app",
    } <= scanned
    assert scan["summary"]["passed"] > 100


def test_security_scan_flags_an_insecure_predictor(scan):
    """The scanner really checks: the control (privileged, root) fails the relevant checks."""
    control = {
        r["check_id"] for r in scan["results"]["failed_checks"] if "control" in r["file_path"]
    }
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23"} <= control  # privileged, escalation, root
