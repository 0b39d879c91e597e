"""The kustomize manifests: every overlay renders, validates (core kinds strictly, KServe kinds
against the CRD schemas) and keeps the fixed contract: the deploy templates, the serving runtime,
the S3 Secret and storage annotations, RBAC, prod's GPU predictors and the web app's Deployment.
The static security scan of the same render is in test_manifests_scan.py."""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.crd_schema import validate as validate_kserve
from tests.kustomize import (
    MANIFESTS,
    OVERLAYS,
    ROOT,
    TEST_KEYS,
    find,
    kustomize,
    manifests_copy,
    one,
    render,
)

K8S_VERSION = "1.37.0"
ISVC_FILES = {
    "sign2text": "inferenceservice-rest.yaml",
    "sign2text-grpc": "inferenceservice-grpc.yaml",
}
VERSION_ANNOTATIONS = (
    "sign2text.io/model-version",
    "sign2text.io/data-version",
    "sign2text.io/git-commit",
)
APP = "sign2text-app"
# `python -m app.main`'s command line (issue 15): flag -> takes a value.
APP_FLAGS = {
    "--model-url": True,
    "--host": True,
    "--port": True,
    "--feedback": True,
    "--spool": True,
    "--allow-private-urls": False,
    "--max-video-mb": True,
}


@pytest.fixture(scope="module", name="manifests")
def manifests_fixture(tmp_path_factory) -> Path:
    return manifests_copy(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="module", name="rendered")
def rendered_fixture(manifests) -> dict[str, list[dict]]:
    return {name: render(manifests / "overlays" / name) for name in OVERLAYS}


def _is_kserve(obj: dict) -> bool:
    return obj["apiVersion"].startswith("serving.kserve.io/")


def test_every_overlay_renders_everything_into_the_namespace(rendered):
    for name, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        assert {
            "Namespace",
            "ServingRuntime",
            "InferenceService",
            "ServiceAccount",
            "Secret",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "NetworkPolicy",
        } <= kinds, name
        for o in objects:
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == "sign2text", (name, o["metadata"]["name"])
    assert {"Deployment", "PersistentVolumeClaim", "Service"} <= {
        o["kind"] for o in rendered["dev"]
    }
    prod_deployments = [d["metadata"]["name"] for d in find(rendered["prod"], "Deployment")]
    assert prod_deployments == [APP], "prod uses an external MinIO"


def test_core_objects_pass_kubernetes_validate_strict(rendered):
    checked = 0
    for name, objects in rendered.items():
        for o in objects:
            if _is_kserve(o):
                continue
            try:
                kubernetes_validate.validate(o, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']}: {e.message}")
            checked += 1
    assert checked >= 12


def test_kserve_objects_validate_against_the_crd_schemas(rendered):
    for name, objects in rendered.items():
        kserve = [o for o in objects if _is_kserve(o)]
        assert len(kserve) == (4 if name == "triton" else 3)  # + InferenceService sign2text-triton
        for o in kserve:
            validate_kserve(o)


def test_strict_validation_would_catch_a_misspelt_field(rendered):
    """The checks above are not vacuous: one misspelling in each kind of object fails."""
    isvc = copy.deepcopy(one(rendered["dev"], "InferenceService", "sign2text"))
    isvc["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(Exception, match="minReplica"):
        validate_kserve(isvc)
    dep = copy.deepcopy(one(rendered["dev"], "Deployment", "minio"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(ISVC_FILES))
def test_inference_service_files_keep_the_deploy_contract(name):
    """`sign2text deploy` reads these two files as templates: one object each, fixed fields."""
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "base" / ISVC_FILES[name]).read_text()) if d]
    assert len(docs) == 1
    isvc = docs[0]
    validate_kserve(isvc)
    meta, pred = isvc["metadata"], isvc["spec"]["predictor"]
    assert meta["name"] == name
    assert meta["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert all(a in meta["annotations"] for a in VERSION_ANNOTATIONS)
    assert pred["serviceAccountName"] == "sign2text-storage"
    assert pred["model"]["runtime"] == "sign2text"
    assert pred["model"]["modelFormat"]["name"] == "sign2text"
    assert pred["model"]["storageUri"].startswith("s3://")
    assert 1 <= pred["minReplicas"] <= pred["maxReplicas"]
    res = pred["model"]["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    # A Knative service exposes exactly one port; gRPC needs it named h2c.
    (port,) = pred["model"]["ports"]
    want = ("h2c", 8081, "grpc-v2") if name.endswith("-grpc") else ("http1", 8080, "v2")
    assert (port["name"], port["containerPort"], pred["model"]["protocolVersion"]) == want


def test_serving_runtime_runs_the_real_server_securely(rendered):
    from model.serving.server import build_parser

    for objects in rendered.values():
        rt = one(objects, "ServingRuntime", "sign2text")
        assert rt["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
        assert [f["name"] for f in rt["spec"]["supportedModelFormats"]] == ["sign2text"]
        (c,) = rt["spec"]["containers"]
        assert c["command"] == ["python", "-m", "model.serving.server"]
        args = build_parser().parse_args(c["args"])  # every flag exists in model/serving/server.py
        assert (args.model_dir, args.http_port, args.grpc_port) == ("/mnt/models", 8080, 8081)
        assert "ports" not in c, "ports belong to each InferenceService (one per Knative service)"
        probe = c["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/v2/models/sign2text/ready", 8080)
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert tmp and tmp <= {v["name"] for v in rt["spec"]["volumes"] if "emptyDir" in v}


def test_secret_comes_only_from_the_ignored_env_file(manifests, rendered):
    for objects in rendered.values():
        secret = one(objects, "Secret", "sign2text-s3")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data == TEST_KEYS
        sa = one(objects, "ServiceAccount", "sign2text-storage")
        assert sa["secrets"] == [{"name": "sign2text-s3"}]
    for name in OVERLAYS:
        env = f"manifests/overlays/{name}/s3.env"
        ignored = subprocess.run(["git", "check-ignore", "-q", env], cwd=ROOT)
        assert ignored.returncode == 0, f"{env} must be git-ignored"
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", env], cwd=ROOT, capture_output=True
        )
        assert tracked.returncode != 0, f"{env} is committed"
    # Without s3.env an overlay does not render (no silent empty Secret).
    (manifests / "overlays" / "prod" / "s3.env").rename(manifests / "s3.env.moved")
    try:
        done = kustomize(manifests / "overlays" / "prod")
        assert done.returncode != 0 and "s3.env" in done.stderr
    finally:
        (manifests / "s3.env.moved").rename(manifests / "overlays" / "prod" / "s3.env")


def test_storage_annotations_per_overlay(rendered):
    def annotations(name):
        sa = one(rendered[name], "ServiceAccount", "sign2text-storage")
        return {k.rpartition("/")[2]: v for k, v in sa["metadata"]["annotations"].items()}

    dev, prod = annotations("dev"), annotations("prod")
    assert dev["s3-endpoint"] == "minio.sign2text.svc.cluster.local:9000"
    assert (dev["s3-usehttps"], dev["s3-verifyssl"]) == ("0", "0")
    assert (prod["s3-usehttps"], prod["s3-verifyssl"]) == ("1", "1")
    for a in (dev, prod):
        assert "://" not in a["s3-endpoint"] and a["s3-region"]
    minio = one(rendered["dev"], "Service", "minio")
    assert minio["spec"]["ports"][0]["port"] == 9000


def test_deployer_role_allows_inference_services_and_nothing_more(rendered):
    for objects in rendered.values():
        role = one(objects, "Role", "sign2text-deployer")
        assert role["rules"] == [
            {
                "apiGroups": ["serving.kserve.io"],
                "resources": ["inferenceservices"],
                "verbs": ["get", "create", "patch"],
            }
        ]
        binding = one(objects, "RoleBinding", "sign2text-deployer")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "sign2text-deployer",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
        ]
        assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")


def test_pipeline_namespace_has_the_trainers_claim_and_rbac(manifests, rendered):
    """manifests/pipeline/: the checkpoint claim every TrainJob node mounts (ReadWriteMany) and
    the train step's Role: what KubernetesTrainJobApi calls, nothing more, bound to the same
    step service account as the deployer's Role."""
    from pipelines.sign2text import CHECKPOINT_PVC

    objects = render(manifests / "pipeline")
    assert {o["kind"] for o in objects} == {"PersistentVolumeClaim", "Role", "RoleBinding"}
    for o in objects:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        assert o["metadata"]["namespace"] == "kubeflow"
    pvc = one(objects, "PersistentVolumeClaim", CHECKPOINT_PVC)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    role = one(objects, "Role", "sign2text-trainer")
    assert role["rules"] == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["trainjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
    ]
    binding = one(objects, "RoleBinding", "sign2text-trainer")
    assert binding["roleRef"]["name"] == "sign2text-trainer"
    deployer = one(rendered["dev"], "RoleBinding", "sign2text-deployer")
    assert binding["subjects"] == deployer["subjects"]


def test_prod_runs_gpu_predictors_with_more_replicas(rendered):
    for name in ISVC_FILES:
        dev = one(rendered["dev"], "InferenceService", name)["spec"]["predictor"]
        prod = one(rendered["prod"], "InferenceService", name)["spec"]["predictor"]
        assert "nvidia.com/gpu" not in dev["model"]["resources"]["limits"]
        assert prod["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert prod["nodeSelector"] and prod["tolerations"]
        assert prod["minReplicas"] > dev["minReplicas"] and prod["maxReplicas"] > dev["maxReplicas"]
    dev_rt, prod_rt = (one(rendered[n], "ServingRuntime", "sign2text") for n in ("dev", "prod"))
    assert "--device=cuda" not in dev_rt["spec"]["containers"][0]["args"]
    assert prod_rt["spec"]["containers"][0]["args"][-1] == "--device=cuda"
    assert prod_rt["spec"]["containers"][0]["image"].endswith("-cuda")


def app_args(argv: list[str]) -> dict[str, str | bool]:
    """The app's arguments by flag, each checked against its command line (APP_FLAGS), and the
    whole list parsed by the app's own parser (app/main.py), as the container will."""
    from app.main import build_parser

    build_parser().parse_args(argv)  # exits (SystemExit) on a flag the server does not have
    args: dict[str, str | bool] = {}
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        assert flag in APP_FLAGS, f"app.main has no {flag}"
        assert flag not in args, f"{flag} given twice"
        if APP_FLAGS[flag]:
            args[flag] = value if eq else next(it)
        else:
            assert not eq, f"{flag} takes no value"
            args[flag] = True
    return args


def test_web_app_serves_the_rest_model_securely(rendered):
    """The app's Deployment, Service and NetworkPolicy: wired to the REST InferenceService and
    the object store, hardened like the rest, with the contract's probes."""
    for name, objects in rendered.items():
        dep = one(objects, "Deployment", APP)
        pod = dep["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        spec = pod["spec"]
        (c,) = spec["containers"]
        assert c["command"] == ["python", "-m", "app.main"]
        args = app_args(c["args"])
        # The REST InferenceService, by the cluster-local name of its Knative predictor.
        rest = one(objects, "InferenceService", "sign2text")
        assert rest["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
        isvc, ns = rest["metadata"]["name"], rest["metadata"]["namespace"]
        assert args["--model-url"] == f"http://{isvc}-predictor.{ns}.svc.cluster.local"
        # Feedback in the models' bucket, never where the models are.
        bucket = rest["spec"]["predictor"]["model"]["storageUri"].split("/")[2]
        feedback = args["--feedback"]
        assert feedback.startswith(f"s3://{bucket}/") and "/models" not in feedback
        assert "--allow-private-urls" not in args, "links to in-cluster addresses stay refused"
        (port,) = c["ports"]
        assert (port["name"], port["containerPort"]) == ("http", int(args["--port"]))
        assert args["--host"] == "0.0.0.0"  # noqa: S104 (the pod's address, for the Service)
        live, ready = (c[k]["httpGet"] for k in ("livenessProbe", "readinessProbe"))
        assert (live["path"], live["port"]) == ("/healthz", "http")  # the process is up
        assert (ready["path"], ready["port"]) == ("/readyz", "http")  # the model answers it
        assert c["image"].startswith(f"{APP}:") and c["imagePullPolicy"] == "Always"
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
        # Hardening: non-root, no token, no escalation, nothing writable but /tmp and the spool.
        assert spec["automountServiceAccountToken"] is False
        psc, sc = spec["securityContext"], c["securityContext"]
        assert psc["runAsNonRoot"] and psc["runAsUser"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert set(mounts) == {"/tmp", args["--spool"]}
        for path, vol in mounts.items():
            assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[vol]), path
        # S3: the keys by reference to the overlay's Secret, the endpoint where the storage
        # initializer's is (same host:port, https exactly when it uses https).
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "sign2text-s3", "key": key}
            assert "value" not in env[key]
        sa = one(objects, "ServiceAccount", "sign2text-storage")["metadata"]["annotations"]
        scheme = "https" if sa["serving.kserve.io/s3-usehttps"] == "1" else "http"
        want = f"{scheme}://{sa['serving.kserve.io/s3-endpoint']}"
        assert env["AWS_ENDPOINT_URL"]["value"] == want, name
        assert env["AWS_DEFAULT_REGION"]["value"] == sa["serving.kserve.io/s3-region"]
        # The Service and the NetworkPolicy select these pods, on the app's port.
        svc = one(objects, "Service", APP)
        assert svc["spec"]["selector"].items() <= labels.items()
        (sport,) = svc["spec"]["ports"]
        assert sport["targetPort"] == "http" and sport["port"] == int(args["--port"])
        policy = one(objects, "NetworkPolicy", APP)["spec"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]
    dev, prod = (one(rendered[n], "Deployment", APP)["spec"] for n in ("dev", "prod"))
    assert prod["replicas"] > dev["replicas"] >= 1
