"""The pipeline's train step as two tasks on either side of a dsl.If / dsl.Else (issue 27): the
in-pod task trains on a GPU node as it always has; the TrainJob launcher, which only creates and
follows a Kubeflow Trainer TrainJob for hours, holds no GPU and little CPU and memory. The
branch conditions, evaluated as compiled, pick exactly one task for every shape, the one
glue.train_step's rule picks, and evaluate and publish take the model from whichever ran. No
cluster: this reads the spec KFP's compiler writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.training import trainjob
from pipelines import glue, kfp_components
from pipelines import sign2text as pipeline
from pipelines.runner import compile_pipeline

# nodes x GPUs per node: one GPU (the default), a CPU-only node, and three TrainJob shapes
SHAPES = [(1, 1), (1, 0), (1, 2), (2, 1), (4, 8)]
CHOICE = "pipelinechannel--choose-training-Output"
# The two shapes KFP's compiler gives a dsl.If's and its dsl.Else's condition.
CONDITION = re.compile(
    r"(?P<negated>!\()?inputs\.parameter_values\['(?P<channel>[^']+)'\]"
    r" == '(?P<value>[^']*)'(?(negated)\))"
)
SIZES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> tuple[dict, dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("spec") / "p.yaml", image="reg.test/s2t:9")
    pipeline_spec, platform = yaml.safe_load_all(path.read_text())
    return pipeline_spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _quantity(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    return float(number) * SIZES[unit]


def _train_tasks(spec: tuple[dict, dict]) -> dict[str, dict]:
    """Every task of the train_model component, by name: the task, the condition of the group
    it sits in (None outside any), the group's name, its resources and Kubernetes settings."""
    pipeline_spec, k8s = spec
    comps = pipeline_spec["components"]
    executors = pipeline_spec["deploymentSpec"]["executors"]
    groups = {  # sub-DAG component -> (the task that runs it, its condition)
        task["componentRef"]["name"]: (name, task.get("triggerPolicy", {}).get("condition"))
        for comp in comps.values()
        for name, task in comp.get("dag", {}).get("tasks", {}).items()
    }
    found = {}
    for comp_name, comp in comps.items():
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            ref = task["componentRef"]["name"]
            if re.fullmatch(r"comp-train-model(-\d+)?", ref):
                label = comps[ref]["executorLabel"]
                group, condition = groups.get(comp_name, (None, None))
                found[name] = {
                    "task": task,
                    "group": group,
                    "condition": condition,
                    "resources": executors[label]["container"].get("resources", {}),
                    "k8s": k8s.get(label, {}),
                    "outputs": comps[ref]["outputDefinitions"],
                }
    return found


def _holds(condition: str | None, answer: str) -> bool:
    assert condition, "a train task runs whatever the shape: no dsl.If / dsl.Else around it"
    m = CONDITION.fullmatch(condition)
    assert m, f"not a condition this test reads: {condition}"
    assert m["channel"] == CHOICE, f"the branch does not test choose-training: {condition}"
    return (answer == m["value"]) != bool(m["negated"])


def _chosen(spec: tuple[dict, dict], nodes: int, gpus: int) -> str:
    """The one train task whose condition holds for this shape, as compiled, with the value
    choose-training's own function gives."""
    answer = kfp_components.choose_training(nodes, gpus)
    tasks = _train_tasks(spec)
    runs = [name for name, t in tasks.items() if _holds(t["condition"], answer)]
    assert len(runs) == 1, f"{nodes} x {gpus}: {len(runs)} train tasks run: {runs}"
    return runs[0]


def _glue_path(monkeypatch, tmp_path: Path, nodes: int, gpus: int) -> str:
    """Which way glue.train_step goes for this shape (stopped at the fork)."""

    class Forked(Exception):
        pass

    def fork(path: str):
        def stop(*args, **kwargs):
            raise Forked(path)

        return stop

    monkeypatch.setattr(glue, "checkpoint_dir", lambda *a: tmp_path)
    monkeypatch.setattr(glue.steps, "train", fork(trainjob.IN_POD))
    monkeypatch.setattr(glue, "trainjob_for", fork(trainjob.AS_TRAINJOB))
    with pytest.raises(Forked) as forked:
        glue.train_step(
            tmp_path,
            "h",
            "{}",
            tmp_path,
            tmp_path / "m",
            nodes=nodes,
            gpus_per_node=gpus,
            cluster='{"image": "reg.test/s2t:9"}',
        )
    return str(forked.value)


@pytest.mark.parametrize(("nodes", "gpus"), SHAPES)
def test_exactly_one_train_task_runs_and_it_is_the_one_glue_expects(
    spec, monkeypatch, tmp_path, nodes, gpus
):
    """The dsl.If and dsl.Else conditions are complementary, and the branch taken is the path
    glue.train_step takes inside it: the GPU pod for one node with at most one GPU, the
    launcher for anything more. One rule (trainjob.uses_trainjob) decides both."""
    chosen = _train_tasks(spec)[_chosen(spec, nodes, gpus)]
    has_gpu = "accelerator" in chosen["resources"]
    expected = trainjob.AS_TRAINJOB if trainjob.uses_trainjob(nodes, gpus) else trainjob.IN_POD
    assert expected == (trainjob.AS_TRAINJOB if nodes > 1 or gpus > 1 else trainjob.IN_POD)
    assert has_gpu == (expected == trainjob.IN_POD)
    assert _glue_path(monkeypatch, tmp_path, nodes, gpus) == expected


def test_choose_training_reads_the_two_pipeline_parameters_and_refuses_nonsense(spec):
    pipeline_spec, _ = spec
    tasks = pipeline_spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    inputs = tasks["choose-training"]["inputs"]["parameters"]
    assert {k: v["componentInputParameter"] for k, v in inputs.items()} == {
        "train_nodes": "pipelinechannel--train_nodes",
        "train_gpus_per_node": "pipelinechannel--train_gpus_per_node",
    }
    assert tasks["choose-training"]["cachingOptions"] == {"enableCache": True}
    for nodes, gpus in ((0, 1), (1, -1)):
        with pytest.raises(ValueError, match="need >= 1 node and >= 0 GPUs"):
            kfp_components.choose_training(nodes, gpus)


def test_the_trainjob_launcher_holds_no_gpu_and_little_cpu_and_memory(spec):
    """What issue 27 was about: the step that waits hours for the TrainJob asked for a GPU,
    4 CPUs and 16G on a GPU node. Now: no accelerator, no GPU toleration or node selector, no
    /dev/shm, half a core and 1Gi (limits too), and still the claim and its namespace."""
    tasks = _train_tasks(spec)
    launcher = tasks[_chosen(spec, 2, 1)]
    assert launcher is tasks[_chosen(spec, 1, 2)]
    res, k8s = launcher["resources"], launcher["k8s"]
    assert "accelerator" not in res
    assert res["resourceCpuRequest"] == res["resourceCpuLimit"] == pipeline.LAUNCHER_CPU
    assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"] == pipeline.LAUNCHER_MEMORY
    assert _quantity(res["resourceCpuLimit"]) <= 0.5
    assert _quantity(res["resourceMemoryLimit"]) <= 2**30
    assert "tolerations" not in k8s and "nodeSelector" not in k8s
    assert "emptyDirMounts" not in k8s  # no DataLoader here
    assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [
        (pipeline.CHECKPOINT_PVC, pipeline.CHECKPOINT_MOUNT)
    ]  # glue stages the shards and params on the claim the TrainJob mounts
    assert k8s["fieldPathAsEnv"] == [{"fieldPath": "metadata.namespace", "name": "POD_NAMESPACE"}]
    assert "secretAsEnv" not in k8s  # neither it nor the TrainJob reads the object store
    task = launcher["task"]
    assert task["retryPolicy"]["maxRetryCount"] == pipeline.TRAIN_RETRIES  # re-adopts its job
    assert task["cachingOptions"] == {"enableCache": True}
    assert task["taskInfo"]["name"] == "train-model-trainjob"


def test_the_in_pod_task_trains_on_a_gpu_node_as_before(spec):
    """One GPU, 4 CPUs and 16G as limits too, the GPU taint tolerated, /dev/shm in memory, the
    checkpoint claim at checkpoint_root, retried and cached, named train-model as before."""
    pipeline_spec, _ = spec
    name = _chosen(spec, 1, 1)
    assert name == "train-model"  # kfp.local's folder and the UI's name, as before
    in_pod = _train_tasks(spec)[name]
    res, k8s = in_pod["resources"], in_pod["k8s"]
    gpu = res["accelerator"]
    assert (gpu["resourceType"], gpu["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert res["resourceCpuRequest"] == res["resourceCpuLimit"] == pipeline.TRAIN_CPU
    assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"] == pipeline.TRAIN_MEMORY
    assert k8s["tolerations"] == pipeline.TRAIN_TOLERATIONS
    assert k8s.get("nodeSelector", {}).get("labels", {}) == pipeline.TRAIN_NODE_SELECTOR
    (shm,) = k8s["emptyDirMounts"]
    assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == (
        "/dev/shm",
        "Memory",
        pipeline.TRAIN_SHM,
    )
    root = pipeline_spec["root"]["inputDefinitions"]["parameters"]["checkpoint_root"]
    assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [
        (pipeline.CHECKPOINT_PVC, root["defaultValue"])
    ]
    assert k8s["fieldPathAsEnv"] == [{"fieldPath": "metadata.namespace", "name": "POD_NAMESPACE"}]
    assert [s["secretName"] for s in k8s["secretAsEnv"]] == [pipeline.S3_SECRET] * 2
    assert in_pod["task"]["retryPolicy"]["maxRetryCount"] == pipeline.TRAIN_RETRIES
    assert in_pod["task"]["cachingOptions"] == {"enableCache": True}


def test_the_trainjob_parameters_default_to_in_pod_and_the_cluster_settings_travel(spec):
    """train_nodes x train_gpus_per_node default to 1 x 1 (in-pod training); what a TrainJob
    needs from the cluster travels as the train step's `cluster` JSON."""
    pipeline_spec, _ = spec
    params = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    defaults = {k: params[k]["defaultValue"] for k in params if k.startswith("train_")}
    assert defaults == {
        "train_nodes": 1,
        "train_gpus_per_node": 1,
        "train_image": "",
        "train_timeout_h": 48,
    }
    launcher = _train_tasks(spec)[_chosen(spec, 2, 1)]["task"]
    cluster = json.loads(launcher["inputs"]["parameters"]["cluster"]["runtimeValue"]["constant"])
    assert cluster["image"] == "reg.test/s2t:9"  # train_image "" means the components image
    assert (cluster["pvc"], cluster["mount"]) == (
        pipeline.CHECKPOINT_PVC,
        pipeline.CHECKPOINT_MOUNT,
    )
    assert cluster["tolerations"] == pipeline.TRAIN_TOLERATIONS  # for the TrainJob's nodes
    assert cluster["node_selector"] == pipeline.TRAIN_NODE_SELECTOR
    assert (cluster["cpu"], cluster["memory"]) == (pipeline.TRAIN_CPU, pipeline.TRAIN_MEMORY)


def test_both_tasks_train_the_same_way_and_write_the_same_outputs(spec):
    """Same inputs (the TrainJob parameters and the cluster JSON included) and outputs, so
    the cache, evaluate and the UI see one train step whichever task ran."""
    in_pod, launcher = (_train_tasks(spec)[_chosen(spec, n, 1)] for n in (1, 2))
    assert in_pod["task"]["inputs"] == launcher["task"]["inputs"]
    assert in_pod["outputs"] == launcher["outputs"]
    assert set(in_pod["outputs"]["artifacts"]) == {"model", "metrics", "curves"}
    pipeline_spec, _ = spec
    # Only the in-pod task asks for a GPU.
    executors = pipeline_spec["deploymentSpec"]["executors"]
    gpus = [n for n, e in executors.items() if "accelerator" in e["container"].get("resources", {})]
    assert gpus == ["exec-train-model"]


def test_evaluate_and_publish_take_the_model_from_whichever_branch_ran(spec):
    """dsl.OneOf: the branches' group outputs the model of the task that ran."""
    pipeline_spec, _ = spec
    comps = pipeline_spec["components"]
    tasks = comps["comp-exit-handler-1"]["dag"]["tasks"]
    model = tasks["evaluate-model"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    branches = comps[tasks[model["producerTask"]]["componentRef"]["name"]]["dag"]
    selectors = branches["outputs"]["artifacts"][model["outputArtifactKey"]]["artifactSelectors"]
    train = _train_tasks(spec)
    assert {s["producerSubtask"] for s in selectors} == {t["group"] for t in train.values()}
    assert {s["outputArtifactKey"].removeprefix("pipelinechannel--") for s in selectors} == {
        f"{name}-model" for name in train
    }
    # publish-model, inside the gate's group, gets the same output through that group.
    consumers = {
        t["taskInfo"]["name"]
        for t in tasks.values()
        for a in t.get("inputs", {}).get("artifacts", {}).values()
        if a.get("taskOutputArtifact") == model
    }
    assert consumers == {"evaluate-model", "gate-passed"}
