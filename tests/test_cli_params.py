"""Where the CLI finds params.yaml: the working directory, or --params (before or after the
subcommand); outside the repository root the error says what to do, in one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sign2text.cli import main

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
STEP_MODULES = [
    "components.params",
    "components.validation.validate",
    "components.conversion.convert",
    "components.training.train",
    "components.evaluation.evaluate",
    "components.release.package",
    "components.infra.objstore",
]


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "validate", "--data", "data", "--out", "v"],
        ["data", "convert", "--out", "s"],
        ["train", "--shards", "s", "--out", "t"],
        ["evaluate", "--model-dir", "m", "--out", "e"],
        ["package", "--model-dir", "m", "--eval", "e", "--out", "p"],
        ["params", "wlasl"],
    ],
)
def test_outside_the_repository_root_the_error_says_what_to_do(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # Checked before the step's imports (validate's Great Expectations alone takes seconds):
    # importing any of these now would raise ImportError instead of exiting 2.
    for name in STEP_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"sign2text: error: params file not found: params.yaml in {tmp_path}")
    assert "run sign2text from the repository root, or pass --params FILE" in err


def test_global_and_subcommand_params_are_both_honoured(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["--params", str(PARAMS), "params", "wlasl"],
        ["params", "wlasl", "--params", str(PARAMS)],
        # The subcommand's option is the nearer one and wins.
        ["--params", "nope.yaml", "params", "wlasl", "--params", str(PARAMS)],
    ):
        assert main(argv) == 0, capsys.readouterr().err
        assert "-S model.width=" in capsys.readouterr().out


def test_an_explicit_params_file_that_is_missing_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--params", "conf/p.yaml", "params", "wlasl"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"sign2text: error: params file not found: conf/p.yaml in {tmp_path} "
        "(given with --params)\n"
    )
