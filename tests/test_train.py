"""Training: a tiny end-to-end smoke run (convert, train, evaluate, package, predict-local), a
failed gate blocking packaging, overfitting one batch, exact resume after a kill, the curves on
disk during a run, and resume refusing other params. The tiny model and recipe (TINY_MODEL,
TINY_TRAIN, tiny_params) other tests train with live here; the clips training reads are in
test_train_clips.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from components.conversion.convert import convert
from components.data.synth import synthesize
from components.training.clips import ShardClips
from model.network.bundle import load_model_dir
from model.network.i3d import I3DConfig, InceptionI3d
from model.video.clip import PreprocessConfig
from sign2text.cli import main

TIMING = ("seconds", "train_samples_per_s")  # wall-clock: differs run to run
TINY_MODEL = {
    "width": 0.25,
    "dropout": 0.0,
    "num_frames": 8,
    "resize": 64,
    "crop": 56,
    "channel_order": "BGR",
    "value_range": [-1.0, 1.0],
    "bbox_crop": False,
    "bbox_margin": 0.1,
    "fps": 25.0,
}
TINY_TRAIN = {
    "epochs": 3,
    "batch_size": 4,
    "optimizer": "adamw",
    "lr": 0.002,
    "weight_decay": 0.0001,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "hflip": True,
    "color_jitter": 0.2,
    "context_fraction": 0.5,
    "context_epochs": 1,
    "context_lr": 0.001,
    "context_window": 12,
    "bn_clips": 256,
    "freeze_backbone": False,
    "init": "",
    "seed": 0,
    "num_workers": 0,
    "cache": True,
    "shuffle_buffer": 16,
    "context_buffer": 8,
    "device": "cpu",
}


def tiny_params(tmp: Path, **train) -> Path:
    params = {
        "data": {"dir": "data"},
        "model": TINY_MODEL,
        "convert": {"shard_size": 8, "idle_clips": False},
        "train": {**TINY_TRAIN, **train},
        "evaluate": {
            "min_top1": 0.0,
            "tolerance": 0.05,
            "baseline": "",
            "batch_size": 4,
            "sentences": 2,
        },
        "package": {"onnx": False},  # the export has tests of its own
    }
    path = tmp / f"params-{len(list(tmp.glob('params-*')))}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module", name="shards")
def shards_fixture(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    synthesize(data, classes=4, per_class=6, signers=4, seed=3, progress=False)
    pre = PreprocessConfig.from_dict(
        {k: v for k, v in TINY_MODEL.items() if k not in ("width", "dropout")}
    )
    convert(data, root / "shards", pre, shard_size=8, progress=False, idle_clips=True)
    return data, root / "shards"


def test_smoke_convert_train_evaluate_package(shards, tmp_path, capsys):
    data, shard_dir = shards
    params = str(tiny_params(tmp_path))
    out = tmp_path / "train"
    assert (
        main(
            ["train", "--shards", str(shard_dir), "--out", str(out), "--params", params, "--quiet"]
        )
        == 0
    )
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # 3 + 1 context epoch
    assert all({"loss", "val_top1", "val_top5", "lr"} <= set(r) for r in history)
    # context windows only in the context epoch, at its own learning rate
    assert ["val_context_acc" in r for r in history] == [False, False, False, True]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == history[-1]
    bundle = load_model_dir(out / "model")
    assert bundle.arch.width == 0.25 and bundle.preprocess.num_frames == 8
    assert len(bundle.labels) == 4 and bundle.arch.num_classes == 5  # + "no sign"
    assert bundle.sentence_window == 12

    ev = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(out / "model"),
                "--data",
                str(data),
                "--out",
                str(ev),
                "--params",
                params,
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads((ev / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {"top1", "top5", "top10", "per_class_mean"} <= set(m[split])
        assert 0 <= m[split]["top1"] <= m[split]["top5"] <= m[split]["top10"] <= 1
    assert m["sentence"]["n"] == 2 and 0 <= m["sentence"]["word_error_rate"]
    assert json.loads((ev / "gate.json").read_text())["decision"] == "pass"

    pkg = tmp_path / "package"
    assert (
        main(
            [
                "package",
                "--model-dir",
                str(out / "model"),
                "--eval",
                str(ev),
                "--out",
                str(pkg),
                "--params",
                params,
            ]
        )
        == 0
    )
    lineage = json.loads((pkg / "lineage.json").read_text())
    assert lineage["params"]["train"]["epochs"] == 3 and lineage["gate"] == "pass"
    assert load_model_dir(pkg).sentence_window == 12  # packaging keeps the no-sign output
    assert {"metrics.json", "gate.json", "config.json", "labels.txt", "model.pt"} <= {
        p.name for p in pkg.iterdir()
    }
    capsys.readouterr()
    video = next((data / "videos").glob("*.mp4"))
    assert main(["predict-local", str(pkg), str(video), "--top-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["glosses"]) == 2


def test_failed_gate_blocks_packaging(shards, tmp_path, capsys):
    data, shard_dir = shards
    params = tiny_params(tmp_path, epochs=1)
    raw = yaml.safe_load(params.read_text())
    raw["evaluate"]["min_top1"] = 1.01  # impossible
    params.write_text(yaml.safe_dump(raw))
    out, ev, pkg = tmp_path / "t", tmp_path / "e", tmp_path / "p"
    assert (
        main(
            [
                "train",
                "--shards",
                str(shard_dir),
                "--out",
                str(out),
                "--params",
                str(params),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(out / "model"),
                "--data",
                str(data),
                "--out",
                str(ev),
                "--params",
                str(params),
                "--quiet",
            ]
        )
        == 0
    )
    gate = json.loads((ev / "gate.json").read_text())
    assert gate["decision"] == "fail" and "below the minimum" in gate["reasons"][0]
    args = [
        "package",
        "--model-dir",
        str(out / "model"),
        "--eval",
        str(ev),
        "--out",
        str(pkg),
        "--params",
        str(params),
    ]
    assert main(args) == 2
    assert "gate failed" in capsys.readouterr().err and not pkg.exists()
    assert main([*args, "--allow-failed-gate"]) == 0 and pkg.is_dir()


def test_overfits_one_batch(shards):
    _, shard_dir = shards
    pre = PreprocessConfig(num_frames=8, resize=64, crop=56)
    clips = list(ShardClips(shard_dir, "train", pre, train=False))[:4]
    assert not any(c[2] for c in clips)
    x = torch.stack([c[0] for c in clips])
    y = torch.tensor([c[1] for c in clips])
    torch.manual_seed(0)
    model = InceptionI3d(I3DConfig(num_classes=4, width=0.25, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = F.cross_entropy(InceptionI3d.clip_logits(model(x)), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 < first
    with torch.no_grad():
        assert torch.equal(InceptionI3d.clip_logits(model(x)).argmax(1), y)


def _train_cmd(shard_dir: Path, out: Path, params: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sign2text.cli",
        "train",
        "--shards",
        str(shard_dir),
        "--out",
        str(out),
        "--params",
        str(params),
        "--quiet",
        *extra,
    ]


def test_killed_run_resumes_to_the_same_weights(shards, tmp_path):
    _, shard_dir = shards
    params = tiny_params(tmp_path, epochs=4)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(
        _train_cmd(shard_dir, whole, params), check=True, env=env, timeout=300, capture_output=True
    )

    proc = subprocess.Popen(
        _train_cmd(shard_dir, broken, params),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    # history.json is written right after each checkpoint: waiting for it waits for both
    while not (broken / "history.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: like a node going away
    proc.wait()
    state = torch.load(broken / "state.pt", weights_only=True)
    assert 1 <= state["epoch"] < 4, "the kill should land mid-run"
    assert not (broken / "model").exists()
    # The curves a killed run leaves are the checkpoint's, never ahead of it.
    partial = json.loads((broken / "history.json").read_text())
    assert 1 <= len(partial) <= state["epoch"] and partial == state["history"][: len(partial)]
    assert json.loads((broken / "metrics.json").read_text()) == partial[-1]

    r = subprocess.run(
        _train_cmd(shard_dir, broken, params, "--resume"),
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"resumed from {broken / 'state.pt'} after epoch {state['epoch']}" in r.stdout
    a = torch.load(whole / "model" / "model.pt", weights_only=True)
    b = torch.load(broken / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def curve(run: Path) -> list[dict]:  # everything but wall-clock time must match
        rows = json.loads((run / "history.json").read_text())
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert curve(whole) == curve(broken)


def test_curves_grow_on_disk_while_training_runs(shards, tmp_path, monkeypatch):
    """history.json / metrics.json have a row per finished epoch during the run, for `dvc plots
    show` and `dvc exp show` mid-run, not only once training ends."""
    import components.training.train as train_module

    _, shard_dir = shards
    out, seen = tmp_path / "run", []
    validate = train_module._validate

    def spy(*args, **kwargs):  # called in every epoch, before that epoch's row exists
        path = out / "history.json"
        rows = json.loads(path.read_text()) if path.exists() else []
        metrics = json.loads((out / "metrics.json").read_text()) if rows else None
        seen.append(
            (
                [r["epoch"] for r in rows],
                metrics == (rows[-1] if rows else None),
                (out / "model").exists(),
            )
        )
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "_validate", spy)
    params = tiny_params(tmp_path, epochs=2)  # + 1 context epoch
    assert (
        main(
            [
                "train",
                "--shards",
                str(shard_dir),
                "--out",
                str(out),
                "--params",
                str(params),
                "--quiet",
            ]
        )
        == 0
    )
    # epoch N+1 runs with N rows on disk, metrics.json = the last, and no model yet
    assert seen == [([], True, False), ([1], True, False), ([1, 2], True, False)]
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2, 3]
    assert not list(out.glob(".*.tmp"))  # the temporary files were renamed, not left behind


def test_resume_refuses_other_params(shards, tmp_path):
    _, shard_dir = shards
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--shards",
                str(shard_dir),
                "--out",
                str(out),
                "--params",
                str(tiny_params(tmp_path, epochs=1)),
                "--quiet",
            ]
        )
        == 0
    )
    args = [
        "train",
        "--shards",
        str(shard_dir),
        "--out",
        str(out),
        "--params",
        str(tiny_params(tmp_path, epochs=1, lr=0.5)),
        "--resume",
        "--quiet",
    ]
    assert main(args) == 2
