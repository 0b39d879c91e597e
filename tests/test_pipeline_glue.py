"""The KFP glue (pipelines/glue.py) on its own: params from pipeline parameters, cache-key
sections, the canary percents, and metrics / confusion matrix in KFP's real artifact classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.evaluation.evaluate import confusion, write_confusion_csv
from components.params import load_params
from components.release.deploy import parse_percents
from pipelines import glue
from pipelines.parameters import RECIPE as TABLE
from pipelines.parameters import recipe_defaults

ROOT = Path(__file__).resolve().parents[1]
BASE = json.dumps(load_params(ROOT / "params.yaml"))
RECIPE = dict(
    num_frames=8,
    resize=256,
    crop=224,
    epochs=3,
    context_epochs=0,
    batch_size=4,
    lr=0.01,
    min_top1=0.5,
    tolerance=0.0,
)


def test_run_params_apply_pipeline_parameters_and_keep_types():
    p = json.loads(glue.run_params(BASE, **RECIPE))
    assert p["model"]["num_frames"] == 8
    assert (p["model"]["crop"], p["model"]["resize"]) == (224, 256)
    assert p["train"]["epochs"] == 3 and isinstance(p["train"]["epochs"], int)
    assert p["train"]["lr"] == 0.01 and p["evaluate"]["min_top1"] == 0.5
    assert p["model"]["value_range"] == [-1.0, 1.0] and isinstance(p["model"]["fps"], float)
    assert "profiles" not in p
    # The same rules as params.yaml's, worded the same way.
    with pytest.raises(ValueError, match=r"train\.epochs must be an integer >= 1, got 0"):
        glue.run_params(BASE, **RECIPE | {"epochs": 0})
    with pytest.raises(ValueError, match=r"train\.lr must be a number > 0"):
        glue.run_params(BASE, **RECIPE | {"lr": 0.0})
    assert (p["train"]["context_epochs"], p["train"]["context_fraction"]) == (0, 0.0)
    ctx = json.loads(glue.run_params(BASE, **RECIPE | {"context_epochs": 2}))["train"]
    assert ctx["context_epochs"] == 2 and ctx["context_fraction"] > 0
    with pytest.raises(ValueError, match="context_epochs must be an integer >= 0"):
        glue.run_params(BASE, **RECIPE | {"context_epochs": -1})
    with pytest.raises(ValueError, match=r"unknown \['frames'\]"):
        glue.run_params(BASE, **RECIPE | {"frames": 8})
    with pytest.raises(ValueError, match=r"model\.crop must be <= model\.resize"):
        glue.run_params(BASE, **RECIPE | {"crop": 300})


def test_a_run_with_the_default_parameters_has_params_yaml_values():
    """What the Kubeflow path trains by default is what `dvc repro` trains."""
    base = load_params(ROOT / "params.yaml")
    ran = json.loads(glue.run_params(BASE, **recipe_defaults(base)))
    assert ran == {k: v for k, v in base.items() if k != "profiles"}


def test_the_table_names_every_recipe_parameter_of_the_pipeline_and_configure():
    from pipelines.kfp_components import configure
    from pipelines.sign2text import build_pipeline

    spec = build_pipeline(params_file=ROOT / "params.yaml").pipeline_spec
    pipeline = set(spec.root.input_definitions.parameters)
    assert set(TABLE) <= pipeline
    configure_inputs = set(spec.components["comp-configure"].input_definitions.parameters)
    assert configure_inputs == set(TABLE) | {"base"}
    assert set(configure.__code__.co_varnames[: configure.__code__.co_argcount]) == configure_inputs
    # and the pipeline wires each one to configure's input of the same name
    (inner,) = [
        c.dag.tasks["configure"].inputs.parameters
        for c in spec.components.values()
        if "configure" in c.dag.tasks
    ]
    for name in TABLE:
        assert inner[name].component_input_parameter == f"pipelinechannel--{name}", name


def test_sections_and_checkpoints_change_only_with_what_a_step_reads():
    a = glue.run_params(BASE, **RECIPE)
    more_epochs = glue.run_params(BASE, **RECIPE | {"epochs": 9})
    stricter = glue.run_params(BASE, **RECIPE | {"min_top1": 0.9})
    assert glue.step_sections(a, "data") == glue.step_sections(more_epochs, "data")
    assert glue.step_sections(a, "train") != glue.step_sections(more_epochs, "train")
    assert set(json.loads(glue.step_sections(a, "train"))) == {"model", "train"}
    root = Path("/ckpt")
    same = glue.checkpoint_dir(root, "h1", a)
    assert same == glue.checkpoint_dir(root, "h1", stricter)  # a retry finds its state
    assert same.parent == root
    assert same != glue.checkpoint_dir(root, "h1", more_epochs)
    assert same != glue.checkpoint_dir(root, "h2", a)  # other shards, other state


def test_canary_percents_and_model_root():
    assert parse_percents("10,40,70", "canary_percents") == [10, 40, 70]
    assert parse_percents("25") == [25]
    for bad in ("0,30", "10,100", "50,10", "10,x", ""):
        with pytest.raises(ValueError, match="canary_percents wants increasing"):
            parse_percents(bad, "canary_percents")
    assert glue.model_root("models", "sign2text") == "s3://models/models/sign2text/"
    with pytest.raises(ValueError, match="bucket name"):
        glue.model_root("s3://models", "sign2text")


def test_confusion_and_metrics_land_in_kfp_artifacts(tmp_path):
    labels = ["up", "down", "left"]
    true, pred = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0])
    write_confusion_csv(tmp_path / "confusion_test.csv", confusion(true, pred, 3), labels)
    cm = dsl.ClassificationMetrics(name="confusion", uri=str(tmp_path / "cm"))
    glue.log_confusion(cm, tmp_path / "confusion_test.csv")
    spec = cm.metadata["confusionMatrix"]
    assert [a["displayName"] for a in spec["annotationSpecs"]] == labels
    assert [r["row"] for r in spec["rows"]] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert json.loads((tmp_path / "cm").read_text()) == cm.metadata  # also a downloadable file

    metrics = {
        "test": {"n": 5, "top1": 0.6, "top5": 1.0, "top10": 1.0, "per_class_mean": 0.67},
        "skipped": [],
    }
    m = dsl.Metrics(name="metrics", uri=str(tmp_path / "m"))
    glue.log_metrics(m, metrics)
    assert m.metadata == {
        "test_top1": 0.6,
        "test_top5": 1.0,
        "test_top10": 1.0,
        "test_per_class_mean": 0.67,
    }
    decision = {
        "decision": "fail",
        "reasons": ["test top1 0.6000 is below the minimum 0.9000"],
        "checks": [{"check": "min_top1", "passed": False}],
    }
    md = glue.summary_markdown(metrics, decision)
    assert "gate **fail**" in md and "| test | 5 | 0.6 | 1.0 | 1.0 | 0.67" in md
    assert "min_top1: FAILED" in md and "below the minimum" in md


def test_outcome_reads_kfp_final_status():
    status = dsl.PipelineTaskFinalStatus(
        state="FAILED",
        pipeline_job_resource_name="runs/1",
        pipeline_task_name="run",
        error_code=1,
        error_message="train-model failed",
    )
    rec = glue.outcome(status, isvc_name="sign2text")
    assert rec["state"] == "FAILED" and rec["error_message"] == "train-model failed"
    assert rec["inference_service"] == "sign2text"
