"""The pipeline's recipe parameters and the params.yaml keys they set: one table.

pipelines/sign2text.py takes each parameter's default from params.yaml through it (so a run with
the defaults trains exactly what `dvc repro` trains), and the configure step merges a run's values
into params.yaml's through it. tests/test_pipeline_glue.py checks that the pipeline's signature,
the configure component and this table name the same parameters.
"""

from __future__ import annotations

import copy

# pipeline parameter -> the params.yaml key it sets: each named as that key is
RECIPE = {
    "num_frames": "model.num_frames",
    "resize": "model.resize",
    "crop": "model.crop",
    "epochs": "train.epochs",
    "context_epochs": "train.context_epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "min_top1": "evaluate.min_top1",
    "tolerance": "evaluate.tolerance",
}


def _get(params: dict, key: str):
    head, _, tail = key.partition(".")
    return params[head][tail]


def recipe_defaults(params: dict) -> dict:
    """Each recipe parameter's value in params (params.yaml's active values)."""
    return {name: _get(params, key) for name, key in RECIPE.items()}


def apply_recipe(params: dict, values: dict) -> dict:
    """A copy of params with a run's recipe parameters set, and the key that follows from them:
    context epochs > 0 need a context fraction (params' own, else one window per sign clip)
    while 0 means none."""
    unknown = set(values) - set(RECIPE)
    missing = set(RECIPE) - set(values)
    if unknown or missing:
        raise ValueError(
            f"pipeline parameters: unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    out = copy.deepcopy(params)
    for name, key in RECIPE.items():
        head, _, tail = key.partition(".")
        out.setdefault(head, {})[tail] = values[name]
    train = out["train"]
    fraction = float(train.get("context_fraction", 0.0)) or 1.0
    train["context_fraction"] = fraction if train["context_epochs"] else 0.0
    return out
