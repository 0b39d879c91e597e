"""`train --shards s3://...` with the streaming loader (`train.cache: false`) reads the shards from
object storage as it trains (components/training/s3stream.py), against a real S3 server on
127.0.0.1: the same model as from the same shards on local disk, nothing fetched ahead of the
first step and no shard on disk, a corrupted shard object failing by name, and a connection
dropped mid-shard resumed with a Range request (each sample read once)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from components.conversion.convert import convert, read_shard, split_shards
from components.data.synth import synthesize
from components.infra.objstore import publish_dir
from model.video.clip import PreprocessConfig
from sign2text.cli import main
from tests.s3 import CountingProxy, s3_env_fixture, s3_server_fixture  # noqa: F401
from tests.test_train import TINY_MODEL, tiny_params


@pytest.fixture(scope="module", name="shard_dir")
def shard_dir_fixture(tmp_path_factory) -> Path:
    """Many small shards (two signs each), so a full download and a streamed read differ."""
    root = tmp_path_factory.mktemp("s3shards")
    synthesize(root / "data", classes=4, per_class=6, signers=4, seed=3, progress=False)
    pre = PreprocessConfig.from_dict(
        {k: v for k, v in TINY_MODEL.items() if k not in ("width", "dropout")}
    )
    convert(root / "data", root / "shards", pre, shard_size=2, progress=False, idle_clips=True)
    return root / "shards"


def _publish(s3_env, shard_dir: Path) -> str:
    uri = f"s3://{s3_env.make_bucket()}/datasets/shards/v1/"
    publish_dir(shard_dir, uri)
    return uri


def _train(shards: str, out: Path, params: Path) -> int:
    argv = ["train", "--shards", shards, "--out", str(out), "--params", str(params), "--quiet"]
    return main(argv)


def _streamed(tmp_path: Path, **train) -> Path:
    recipe = {"epochs": 1, "context_epochs": 0, "context_fraction": 0.0, "cache": False}
    recipe = {**recipe, "shuffle_buffer": 2, **train}
    return tiny_params(tmp_path, **recipe)


def test_streamed_from_s3_trains_the_model_local_shards_train(
    s3_env, shard_dir, tmp_path, monkeypatch
):
    uri = _publish(s3_env, shard_dir)
    params = _streamed(tmp_path, num_workers=1)  # a loader worker: its own S3 client
    assert _train(str(shard_dir), tmp_path / "local", params) == 0
    with CountingProxy(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert _train(uri, tmp_path / "s3", params) == 0
    # only what training reads: the train and val shards, never the test split's
    read = {g.rsplit("/", 1)[-1] for g in proxy.gets() if g.endswith(".tar")}
    assert {n.split("-")[0] for n in read} == {"train", "val"}, read
    a = torch.load(tmp_path / "local" / "model" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "s3" / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nothing_is_downloaded_ahead_of_the_first_step(s3_env, shard_dir, tmp_path, monkeypatch):
    import components.training.train as train_module

    uri = _publish(s3_env, shard_dir)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a download would land
    names = [p.name for p, _ in split_shards(shard_dir, "train")]
    assert len(names) >= 6
    seen: list[tuple[list[str], list[Path]]] = []
    make_optimizer = train_module._optimizer

    def spy(*args, **kwargs):
        opt, sched = make_optimizer(*args, **kwargs)

        def first_step(*_):
            if not seen:
                seen.append((proxy.gets(), list(scratch.rglob("*.tar"))))

        opt.register_step_pre_hook(first_step)
        return opt, sched

    monkeypatch.setattr(train_module, "_optimizer", spy)
    with CountingProxy(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert _train(uri, tmp_path / "out", _streamed(tmp_path, batch_size=2)) == 0
        after = proxy.gets()
    ((gets, on_disk),) = seen
    shards_read = {g.rsplit("/", 1)[-1] for g in gets if g.endswith(".tar")}
    # a batch of 2 from a shuffle buffer of 2 videos: two or three shards, of the split's many
    assert 1 <= len(shards_read) <= 3 < len(names), shards_read
    assert not on_disk, "a shard was written to disk"
    # ...and every train shard was read in the epoch, each once per pass
    assert {n for n in names if any(g.endswith(n) for g in after)} == set(names)


def test_a_corrupted_shard_object_fails_naming_it(s3_env, shard_dir, tmp_path, capsys):
    uri = _publish(s3_env, shard_dir)
    bucket = uri.split("/")[2]
    victim = split_shards(shard_dir, "train")[1][0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # in the tar's end padding: only the sha256 can tell
    s3_env.put_bytes(bucket, f"datasets/shards/v1/{victim.name}", bytes(data))
    assert _train(uri, tmp_path / "out", _streamed(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{victim.name} is corrupted" in err and "sha256" in err, err
    assert f"s3://{bucket}/datasets/shards/v1/{victim.name}" in err
    assert s3_env.secret_key not in err
    assert not (tmp_path / "out" / "model").exists()


def test_a_connection_dropped_mid_shard_resumes_where_it_stopped(s3_env, shard_dir, monkeypatch):
    from components.training.s3stream import S3Shards

    uri = _publish(s3_env, shard_dir)
    path = split_shards(shard_dir, "train")[0][0]
    cut = path.stat().st_size // 2
    with CountingProxy(s3_env.endpoint, cut={path.name: cut}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        shards = S3Shards(uri)
        (shard, _), *_ = shards.split("train")
        streamed = list(shards.read(shard))
    assert streamed == list(read_shard(path))  # every sample once, none cut short or repeated
    key = f"/datasets/shards/v1/{path.name}"
    assert [r for r in proxy.ranges if r[0].endswith(key)] == [
        (f"/{uri.split('/')[2]}{key}", f"bytes={cut}-")
    ]


@pytest.mark.slow
def test_under_torchrun_each_rank_streams_only_its_own_shards(s3_env, shard_dir, tmp_path):
    """Two ranks streaming from S3 (real DDP under torchrun): in the training pass each train
    shard is read by one rank only (told apart by the rank in the client's User-Agent), every
    train shard by some rank, and both ranks take part; the run writes a model. The pass is the
    first read of each shard: the evaluation-mode reads that follow every rank's last step
    (batch-norm statistics, validation) take every world-th video in order, so there each rank
    reads the shards those videos are in."""
    import os
    import re
    import subprocess
    import sys

    from components.training.launch import local_torchrun, train_argv

    uri = _publish(s3_env, shard_dir)
    params = _streamed(tmp_path, batch_size=4)
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cli = str(Path(sys.executable).with_name("sign2text"))
    out = tmp_path / "out"
    with CountingProxy(s3_env.endpoint) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint
        r = subprocess.run(
            local_torchrun(2, train_argv(uri, out, params), cli),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model" / "model.pt").is_file()
    names = {p.name for p, _ in split_shards(shard_dir, "train")}
    gets = [
        (request.rsplit("/", 1)[-1], re.findall(r"sign2text-train/rank-(\d+)", agent))
        for request, agent in proxy.agents
        if request.startswith("GET ") and request.rsplit("/", 1)[-1].startswith("train-")
    ]
    readers: dict[str, set[str]] = {}
    for name, (rank,) in gets[: len(names)]:  # the training pass: one epoch, one read each
        readers.setdefault(name, set()).add(rank)
    assert set(readers) == names, readers
    assert all(len(ranks) == 1 for ranks in readers.values()), readers
    assert set().union(*readers.values()) == {"0", "1"}
