"""Training on more processes than shards (issue 29): the ranks share the shards by video, so
every rank reads its own videos -- disjoint, covering the split, at most one apart -- and takes
the same number of steps; real DDP (`torchrun`, 2 and 3 processes on one shard) trains, writes a
model and that model evaluates. With at least as many shards as ranks nothing changes
(tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.conversion.convert import convert, read_manifest, read_shard, scratch_dir
from components.data.synth import synthesize
from components.training import clips as clips_module
from components.training import stream as stream_module
from components.training.clips import ShardClips, rank_items
from components.training.launch import local_torchrun, train_argv
from components.training.stream import StreamClips
from model.video.clip import PreprocessConfig
from sign2text.cli import main
from tests.test_train import TINY_MODEL, tiny_params

ROOT = Path(__file__).resolve().parents[1]
PRE = PreprocessConfig.from_dict(
    {k: v for k, v in TINY_MODEL.items() if k not in ("width", "dropout")}
)
CONTEXT = {"context_fraction": 0.5, "context_window": 12, "no_sign": 4}


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> tuple[Path, Path]:
    """(data, shards): 4 glosses x 6 videos, the train split in a single shard."""
    root = tmp_path_factory.mktemp("one-shard")
    synthesize(root / "data", classes=4, per_class=6, signers=4, seed=3, progress=False)
    convert(root / "data", root / "shards", PRE, shard_size=64, progress=False, idle_clips=True)
    assert len(read_manifest(root / "shards")["splits"]["train"]["shards"]) == 1
    return root / "data", root / "shards"


def _deal(listed, world: int, workers: int = 1) -> dict[tuple[int, int], list[int]]:
    """(rank, worker) -> the split's video indices rank_reads / rank_video give it."""
    out = {}
    for rank in range(world):
        for worker in range(workers):
            got = []
            for (_, first), (_, n) in zip(
                clips_module.rank_reads(listed, (rank, world)), listed, strict=True
            ):
                assert first is not None  # fewer shards than ranks: every shard shared
                got += [
                    first + j
                    for j in range(n)
                    if clips_module.rank_video(first + j, (rank, world), workers, worker)
                ]
            out[rank, worker] = got
    return out


def test_fewer_shards_than_ranks_share_them_by_video():
    """The rule: each rank (and each of its loader workers) its own videos of every shard;
    together disjoint, covering the split, and no rank more than one video ahead of another."""
    listed = [(Path("train-000000.tar"), 5), (Path("train-000001.tar"), 3)]
    for world, workers in ((3, 1), (3, 2), (4, 2), (8, 1)):
        dealt = _deal(listed, world, workers)
        every = sorted(k for ks in dealt.values() for k in ks)
        assert every == list(range(8)), (world, workers)  # disjoint and covering
        per_rank = [sum(len(dealt[r, w]) for w in range(workers)) for r in range(world)]
        assert max(per_rank) - min(per_rank) <= 1, per_rank
    assert [first for _, first in clips_module.rank_reads(listed, (2, 3))] == [0, 5]
    # as many shards as ranks, or more: each rank its own shards, whole, as before
    assert clips_module.rank_reads(listed, (1, 2)) == [(Path("train-000001.tar"), None)]
    assert clips_module.rank_reads(listed * 2, (0, 3)) == [
        (listed[0][0], None),
        (listed[1][0], None),
    ]
    with pytest.raises(ValueError, match="8 videos, fewer than the 9"):
        clips_module.rank_reads(listed, (0, 9))


def _train_videos(shards: Path) -> list[str]:
    listed = read_manifest(shards)["splits"]["train"]["shards"]
    return [
        m["video_id"]
        for sh in listed
        for m, _ in read_shard(shards / sh["name"])
        if not m.get("idle")
    ]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", ["cached", "streamed"])
def test_ranks_read_their_own_videos_of_one_shard(one_shard, monkeypatch, kind, world):
    """One shard, 2 or 3 ranks: every rank decodes only its own videos (so its context windows
    come from them too), the ranks' videos are disjoint and cover the split, and every rank
    yields the same number of clips -- with streaming, over its loader workers too."""
    _, shards = one_shard
    module = clips_module if kind == "cached" else stream_module
    decoded: list[str] = []
    real = module.decode_clip

    def record(meta, mp4, scratch):
        if not meta.get("idle"):
            decoded.append(meta["video_id"])
        return real(meta, mp4, scratch)

    monkeypatch.setattr(module, "decode_clip", record, raising=False)
    videos = _train_videos(shards)
    mine, counts = [], []
    for rank in range(world):
        common = {"train": True, "seed": 0, "part": (rank, world), **CONTEXT}
        decoded.clear()
        if kind == "cached":
            ds = ShardClips(shards, "train", PRE, cache=True, **common)
            ds.set_epoch(1, context=True)
            items = list(ds)
        else:
            ds = StreamClips(shards, "train", PRE, shuffle_buffer=4, context_buffer=4, **common)
            ds.set_epoch(1, context=True)
            workers = ds.usable_workers(2)
            assert workers == 2  # a video or more for each worker of each rank
            items, seen = [], []
            with scratch_dir() as d:
                for w in range(workers):
                    decoded.clear()
                    items += list(ds._train(w, workers, d))
                    seen.append(set(decoded))
            assert not seen[0] & seen[1]  # the workers deal the rank's videos
            decoded[:] = [v for s in seen for v in s]
        assert sum(ctx for _, _, ctx in items) > 0  # context windows, from its own videos
        mine.append(set(decoded))
        counts.append(len(items))
    assert sum(len(m) for m in mine) == len(set().union(*mine)) == len(videos)  # disjoint
    assert set().union(*mine) == set(videos)  # covering
    assert max(map(len, mine)) - min(map(len, mine)) <= 1
    assert counts == [rank_items(len(videos), CONTEXT["context_fraction"], world)] * world


@pytest.mark.slow
@pytest.mark.parametrize(("world", "kind"), [(2, "cached"), (3, "streamed")])
def test_torchrun_on_one_shard_trains_a_model_that_evaluates(one_shard, tmp_path, world, kind):
    """Real DDP with more processes than shards (the issue: rank 1 had no shard, and gloo
    aborted on a collective mismatch): every rank reads its share, takes the same steps, and
    rank 0 writes a model that `sign2text evaluate` scores."""
    data, shards = one_shard
    params = tiny_params(
        tmp_path, epochs=1, batch_size=2 * world, cache=kind == "cached", bn_clips=12
    )
    out = tmp_path / "train"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    # this checkout's code, also where the console script's editable install is another's
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cli = str(Path(sys.executable).with_name("sign2text"))
    r = subprocess.run(
        local_torchrun(world, train_argv(shards, out, params), cli),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    said = [line for line in r.stdout.splitlines() if "train shards" in line]
    assert len(said) == world and all("shared" in line for line in said), said
    rows = json.loads((out / "history.json").read_text())
    assert len(rows) == 2  # 1 epoch + 1 context epoch
    for row in rows:
        assert row["world_size"] == world
        assert len(row["samples_per_rank"]) == world
        assert len(set(row["samples_per_rank"])) == 1  # the same clips, so the same steps
    assert (out / "model" / "model.pt").is_file()

    ev = tmp_path / "eval"
    argv = ["evaluate", "--model-dir", str(out / "model"), "--data", str(data)]
    assert main([*argv, "--out", str(ev), "--params", str(params), "--quiet"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert 0 <= metrics["test"]["top1"] <= 1
