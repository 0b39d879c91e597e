"""docs/names.md, the table of what each user-facing thing is called from the CLI to the KFP
pipeline, against the code: every CLI flag it lists is a flag of the CLI, every step argument an
argument of a step, every params.yaml key a key, every KFP parameter and artifact one of the
pipelines'; and every pipeline parameter is in the table."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import yaml

from components import steps
from components.release import deploy
from components.scoring import predict_batch
from pipelines.batch_scoring import build_batch_pipeline
from pipelines.kfp_components import STEPS
from pipelines.sign2text import build_pipeline
from sign2text.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
TABLE = (ROOT / "docs" / "names.md").read_text()
COLUMNS = ("thing", "cli", "step", "params", "kfp", "artifact")


def rows() -> list[dict[str, list[str]]]:
    out = []
    for line in TABLE.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(COLUMNS) or cells[0] in ("thing", "---"):
            continue
        row = {k: re.findall(r"`([^`]+)`", c) for k, c in zip(COLUMNS, cells, strict=True)}
        out.append(row | {"thing": [cells[0]]})
    return out


def cli_flags() -> set[str]:
    flags, todo = set(), [build_parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            flags |= set(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return flags


def pipeline_parameters() -> set[str]:
    params = ROOT / "params.yaml"
    funcs = (build_pipeline(params_file=params).pipeline_func, build_batch_pipeline().pipeline_func)
    return {p for f in funcs for p in inspect.signature(f).parameters}


def test_every_name_in_the_table_is_the_codes():
    table = rows()
    assert len(table) >= 20
    flags = cli_flags()
    step_args = {
        p
        # the steps, and the options deploy and predict_batch take through them
        for f in (*vars(steps).values(), deploy.deploy, predict_batch.predict_batch)
        if inspect.isfunction(f) and f.__module__.startswith("components.")
        for p in inspect.signature(f).parameters
    }
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    kfp = pipeline_parameters()
    artifacts = {
        name
        for f in STEPS
        for name, p in inspect.signature(f).parameters.items()
        if "Annotation" in str(p.annotation)  # Input[...] / Output[...]
    }
    wrong = []
    for row in table:
        what = row["thing"][0]
        wrong += [f"{what}: CLI {f}" for f in row["cli"] if f not in flags]
        wrong += [f"{what}: step {a}" for a in row["step"] if a not in step_args]
        for key in row["params"]:
            head, _, tail = key.partition(".")
            if tail not in (params.get(head) or {}):
                wrong.append(f"{what}: params.yaml {key}")
        wrong += [f"{what}: KFP parameter {k}" for k in row["kfp"] if k not in kfp]
        wrong += [f"{what}: KFP artifact {a}" for a in row["artifact"] if a not in artifacts]
    assert not wrong, wrong


def test_every_pipeline_parameter_is_in_the_table():
    listed = set(re.findall(r"`(\w+)`", TABLE))
    assert not sorted(pipeline_parameters() - listed)


def test_recipe_parameters_are_named_as_the_keys_they_set():
    from pipelines.parameters import RECIPE

    assert all(key.split(".")[1] == name for name, key in RECIPE.items())
