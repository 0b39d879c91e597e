"""Training that scales out: disjoint shards per rank, equal steps, bounded streaming memory, and
real DDP (`torchrun --nproc-per-node 2`, gloo on CPU) killed and resumed to the same weights.

Learning itself with two processes is shown in tests/test_learning.py (same band as one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import DataLoader

from components.conversion.convert import convert, read_manifest
from components.data.synth import synthesize
from components.training import clips as clips_module
from components.training import stream as stream_module
from components.training.clips import ShardClips, rank_items, steps_per_epoch
from components.training.launch import local_torchrun, train_argv
from components.training.stream import StreamClips
from model.video.clip import PreprocessConfig
from tests.test_train import tiny_params

TIMING = ("seconds", "train_samples_per_s")  # wall-clock: differs run to run
ROOT = Path(__file__).resolve().parents[1]
PRE = PreprocessConfig(num_frames=8, resize=64, crop=56)
CONTEXT = {"context_fraction": 0.5, "context_window": 12, "no_sign": 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    synthesize(root / "data", classes=4, per_class=6, signers=4, seed=3, progress=False)
    convert(root / "data", root / "shards", PRE, shard_size=4, progress=False, idle_clips=True)
    return root / "shards"


def _datasets(kind: str, shards: Path, rank: int):
    common = {"train": True, "seed": 0, "part": (rank, 2), **CONTEXT}
    if kind == "cached":
        return ShardClips(shards, "train", PRE, cache=True, **common)
    return StreamClips(shards, "train", PRE, shuffle_buffer=8, context_buffer=4, **common)


@pytest.mark.parametrize("kind", ["cached", "streamed"])
def test_each_rank_reads_only_its_shards_and_takes_the_same_steps(shards, monkeypatch, kind):
    """Two ranks: disjoint shards that cover the split, every read on a rank is one of its own,
    and both yield the same number of clips (so both take the same optimizer steps)."""
    reads: list[Path] = []
    if kind == "cached":
        real = clips_module.iter_shard
        monkeypatch.setattr(
            clips_module, "iter_shard", lambda p, d: (reads.append(p), real(p, d))[1]
        )
    else:
        real = stream_module.read_shard
        monkeypatch.setattr(stream_module, "read_shard", lambda p: (reads.append(p), real(p))[1])
    total = read_manifest(shards)["splits"]["train"]["samples"]
    mine, counts = [], []
    for rank in (0, 1):
        ds = _datasets(kind, shards, rank)
        ds.set_epoch(3, context=True)
        reads.clear()
        items = list(ds)
        assert reads and set(reads) <= set(ds.shard_paths())
        mine.append(set(ds.shard_paths()))
        counts.append(len(items))
        assert sum(ctx for _, _, ctx in items) > 0  # context windows in a context epoch
    assert not mine[0] & mine[1]
    assert {p.name for p in mine[0] | mine[1]} == {
        sh["name"] for sh in read_manifest(shards)["splits"]["train"]["shards"]
    }
    assert counts[0] == counts[1] == rank_items(total, CONTEXT["context_fraction"], 2)
    assert steps_per_epoch(counts[0], 2, 0) == steps_per_epoch(counts[1], 2, 0)


def test_streamed_epochs_reshuffle_and_repeat_exactly(shards):
    """A streamed epoch is a function of (seed, epoch, rank): the same again (so a resumed run
    sees what an uninterrupted one saw), another order in the next epoch."""
    ds = StreamClips(
        shards, "train", PRE, train=True, shuffle_buffer=8, context_buffer=4, **CONTEXT
    )
    labels = []
    for epoch in (0, 0, 1):
        ds.set_epoch(epoch, context=False)
        labels.append([(y, x.sum().item()) for x, y, _ in ds])
    assert labels[0] == labels[1] and labels[0] != labels[2]
    assert sorted(y for y, _ in labels[0]) == sorted(y for y, _ in labels[2])  # each sign once


MEASURE = """
import sys, torch
from pathlib import Path
from model.video.clip import PreprocessConfig
from components.training.clips import ShardClips, loader
from components.training.stream import StreamClips
kind, shards, report = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
pre = PreprocessConfig(num_frames=8, resize=128, crop=112)
kw = dict(train=True, context_fraction=1.0, context_window=12, no_sign=4)
ds = (ShardClips(shards, "train", pre, cache=True, **kw) if kind == "cached" else
      StreamClips(shards, "train", pre, shuffle_buffer=4, context_buffer=2, **kw))
ds.set_epoch(0, context=True)

def status(key):  # kB, from the worker's own /proc entry
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1])

class Probe(torch.utils.data.IterableDataset):  # runs in the worker: its own memory only
    def __iter__(self):
        # Private memory (RssAnon): not the shared-memory pages batches travel through, which
        # the main process frees at its own pace
        start = peak = status("RssAnon")
        for item in ds:
            peak = max(peak, status("RssAnon"))
            yield item
        report.write_text(f"{start} {peak}")

n = sum(len(y) for _, y, _ in loader(Probe(), 4, 1))  # one worker, as training makes them
start, peak = map(int, report.read_text().split())
print(n, (peak - start) // 1024)  # MiB the worker grew by while it made the epoch
"""


def _grown(root: Path, times: int) -> Path:
    """The same train split `times` over: more shards, each read and decoded like any other."""
    out = root / f"x{times}"
    out.mkdir()
    manifest = read_manifest(root / "x1")
    listed = []
    for shard in manifest["splits"]["train"]["shards"]:
        for _ in range(times):
            name = f"train-{len(listed):06d}.tar"
            shutil.copyfile(root / "x1" / shard["name"], out / name)
            listed.append({**shard, "name": name})
    samples = manifest["splits"]["train"]["samples"] * times
    manifest["splits"] = {
        "train": {**manifest["splits"]["train"], "shards": listed, "samples": samples}
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.slow
def test_a_streaming_worker_needs_no_more_memory_for_4x_the_data(tmp_path):
    """The peak private memory of a training loader worker over one epoch (context windows
    included), measured by the worker itself over what it had when it started: flat when
    streamed from 1x to 4x the data, while the cached loader's grows with it (the check can
    fail: without `steady_memory` the streamed worker grew 30 MiB here)."""
    synthesize(tmp_path / "data", classes=4, per_class=6, signers=4, seed=1, progress=False)
    pre = PreprocessConfig(num_frames=8, resize=128, crop=112)
    convert(tmp_path / "data", tmp_path / "x1", pre, shard_size=2, progress=False, idle_clips=True)
    big = _grown(tmp_path, 4)
    peak = {}
    for kind in ("streamed", "cached"):
        for shards in (tmp_path / "x1", big):
            report = tmp_path / f"{kind}-{shards.name}.txt"
            r = subprocess.run(
                [sys.executable, "-c", MEASURE, kind, str(shards), str(report)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            clips, mib = (int(v) for v in r.stdout.split())
            peak[kind, shards.name] = mib
        assert clips > 0
    streamed = peak["streamed", "x4"] - peak["streamed", "x1"]
    cached = peak["cached", "x4"] - peak["cached", "x1"]
    assert streamed < 16, peak  # MiB: noise, not data
    assert cached > 3 * max(streamed, 8), peak
    print(peak)


def _torchrun(shards: Path, out: Path, params: Path, *extra: str) -> list[str]:
    cli = str(Path(sys.executable).with_name("sign2text"))  # the console script, as users run it
    return local_torchrun(2, train_argv(shards, out, params, *extra), cli)


def _curve(run: Path) -> list[dict]:  # everything but wall-clock time must match
    rows = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_torchrun_job_killed_whole_then_resumed_ends_with_the_same_weights(shards, tmp_path):
    """Real DDP, two processes, streamed shards: the whole job SIGKILLed after a checkpoint,
    then `--resume`, ends with the weights and curves of a run never interrupted."""
    params = tiny_params(tmp_path, epochs=3, cache=False, bn_clips=16)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    r = subprocess.run(
        _torchrun(shards, whole, params), env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((whole / "history.json").read_text())
    assert [row["world_size"] for row in rows] == [2] * 4
    assert all(len(set(row["samples_per_rank"])) == 1 for row in rows)  # equal shares
    names = [
        line.split("train shards ")[1].split()
        for line in r.stdout.splitlines()
        if "train shards" in line
    ]
    assert len(names) == 2 and not set(names[0]) & set(names[1])

    proc = subprocess.Popen(
        _torchrun(shards, broken, params),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (broken / "history.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.02)
    # torchrun and every rank (they run in sessions of their own): a whole job lost, as when
    # its pods go; the ranks first, so none outlives the agent even briefly
    job = psutil.Process(proc.pid)
    everyone = [*job.children(recursive=True), job]
    for p in everyone:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(everyone, timeout=10)
    epoch = torch.load(broken / "state.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 4 and not (broken / "model").exists()
    r = subprocess.run(
        _torchrun(shards, broken, params, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"after epoch {epoch}" in r.stdout, r.stdout
    a = torch.load(whole / "model" / "model.pt", weights_only=True)
    b = torch.load(broken / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _curve(whole) == _curve(broken)


@pytest.mark.parametrize("kind", ["cached", "streamed"])
def test_persistent_loader_workers_follow_the_epoch(shards, kind):
    """Training's loader keeps its workers across epochs; each epoch still reaches them (the
    epoch lives in shared memory), so they draw what a loader without workers draws."""
    ds = _datasets(kind, shards, 0)
    alone = _datasets(kind, shards, 0)
    kept = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch, context=epoch == 1)
        alone.set_epoch(epoch, context=epoch == 1)
        mine = sorted(
            (int(y), float(x.double().sum()))
            for xs, ys, _ in kept
            for x, y in zip(xs, ys, strict=True)
        )
        ref = sorted((int(y), float(x.double().sum())) for x, y, _ in alone)
        assert len(mine) == len(ref)  # epoch 1 adds context windows: the flag reached them
        if kind == "cached":  # the same clips, dealt to the workers in turn
            assert [y for y, _ in mine] == [y for y, _ in ref]
            assert [v for _, v in mine] == pytest.approx([v for _, v in ref], rel=1e-6)
