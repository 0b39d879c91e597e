"""params.yaml is checked when loaded: each bad value ends the command with exit code 2 and one
line naming the file, the key and what it may be, before any data is read or model built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from components.params import Params, TrainConfig, load_params
from components.training.train import _optimizer
from sign2text.cli import main
from tests.conftest import demo_recipe

ROOT = Path(__file__).resolve().parents[1]
ACTIVE = yaml.safe_load((ROOT / "params.yaml").read_text())
DELETE = "<deleted>"  # a sentinel that reads well in test ids


def _write(tmp: Path, changes: dict, name: str = "params.yaml") -> Path:
    """params.yaml with {(section, key): value} applied; value DELETE removes the key."""
    params = json.loads(json.dumps(ACTIVE))
    for (sec, key), value in changes.items():
        if value == DELETE:
            del params[sec][key]
        else:
            params[sec][key] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(params))
    return path


def _command(section: str, tmp: Path, params: Path) -> list[str]:
    """The command that reads `section`; every path it names is missing on purpose: the params
    error must come first."""
    missing = str(tmp / "missing")
    common = ["--params", str(params), "--quiet"]
    return {
        "validate": ["data", "validate", "--data", missing, "--out", str(tmp / "v"), *common],
        "convert": ["data", "convert", "--data", missing, "--out", str(tmp / "c"), *common],
        "evaluate": [
            "evaluate",
            "--model-dir",
            missing,
            "--data",
            missing,
            "--out",
            str(tmp / "e"),
            *common,
        ],
    }.get(section, ["train", "--shards", missing, "--out", str(tmp / "t"), *common])


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without CUDA, even where the tests run on one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


BAD = [
    # the values the issue names
    ("train", "batch_size", 0, "train.batch_size must be an integer >= 1, got 0"),
    ("train", "epochs", -1, "train.epochs must be an integer >= 1, got -1"),
    ("train", "lr", "fast", 'train.lr must be a number > 0, got "fast"'),
    ("train", "optimizer", "sgdx", 'train.optimizer must be one of adam, adamw, got "sgdx"'),
    (
        "train",
        "device",
        "cuda",
        'train.device must be auto or cpu here (torch sees no CUDA device), got "cuda"',
    ),
    # types: bool is not an int, an int is not a bool, a float is not an int, NaN is no number
    ("train", "epochs", True, "train.epochs must be an integer >= 1, got true"),
    ("train", "hflip", 1, "train.hflip must be true or false, got 1"),
    ("train", "batch_size", 2.5, "train.batch_size must be an integer >= 1, got 2.5"),
    ("train", "lr", float("nan"), "train.lr must be a number > 0, got NaN"),
    ("train", "label_smoothing", 1, "train.label_smoothing must be a number in [0, 1), got 1"),
    ("train", "device", "gpu", 'train.device must be auto, cpu, cuda or cuda:N, got "gpu"'),
    (
        "train",
        "device",
        "cuda:1",
        'train.device must be auto or cpu here (torch sees no CUDA device), got "cuda:1"',
    ),
    ("train", "batchsize", 8, "unknown train keys ['batchsize']; allowed: batch_size, bn_clips,"),
    ("model", "channel_order", "RGBA", 'model.channel_order must be one of BGR, RGB, got "RGBA"'),
    ("model", "crop", 999, "model.crop must be <= model.resize (128), got 999"),
    ("model", "value_range", [1.0], "model.value_range must be a list of 2 numbers, got [1.0]"),
    (
        "model",
        "value_range",
        [1, -1],
        "model.value_range must be [low, high] with low < high, got [1.0, -1.0]",
    ),
    ("model", "dropout", 1, "model.dropout must be a number in [0, 1), got 1"),
    ("model", "width", 0, "model.width must be a number > 0, got 0"),
    (
        "validate",
        "max_bad_fraction",
        2,
        "validate.max_bad_fraction must be a number in [0, 1], got 2",
    ),
    ("validate", "min_frames", "8", 'validate.min_frames must be an integer >= 1, got "8"'),
    ("convert", "shard_size", 2.5, "convert.shard_size must be an integer >= 1, got 2.5"),
    ("convert", "shard_size", DELETE, "convert.shard_size is missing"),
    ("convert", "idle_clips", "sure", 'convert.idle_clips must be true or false, got "sure"'),
    ("evaluate", "sentences", -1, "evaluate.sentences must be an integer >= 0, got -1"),
    ("evaluate", "batch_size", 0, "evaluate.batch_size must be an integer >= 1, got 0"),
    ("evaluate", "min_top1", None, "evaluate.min_top1 must be a number >= 0, got null"),
    ("data", "dir", "", 'data.dir must be a folder name, got ""'),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"), BAD, ids=[f"{s}.{k}={v!r}" for s, k, v, _ in BAD]
)
def test_bad_value_exits_2_with_one_line(section, key, value, message, tmp_path, capsys, no_cuda):
    params = _write(tmp_path, {(section, key): value})
    assert main(_command(section, tmp_path, params)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"sign2text: error: {params}: {message}"), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not any((tmp_path / d).exists() for d in ("t", "v", "c", "e"))  # nothing started


def test_console_script_reports_a_bad_value_in_one_line(tmp_path):
    """The same through a real process: what a user (or DVC running a stage) sees."""
    params = _write(tmp_path, {("train", "batch_size"): 0})
    r = subprocess.run(
        [sys.executable, "-m", "sign2text.cli", *_command("train", tmp_path, params)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2
    assert r.stderr == (
        f"sign2text: error: {params}: train.batch_size must be an integer >= 1, got 0\n"
    )


def test_cuda_is_checked_only_where_training_runs(tmp_path, no_cuda):
    """train.device: cuda is a fine value for a GPU machine: a CPU machine can still load the
    file (to evaluate, say); only training here refuses it, up front."""
    params = load_params(_write(tmp_path, {("train", "device"): "cuda:0"}))
    assert TrainConfig.from_dict(params["train"]).device == "cuda:0"
    with pytest.raises(ValueError, match=r"^params\.yaml: train\.device must be auto or cpu"):
        _ = Params(params, "params.yaml").train
    assert Params.load(_write(tmp_path, {}, "ok.yaml")).train.device == "auto"


def test_cuda_index_is_checked_against_the_devices_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for ok in ("cuda", "cuda:1", "cpu"):
        assert Params({"train": {**ACTIVE["train"], "device": ok}}).train.device == ok
    with pytest.raises(ValueError, match=r"auto, cpu, cuda or cuda:0\.\.cuda:1 here .*\"cuda:2\""):
        _ = Params({"train": {**ACTIVE["train"], "device": "cuda:2"}}).train


def test_ints_are_accepted_where_floats_are_wanted(tmp_path):
    changes = {("train", "lr"): 1, ("model", "value_range"): [0, 1], ("model", "fps"): 30}
    params = load_params(_write(tmp_path, changes))
    cfg = Params(params).train
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    pre = Params(params).preprocess
    assert pre.value_range == (0.0, 1.0) and isinstance(pre.fps, float)


def test_profiles_are_checked_too(tmp_path, capsys):
    assert main(["params", "wlasl", "--params", str(ROOT / "params.yaml")]) == 0
    bad = json.loads(json.dumps(ACTIVE))
    bad["profiles"]["wlasl"]["train.optimizer"] = "sgd"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    capsys.readouterr()
    assert main(["params", "wlasl", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        'sign2text: error: profile wlasl: train.optimizer must be one of adam, adamw, got "sgd"\n'
    )


def test_train_rules_match_the_code():
    """Every optimizer the optimizer field's rule allows is one training can build."""
    for name in TrainConfig.__dataclass_fields__["optimizer"].metadata["rule"].choices:
        cfg = demo_recipe(optimizer=name)
        opt, _ = _optimizer(cfg, torch.nn.Linear(1, 1), [1] * cfg.total_epochs)
        assert type(opt).__name__.lower() == name
    with pytest.raises(ValueError, match="train.warmup_epochs must be an integer >= 0"):
        TrainConfig(**{**vars(demo_recipe()), "warmup_epochs": -1})  # checked directly too


def test_params_yaml_is_the_one_place_for_defaults():
    """The recipe's config classes have no defaults of their own; the only section class that
    keeps some (validate's, which data/validate.py also applies without params) must agree."""
    from dataclasses import MISSING, fields

    from components.params import ConvertConfig, EvaluateConfig, ValidateConfig

    for cls in (TrainConfig, ConvertConfig, EvaluateConfig):
        assert all(f.default is MISSING for f in fields(cls)), cls.__name__
    defaults = {f.name: f.default for f in fields(ValidateConfig)}
    assert defaults == ACTIVE["validate"]
