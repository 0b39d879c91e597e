"""`make bench-train`: training throughput, one process vs two, and the loader vs the step.

(a) The demo recipe (params.yaml) on a generated dataset, `sign2text train` as one process
    (2 threads) and as `torchrun --nproc-per-node 2` (1 thread each), the same global batch,
    alternating A/B/A/B: training samples/s of each run's last epoch (cached clips, so the loop
    is the network's work) and their ratio.
(b) The WLASL profile (64 frames at 224 px, full-width I3D): clips/s the streaming loader makes
    (StreamClips, as training reads `cache: false`) with this machine's cores as workers, vs
    clips/s one training step consumes on this CPU (forward + backward + AdamW, batch 2). On a
    GPU the step is far faster; the loader must then keep up (see the note for GPU figures).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from components.conversion.convert import convert
from components.data.synth import synthesize
from components.params import Params, load_params, overrides
from components.training.clips import loader
from components.training.launch import local_torchrun, train_argv
from components.training.stream import StreamClips
from model.network.i3d import I3DConfig, InceptionI3d
from model.video.clip import PreprocessConfig

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("sign2text"))


def _train(shards: Path, out: Path, params: Path, processes: int) -> float:
    """The last epoch's training samples/s (all processes together)."""
    argv = train_argv(shards, out, params)
    if processes == 1:
        cmd, env = [CLI, *argv], {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    else:
        cmd, env = local_torchrun(processes, argv, CLI), {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return json.loads((out / "history.json").read_text())[-1]["train_samples_per_s"]


def processes(root: Path) -> None:
    params = load_params(ROOT / "params.yaml")
    params.pop("profiles", None)
    synthesize(root / "data", classes=8, per_class=8, signers=4, seed=0, progress=False)
    convert(root / "data", root / "shards", Params(params).preprocess, shard_size=4, progress=False)
    changes = {
        "train.epochs": 2,
        "train.context_fraction": 0.0,
        "train.context_epochs": 0,
        "train.cache": True,
        "train.bn_clips": 8,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(overrides(params, changes, "bench")))
    runs: dict[int, list[float]] = {1: [], 2: []}
    for i in range(2):
        for n in (1, 2):
            runs[n].append(_train(root / "shards", root / f"run{n}-{i}", path, n))
    one, two = (statistics.median(runs[n]) for n in (1, 2))
    print(
        f"(a) demo recipe, global batch {params['train']['batch_size']}: 1 process "
        f"{one:.2f} samples/s, 2 processes {two:.2f} samples/s: x{two / one:.2f} "
        f"(runs {runs})"
    )


def loader_vs_step(root: Path) -> None:
    pre = PreprocessConfig(num_frames=64, resize=256, crop=224)
    synthesize(root / "wdata", classes=4, per_class=6, signers=4, seed=1, progress=False)
    convert(root / "wdata", root / "wshards", pre, shard_size=2, progress=False, idle_clips=True)
    workers = os.cpu_count() or 1
    ds = StreamClips(
        root / "wshards",
        "train",
        pre,
        train=True,
        context_fraction=1.0,
        context_window=30,
        no_sign=4,
    )
    ds.set_epoch(0, context=True)
    clips, t = 0, time.perf_counter()
    for x, _, _ in loader(ds, 2, workers):  # as training reads it
        clips += len(x)
    made = clips / (time.perf_counter() - t)

    model = InceptionI3d(I3DConfig(num_classes=100, width=1.0, dropout=0.5))
    model = model.to(memory_format=torch.channels_last_3d).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 3, 64, 224, 224).contiguous(memory_format=torch.channels_last_3d)
    y = torch.tensor([0, 1])
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = F.cross_entropy(InceptionI3d.clip_logits(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    used = 2 / statistics.median(times[1:])
    print(
        f"(b) WLASL profile (64x224, full I3D): loader {made:.2f} clips/s with {workers} "
        f"workers ({clips} clips incl. context windows); a CPU training step consumes "
        f"{used:.3f} clips/s; loader / step = x{made / used:.1f}"
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        processes(Path(d))
        loader_vs_step(Path(d))
