"""Multi-node training as a Kubeflow Trainer TrainJob (components/training/trainjob.py) and the
pipeline's train step on that path, against the FAKE API + controller in tests/fake_trainer.py
(no cluster can run here): every TrainJob created is checked against the CRD schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from components.training.trainjob import (
    MANAGED_BY,
    MANAGED_LABEL,
    SHM,
    TrainJobFailed,
    TrainJobTimeout,
    run_trainjob,
    train_command,
    trainjob_manifest,
    trainjob_name,
)
from pipelines.glue import checkpoint_dir, train_step
from tests.crd_schema import validate
from tests.fake_trainer import FakeTrainer

NS = "kubeflow"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SELECTOR = {"nvidia.com/gpu.product": "H100"}
WORK = Path("/checkpoints/0123456789abcdef")


class Clock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def manifest(name: str = "sign2text-train-test", nodes: int = 2, gpus: int = 4) -> dict:
    return trainjob_manifest(
        name,
        NS,
        image="reg.test/s2t:9",
        command=train_command(WORK / "shards", WORK, WORK / "params.yaml"),
        num_nodes=nodes,
        gpus_per_node=gpus,
        cpu="8",
        memory="64G",
        tolerations=[GPU_TAINT],
        node_selector=SELECTOR,
        pvc="sign2text-checkpoints",
        mount="/checkpoints",
        env={"PYTHONUNBUFFERED": "1"},
    )


def run(fake: FakeTrainer, m: dict, timeout_s: float = 3600) -> tuple[dict, list[str]]:
    lines: list[str] = []
    clock = Clock()
    obj = run_trainjob(
        fake, m, timeout_s=timeout_s, poll_s=10, log=lines.append, clock=clock, sleep=clock.sleep
    )
    return obj, lines


def test_two_nodes_of_four_gpus_validate_and_run_the_contract_command():
    m = manifest()
    validate(m)
    trainer = m["spec"]["trainer"]
    assert m["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "kind": "ClusterTrainingRuntime",
    }
    assert trainer["command"] == [
        "torchrun",
        "--no-python",
        "sign2text",
        "train",
        "--shards",
        f"{WORK}/shards",
        "--out",
        str(WORK),
        "--resume",
        "--params",
        f"{WORK}/params.yaml",
        "--quiet",
    ]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"] == {
        "cpu": "8",
        "memory": "64G",
        "nvidia.com/gpu": "4",
    }
    (patch,) = m["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [GPU_TAINT] and pod["nodeSelector"] == SELECTOR
    volumes = {v["name"]: v for v in pod["volumes"]}
    (node,) = pod["containers"]
    mounts = {vm["mountPath"]: volumes[vm["name"]] for vm in node["volumeMounts"]}
    assert mounts["/checkpoints"]["persistentVolumeClaim"] == {"claimName": "sign2text-checkpoints"}
    assert mounts[SHM]["emptyDir"] == {"medium": "Memory"}
    # Without GPUs: no GPU limit, one process per node.
    cpu = manifest(nodes=3, gpus=0)
    validate(cpu)
    assert "nvidia.com/gpu" not in cpu["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert cpu["spec"]["trainer"]["numProcPerNode"] == 1


def test_the_schema_check_is_strict():
    bad = manifest()
    bad["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(jsonschema.ValidationError, match="numNode"):
        validate(bad)
    bad = manifest(name="0abc")  # the CRD's rule: an RFC 1035 label
    with pytest.raises(jsonschema.ValidationError, match="RFC 1035"):
        validate(bad)


def test_names_follow_the_work_dir_and_the_spec():
    spec = manifest()["spec"]
    name = trainjob_name(WORK, spec)
    assert name == trainjob_name(WORK, copy.deepcopy(spec))  # a retry finds the same job
    assert name.startswith("sign2text-train-0123456789abcdef-") and len(name) <= 63
    assert trainjob_name(WORK, manifest(nodes=4)["spec"]) != name
    assert trainjob_name(Path("/checkpoints/fedcba9876543210"), spec) != name
    validate(manifest(name=name))


def test_success_reports_conditions_and_new_log_lines_once():
    fake = FakeTrainer(finish_after=5)
    obj, lines = run(fake, manifest())
    assert fake.created == ["sign2text-train-test"] and not fake.deleted
    assert obj["status"]["conditions"][0]["type"] == "Complete"
    text = "\n".join(lines)
    assert "creating (2 nodes)" in text
    assert "job node: active 1, ready 0" in text and "Complete=True (AllJobsCompleted)" in text
    logged = [ln for ln in lines if ": step " in ln]
    # Every line the rank-0 pod wrote, each once, though each read overlaps the last.
    assert [ln.split(": ", 1)[1] for ln in logged] == [f"step {i}: training" for i in range(2, 6)]
    assert all(ln.startswith("sign2text-train-test-node-0-0-") for ln in logged)


def test_failure_names_the_reason():
    fake = FakeTrainer(finish_after=3)
    fake.outcomes["sign2text-train-test"] = "fail"
    with pytest.raises(TrainJobFailed, match="FailedJobs: jobset failed due to one or more"):
        run(fake, manifest())
    assert not fake.deleted  # a failed job stays, for its logs


def test_timeout_deletes_its_own_job_and_nothing_else():
    fake = FakeTrainer(finish_after=3)
    other = manifest(name="someone-elses-job")
    other["metadata"]["labels"] = {}
    fake.preexisting(NS, other)
    fake.outcomes["sign2text-train-test"] = "never"
    with pytest.raises(TrainJobTimeout, match="within 0.0167 h"):
        run(fake, manifest(), timeout_s=60)
    assert fake.deleted == ["sign2text-train-test"]
    assert (NS, "someone-elses-job") in fake.objects


def test_a_retried_attempt_adopts_its_running_job():
    fake = FakeTrainer(finish_after=4)
    m = manifest()
    fake.preexisting(NS, m)
    fake.get(NS, m["metadata"]["name"])  # the earlier attempt saw it start, then died
    obj, lines = run(fake, m)
    assert not fake.created, "adopted, not created again"
    assert obj["status"]["conditions"][0]["type"] == "Complete"
    assert any("adopting" in ln for ln in lines)


def test_a_retried_attempt_replaces_its_failed_job_and_resumes():
    """KFP retries the step after a failed TrainJob: the retry must train again (from the
    checkpoint), not adopt the failure and fail at once."""
    fake = FakeTrainer(finish_after=3)
    m = manifest()
    fake.outcomes[m["metadata"]["name"]] = "fail"
    with pytest.raises(TrainJobFailed):
        run(fake, m)
    fake.outcomes[m["metadata"]["name"]] = "complete"  # e.g. the node that failed is gone
    obj, lines = run(fake, m)
    assert obj["status"]["conditions"][0]["type"] == "Complete"
    assert fake.deleted == [m["metadata"]["name"]] and fake.created == [m["metadata"]["name"]] * 2
    assert any("replacing it" in ln for ln in lines)


def test_a_job_of_that_name_with_another_spec_is_not_adopted():
    fake = FakeTrainer()
    theirs = manifest(nodes=3)
    theirs["metadata"]["name"] = "sign2text-train-test"
    fake.preexisting(NS, theirs)
    with pytest.raises(TrainJobFailed, match="exists with another spec"):
        run(fake, manifest())
    unlabelled = manifest()
    unlabelled["metadata"]["labels"] = {}
    fake = FakeTrainer()
    fake.preexisting(NS, unlabelled)
    with pytest.raises(TrainJobFailed, match="exists with another spec"):
        run(fake, manifest())
    assert not fake.created and not fake.deleted


def _train_params() -> str:
    from components.params import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    return json.dumps({k: p[k] for k in ("model", "train")}, sort_keys=True)


def test_pipeline_step_stages_shards_runs_the_trainjob_and_copies_the_model(tmp_path):
    """glue.train_step with 2 nodes x 4 GPUs: the fake controller simulates the training by
    writing what rank 0 writes (model/, metrics.json, history.json) into the job's --out."""
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "shard-000000.tar").write_bytes(b"samples")
    (shards / "manifest.json").write_text('{"content_hash": "abc"}')
    root, params = tmp_path / "checkpoints", _train_params()
    cluster = json.dumps(
        {
            "image": "reg.test/s2t:9",
            "cpu": "8",
            "memory": "64G",
            "tolerations": [GPU_TAINT],
            "node_selector": SELECTOR,
            "pvc": "sign2text-checkpoints",
            "mount": str(root),
        }
    )
    history = [
        {"epoch": 1, "loss": 2.0, "val_top1": 0.5},
        {"epoch": 2, "loss": 1.0, "val_top1": 0.7},
    ]

    def simulate_training(obj: dict) -> None:
        cmd = obj["spec"]["trainer"]["command"]
        out = Path(cmd[cmd.index("--out") + 1])
        assert Path(cmd[cmd.index("--shards") + 1], "train", "shard-000000.tar").is_file()
        assert Path(cmd[cmd.index("--params") + 1]).is_file()
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text("{}")
        (out / "history.json").write_text(json.dumps(history))
        (out / "metrics.json").write_text(json.dumps(history[-1]))

    fake = FakeTrainer(finish_after=3)
    fake.on_complete = simulate_training

    def step(model_out: Path) -> dict:
        return train_step(
            shards,
            "abc",
            params,
            root,
            model_out,
            tmp_path / "curves.html",
            nodes=2,
            gpus_per_node=4,
            cluster=cluster,
            namespace=NS,
            api=fake,
            poll_s=0,
        )

    final = step(tmp_path / "model")
    work = checkpoint_dir(root, "abc", params)
    assert final == history[-1]
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    assert "validation accuracy" in (tmp_path / "curves.html").read_text()
    assert (work / "shards" / "train" / "shard-000000.tar").read_bytes() == b"samples"
    assert (work / "shards.hash").read_text().strip() == "abc"
    (job,) = fake.objects.values()
    assert job["metadata"]["name"].startswith(f"sign2text-train-{work.name}-")
    assert job["metadata"]["labels"] == {MANAGED_LABEL: MANAGED_BY}
    assert job["spec"]["trainer"]["image"] == "reg.test/s2t:9"
    # A retried attempt: the shards are not copied again, the finished job is adopted.
    (work / "shards" / "train" / "shard-000000.tar").write_bytes(b"kept")
    assert step(tmp_path / "model2") == history[-1]
    assert (work / "shards" / "train" / "shard-000000.tar").read_bytes() == b"kept"
    assert len(fake.created) == 1


def test_pipeline_step_needs_the_claim_and_a_namespace(tmp_path):
    cluster = json.dumps(
        {"image": "i", "cpu": "1", "memory": "1G", "pvc": "p", "mount": "/elsewhere"}
    )
    with pytest.raises(ValueError, match="must lie on the claim"):
        train_step(
            tmp_path,
            "abc",
            _train_params(),
            tmp_path,
            tmp_path / "m",
            nodes=2,
            cluster=cluster,
            namespace=NS,
            api=FakeTrainer(),
        )
