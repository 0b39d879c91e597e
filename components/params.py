"""params.yaml -> typed configs. The CLI, DVC stages and KFP components all build configs here.

params.yaml's top-level sections are the active values (the CPU demo profile); `profiles:` holds
named overrides (e.g. `wlasl`) applied with `dvc exp run $(sign2text params wlasl)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from model.i3d import I3DConfig
from model.video import PreprocessConfig

DEFAULT = Path("params.yaml")
_ARCH_KEYS = ("width", "dropout", "centre_over_time")


def load_params(path: str | os.PathLike = DEFAULT) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict, name: str) -> dict:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"params: section '{name}' is missing")
    return value


def preprocess_config(params: dict) -> PreprocessConfig:
    m = section(params, "model")
    return PreprocessConfig.from_dict({k: v for k, v in m.items() if k not in _ARCH_KEYS})


def arch_config(params: dict, num_classes: int) -> I3DConfig:
    m = section(params, "model")
    return I3DConfig(num_classes=num_classes, **{k: m[k] for k in _ARCH_KEYS if k in m})


def profile_overrides(params: dict, name: str) -> list[str]:
    """`dvc exp run` arguments (-S key=value) that switch the active values to a profile."""
    profiles = params.get("profiles") or {}
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; params.yaml has {sorted(profiles)}")
    args = []
    for key, value in profiles[name].items():
        args += ["-S", f"{key}={json.dumps(value)}"]  # JSON is valid YAML for DVC
    return args
