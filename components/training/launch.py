"""How a training run is launched: the `sign2text train` command line, and the same under
torchrun on one machine (tests, benchmarks, a laptop); trainjob.py runs it on every node of a
TrainJob."""

from __future__ import annotations

import sys
from pathlib import Path


def train_argv(shards: Path | str, out: Path | str, params: Path | str, *extra: str) -> list[str]:
    """`sign2text train` of these shards into `out` with this params file, quietly; `extra`
    flags (e.g. --resume) after --out."""
    where = ["--shards", str(shards), "--out", str(out)]
    return ["train", *where, *extra, "--params", str(params), "--quiet"]


def local_torchrun(processes: int, argv: list[str], cli: str = "sign2text") -> list[str]:
    """The `cli` command `argv` as `processes` processes of one machine under torchrun."""
    run = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [sys.executable, *run, "--no-python", cli, *argv]
