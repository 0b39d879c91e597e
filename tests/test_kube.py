"""The InferenceService API (components/release/isvc.py) and KubernetesTrainJobApi
(components/training/trainjob.py), both on components/infra/kube.py's real kubernetes client, and
`sign2text deploy --dry-run` against a FAKE Kubernetes API server on 127.0.0.1 (no cluster can
run here): what goes over the wire — paths, merge-patch content type, nulls kept, label
selectors, log parameters, foreground deletion — and clear errors."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components.infra.kube import KubeError
from components.release.isvc import DEFAULT_TEMPLATES, cluster_api
from components.training.trainjob import KubernetesTrainJobApi
from tests.crd_schema import validate
from tests.kube_apiserver import (
    BASE,
    PODS,
    TRAINJOBS,
    apiserver_fixture,  # noqa: F401
)


def test_real_client_sends_merge_patches_with_nulls(apiserver):
    srv, kubeconfig = apiserver
    api = cluster_api(kubeconfig)
    assert api.get("ns1", "sign2text") is None
    obj = yaml.safe_load(DEFAULT_TEMPLATES[0].read_text())
    api.create("ns1", obj)
    api.patch("ns1", "sign2text", {"spec": {"predictor": {"canaryTrafficPercent": 10}}})
    api.patch("ns1", "sign2text", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    assert "canaryTrafficPercent" not in api.get("ns1", "sign2text")["spec"]["predictor"]
    patches = [s for s in srv.seen if s[0] == "PATCH"]
    assert [p[1] for p in patches] == [f"{BASE}/sign2text"] * 2
    assert {p[2] for p in patches} == {"application/merge-patch+json"}
    assert patches[1][3] == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    srv.deny = True
    with pytest.raises(KubeError, match="ns1/sign2text: HTTP 403: forbidden"):
        api.patch("ns1", "sign2text", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})


def test_unreachable_api_server_is_a_clear_error(apiserver, tmp_path):
    srv, kubeconfig = apiserver
    srv.shutdown()
    srv.server_close()
    with pytest.raises(KubeError, match="cannot reach the API server"):
        cluster_api(kubeconfig).get("ns1", "sign2text")
    with pytest.raises(KubeError, match="no usable Kubernetes config"):
        cluster_api(str(tmp_path / "missing-kubeconfig"))


def test_cli_dry_run_prints_valid_objects_and_sends_nothing(apiserver, tmp_path, capsys):
    from sign2text.cli import main

    srv, kubeconfig = apiserver
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "lineage.json").write_text(json.dumps({"data_md5": "d1", "git_commit": "c1"}))
    args = [
        "deploy",
        "--model-dir",
        str(pkg),
        "--model-uri",
        "s3://models/sign2text/v7",
        "--namespace",
        "ns1",
        "--kubeconfig",
        kubeconfig,
    ]
    assert main([*args, "--dry-run"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["metadata"]["name"] for d in docs] == ["sign2text", "sign2text-grpc"]
    for d in docs:
        validate(d)
        assert d["metadata"]["namespace"] == "ns1"
        assert d["spec"]["predictor"]["model"]["storageUri"] == "s3://models/sign2text/v7/"
        assert d["metadata"]["annotations"]["sign2text.io/model-version"] == "v7"
        assert d["metadata"]["annotations"]["sign2text.io/git-commit"] == "c1"
    assert {s[0] for s in srv.seen} == {"GET"}
    assert main([*args]) == 2  # no --smoke-video
    assert "--smoke-video" in capsys.readouterr().err
    assert main([*args, "--canary-percents", "10,x", "--dry-run"]) == 2


def test_real_trainjob_client_paths_selector_log_and_foreground_delete(apiserver):
    from tests.test_trainjob import manifest

    srv, kubeconfig = apiserver
    api = KubernetesTrainJobApi(kubeconfig)
    m = manifest(name="job")
    assert api.get("ns1", "job") is None
    assert api.create("ns1", m)["spec"] == m["spec"]
    assert api.get("ns1", "job")["metadata"]["name"] == "job"
    (pod,) = api.pods("ns1", "jobset.sigs.k8s.io/jobset-name=job,batch.kubernetes.io/x=0")
    assert pod["metadata"] == {"name": "job-node-0-0-x", "namespace": "ns1", "labels": {"a": "b"}}
    assert api.pod_log("ns1", "job-node-0-0-x", since_seconds=21) == (
        "2026-01-01T00:00:00.5Z epoch 1\n"
    )
    api.delete("ns1", "job")
    assert api.get("ns1", "job") is None
    with pytest.raises(KubeError, match="delete TrainJob ns1/job: HTTP 404"):
        api.delete("ns1", "job")
    sent = {
        (verb, urlsplit(path).path): (urlsplit(path).query, body)
        for verb, path, _, body in srv.seen
    }
    assert ("POST", TRAINJOBS) in sent
    query = parse_qs(sent[("GET", PODS)][0])
    assert query["labelSelector"] == ["jobset.sigs.k8s.io/jobset-name=job,batch.kubernetes.io/x=0"]
    query = parse_qs(sent[("GET", f"{PODS}/job-node-0-0-x/log")][0])
    # kubernetes 30.1 writes the bool as "True", which the API server (ParseBool) accepts.
    assert query == {"container": ["node"], "sinceSeconds": ["21"], "timestamps": ["True"]}
    query = parse_qs(sent[("DELETE", f"{TRAINJOBS}/job")][0])
    assert query == {"propagationPolicy": ["Foreground"]}  # the JobSet and pods go first
    srv.deny = True
    with pytest.raises(KubeError, match="create TrainJob ns1/job: HTTP 403: forbidden"):
        api.create("ns1", m)
