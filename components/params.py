"""params.yaml -> typed configs. The CLI, DVC stages and KFP components all build configs here.

params.yaml's top-level sections are the active values (the CPU demo profile); `profiles:` holds
named overrides (e.g. `wlasl`) applied with `dvc exp run $(sign2text params wlasl)`.

Every section is checked when the file is loaded (types, ranges, choices, unknown keys), so a bad
value stops a command with one line such as `params.yaml: train.batch_size must be an integer
>= 1, got 0` instead of a traceback hours into a run. What each key may be is declared once, with
its config class, each field with its rule: `model` in model/video/clip.py and
model/network/i3d.py (serving rebuilds those from config.json), the other sections below.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model.config import check_fields, rule, strict_from_dict
from model.network.i3d import I3DConfig
from model.video.clip import PreprocessConfig

DEFAULT = Path("params.yaml")
_ARCH_KEYS = ("width", "dropout", "centre_over_time")


@dataclass(frozen=True)
class TrainConfig:
    """params.yaml `train:`. No defaults: params.yaml (and its profiles) is the one place the
    recipe's values are written."""

    epochs: int = field(metadata=rule(ge=1))
    batch_size: int = field(metadata=rule(ge=1))
    optimizer: str = field(metadata=rule(choices=("adam", "adamw")))  # adam: the WLASL recipe
    lr: float = field(metadata=rule(gt=0))
    weight_decay: float = field(metadata=rule(ge=0))
    warmup_epochs: int = field(metadata=rule(ge=0))
    # below 1: at 1 every target would be uniform
    label_smoothing: float = field(metadata=rule(ge=0, lt=1))
    hflip: bool  # handedness can carry meaning: off unless asked for
    # per-clip brightness / contrast / per-channel gain, +- this; beyond 1 a contrast or gain
    # factor can go negative
    color_jitter: float = field(metadata=rule(ge=0, le=1))
    # context windows per epoch, as a fraction of the sign clips
    context_fraction: float = field(metadata=rule(ge=0))
    context_epochs: int = field(metadata=rule(ge=0))  # with context windows, after `epochs`
    # their peak learning rate (warm-up epoch, then cosine to zero)
    context_lr: float = field(metadata=rule(gt=0))
    # frames (at the model's fps) per context window: about one sign
    context_window: int = field(metadata=rule(ge=1))
    # training clips, evenly spread, that BatchNorm's statistics come from
    bn_clips: int = field(metadata=rule(ge=1))
    freeze_backbone: bool
    init: str  # published I3D checkpoint to start from; "" = from scratch
    seed: int = field(metadata=rule(ge=0))  # numpy refuses negative seeds
    num_workers: int = field(metadata=rule(ge=0))
    cache: bool  # keep decoded clips in memory across epochs (small datasets)
    # streaming (cache false): compressed videos each loader worker shuffles ...
    shuffle_buffer: int = field(metadata=rule(ge=1))
    # ... and the decoded recent ones it strings context windows from
    context_buffer: int = field(metadata=rule(ge=1))
    device: str = field(
        metadata=rule(pattern=r"auto|cpu|cuda(:\d+)?", means="auto, cpu, cuda or cuda:N")
    )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return strict_from_dict(cls, d, "train")

    def __post_init__(self):
        check_fields(self, "train")  # types, ranges, choices: one line each
        if (self.context_fraction > 0) != (self.context_epochs > 0):
            raise ValueError(
                "train params: context_fraction and context_epochs go together (both > 0 to "
                f"learn where signs are, both 0 not to), got {self.context_fraction}, "
                f"{self.context_epochs}"
            )

    @property
    def context(self) -> bool:
        """Whether the model learns where signs are (a no-sign output, context windows)."""
        return self.context_fraction > 0

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.context_epochs if self.context else 0)

    def context_in(self, epoch: int) -> bool:
        return self.context and epoch >= self.epochs


@dataclass(frozen=True)
class Thresholds:
    """Per-video limits (params.yaml `validate:`), applied by
    components/validation/expectations.py."""

    # fewer frames (in the file or in the trimmed range) is too_few_frames
    min_frames: int = field(default=8, metadata=rule(ge=1))
    min_short_side: int = field(default=64, metadata=rule(ge=1))  # pixels
    max_duration_s: float = field(default=60.0, metadata=rule(gt=0))
    # pixels a bbox may reach past the frame edge
    bbox_tolerance: float = field(default=2.0, metadata=rule(ge=0))
    # a file within this of the metadata's fps needs no rescaling
    fps_tolerance: float = field(default=0.5, metadata=rule(ge=0))

    def __post_init__(self):
        check_fields(self, "validate")


@dataclass(frozen=True)
class ValidateConfig(Thresholds):
    # more quarantined samples than this fraction fails the dataset
    max_bad_fraction: float = field(default=0.25, metadata=rule(ge=0, le=1))


@dataclass(frozen=True)
class ConvertConfig:
    shard_size: int = field(metadata=rule(ge=1))
    idle_clips: bool  # also the rest before/after each sign: context windows need it

    def __post_init__(self):
        check_fields(self, "convert")


@dataclass(frozen=True)
class EvaluateConfig:
    # above 1 the gate always fails, which tests use to exercise a failing gate
    min_top1: float = field(metadata=rule(ge=0))
    tolerance: float = field(metadata=rule(ge=0))
    baseline: str  # production's metrics.json; "" = no baseline
    batch_size: int = field(metadata=rule(ge=1))
    sentences: int = field(metadata=rule(ge=0))

    def __post_init__(self):
        check_fields(self, "evaluate")


@dataclass(frozen=True)
class PackageConfig:
    # Export model.onnx beside model.pt (checked against torch before it is kept): predictors
    # then serve it with ONNX Runtime. A failed check packages model.pt alone, and says why.
    onnx: bool

    def __post_init__(self):
        check_fields(self, "package")


@dataclass(frozen=True)
class DataConfig:
    dir: str = field(default="data", metadata=rule(pattern=r".+", means="a folder name"))

    def __post_init__(self):
        check_fields(self, "data")


@contextmanager
def _from(source: str | os.PathLike):
    """Prefix config errors with where the values came from (the file, a profile)."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_params(path: str | os.PathLike = DEFAULT) -> dict:
    """params.yaml as a dict (values as written), after checking every section in it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    with _from(path):
        check_params(params)
    return params


def check_params(params: dict) -> None:
    """Build the config of every section present, so that any bad value raises ValueError.
    Sections absent are left to the step that needs them (KFP steps get only their own)."""
    for name, build in _BUILDERS.items():
        if name in params:
            build(section(params, name))


def section(params: dict, name: str) -> dict:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"params: section '{name}' is missing")
    return value


def _preprocess(model: dict) -> PreprocessConfig:
    return PreprocessConfig.from_dict({k: v for k, v in model.items() if k not in _ARCH_KEYS})


def _arch(model: dict) -> I3DConfig:
    return I3DConfig(**{k: model[k] for k in _ARCH_KEYS if k in model})


# Each section's typed config, built one way for checking a file and for a step reading it.
_BUILDERS = {
    "data": lambda d: strict_from_dict(DataConfig, d, "data"),
    "model": lambda m: (_preprocess(m), _arch(m)),
    "validate": lambda d: strict_from_dict(ValidateConfig, d, "validate"),
    "convert": lambda d: strict_from_dict(ConvertConfig, d, "convert"),
    "train": TrainConfig.from_dict,
    "evaluate": lambda d: strict_from_dict(EvaluateConfig, d, "evaluate"),
    "package": lambda d: strict_from_dict(PackageConfig, d, "package"),
}


@dataclass(frozen=True)
class Params:
    """What every step takes (components/steps.py): params.yaml's values, or a pipeline run's, as
    typed sections. A step reads the sections it needs here, so no caller picks keys out of it
    and no key can be dropped on the way (the Kubeflow path once lost `convert.idle_clips`)."""

    values: dict
    source: str = "params"  # where the values came from, prefixed to every error

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT) -> Params:
        return cls(load_params(path), str(path))

    @classmethod
    def checked(cls, values: dict, source: str) -> Params:
        """Values from anywhere but a params file (a pipeline run's), checked like one."""
        with _from(source):
            check_params(values)
        return cls(values, source)

    @classmethod
    def from_json(cls, text: str, source: str = "pipeline params") -> Params:
        """Params as they travel between pipeline steps: JSON text, exact ints and floats."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object")
        return cls.checked(values, source)

    def sections(self, *names: str) -> dict:
        """The named sections (all but `profiles` if none are named), as written."""
        names = names or tuple(k for k in self.values if k != "profiles")
        return {k: self.values[k] for k in names if k in self.values}

    def to_json(self, *names: str) -> str:
        """sections(*names) as JSON text: what travels between pipeline steps."""
        return json.dumps(self.sections(*names), sort_keys=True)

    def _build(self, name: str):
        with _from(self.source):
            return _BUILDERS[name](section(self.values, name))

    @property
    def preprocess(self) -> PreprocessConfig:
        """How videos become clips: params.yaml `model:` without the architecture keys."""
        return self._build("model")[0]

    @property
    def arch(self) -> I3DConfig:
        """The network; training takes the class count from its data."""
        return self._build("model")[1]

    @property
    def validate(self) -> ValidateConfig:
        return self._build("validate")

    @property
    def convert(self) -> ConvertConfig:
        return self._build("convert")

    @property
    def train(self) -> TrainConfig:
        """For training here: a device this machine lacks fails now, before any data is read."""
        cfg = self._build("train")
        with _from(self.source):
            check_device(cfg.device)
        return cfg

    @property
    def package(self) -> PackageConfig:
        return self._build("package")

    @property
    def evaluate(self) -> EvaluateConfig:
        return self._build("evaluate")


def check_device(name: str) -> None:
    import torch

    if not name.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        allowed = "auto or cpu" if count == 0 else f"auto, cpu, cuda or cuda:0..cuda:{count - 1}"
        seen = "no CUDA device" if count == 0 else f"{count} CUDA device(s)"
        raise ValueError(
            f"train.device must be {allowed} here (torch sees {seen}), got {json.dumps(name)}"
        )


def profile_overrides(params: dict, name: str) -> list[str]:
    """`dvc exp run` arguments (-S key=value) that switch the active values to a profile,
    checked: the profile applied to params must pass the same checks as params.yaml."""
    profiles = params.get("profiles") or {}
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; params.yaml has {sorted(profiles)}")
    overrides(params, profiles[name], f"profile {name}")
    # JSON is valid YAML for DVC
    return [x for k, v in profiles[name].items() for x in ("-S", f"{k}={json.dumps(v)}")]


def overrides(params: dict, values: dict, source: str) -> dict:
    """A copy of params with `section.key: value` overrides applied, checked like params.yaml."""
    applied = copy.deepcopy(params)
    for key, value in values.items():
        head, _, tail = str(key).partition(".")
        if not tail or not isinstance(applied.get(head), dict):
            raise ValueError(f"{source}: {key!r} is not a section.key of params.yaml")
        applied[head][tail] = value
    with _from(source):
        check_params(applied)
    return applied
