"""Training: shards -> I3D -> a model directory, resumable to the exact same weights.

Every random choice of an epoch is seeded by (seed, epoch, ...) (learning/clips.py), and each
process's torch RNG (dropout) is saved with each checkpoint, so a run killed after any epoch and
resumed ends where an uninterrupted run ends.

One process, or several under torchrun (learning/distributed.py): DistributedDataParallel, each
rank reading its own shards (its own videos of them when there are fewer shards than ranks:
clips.rank_reads), `batch_size` the global batch split among the ranks, BatchNorm
statistics re-estimated on every rank's clips and averaged, and rank 0 writing every file.

With `context_fraction` > 0 the model gets one more output, "no sign", and after the `epochs`
on trimmed sign clips come `context_epochs` more that add context windows (learning/context.py),
with a learning rate schedule of their own from `context_lr`: first the signs are learnt (from
scratch, context windows from the start keep the network from getting off the ground), then
where they start and stop.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from components.conversion.convert import read_manifest
from components.params import TrainConfig
from components.training import distributed
from components.training.clips import ShardClips, loader, rank_items, steps_per_epoch
from components.training.curves import write_curves
from components.training.distributed import Group
from components.training.s3stream import S3Shards
from components.training.stream import StreamClips
from model.files import write_atomic
from model.network.bundle import write_model_dir
from model.network.checkpoint import load_weights, read_state_dict
from model.network.i3d import I3DConfig, InceptionI3d
from model.video.clip import PreprocessConfig

STATE = "state.pt"  # resumable training state
MODEL_DIR = "model"  # the trained model, in the serving format
METRICS = "metrics.json"  # last epoch, for `dvc metrics`
HISTORY = "history.json"  # one row per epoch, for `dvc plots`


def build_model(cfg: TrainConfig, arch: I3DConfig) -> InceptionI3d:
    torch.manual_seed(cfg.seed)
    model = InceptionI3d(arch)
    if cfg.init:
        if arch.width != 1.0:
            raise ValueError("init from a published checkpoint needs model.width 1.0")
        print(load_weights(model, read_state_dict(cfg.init), replace_head=True).describe())
    if cfg.freeze_backbone:
        for p in model.backbone_parameters():
            p.requires_grad_(False)
    return model


def _optimizer(cfg: TrainConfig, model: torch.nn.Module, steps: list[int]):
    """The optimizer and its schedule; `steps` per epoch (context epochs have more).

    Each phase (sign clips, then context epochs) has its own linear warm-up and cosine to zero:
    the first from `lr`, the second from `context_lr`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam or adamw, got {cfg.optimizer!r}")

    def phase(first: int, epochs: list[int], warmup_epochs: int, scale: float) -> tuple:
        n = max(1, sum(epochs))
        return first, n, min(sum(epochs[:warmup_epochs]), n - 1), scale

    phases = [phase(0, steps[: cfg.epochs], cfg.warmup_epochs, 1.0)]
    if len(steps) > cfg.epochs:
        ctx = phase(sum(steps[: cfg.epochs]), steps[cfg.epochs :], 1, cfg.context_lr / cfg.lr)
        phases.append(ctx)

    def lr_at(step: int) -> float:  # per phase: linear warm-up, then cosine to zero
        first, n, warmup, scale = next(p for p in reversed(phases) if step >= p[0])
        k = step - first
        if k < warmup:
            return scale * (k + 1) / (warmup + 1)
        return scale * 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warmup) / max(1, n - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def precise_bn(model: torch.nn.Module, batches, device) -> int:
    """Recompute BatchNorm statistics as exact averages over `batches` of training clips;
    returns the number of batches they average over.

    I3D's BatchNorm momentum is 0.01 (kept: it is part of the published model), so after a
    short run from scratch the running statistics still mostly describe the initial network
    and eval-mode predictions collapse. Re-estimating them ("precise BN") fixes eval without
    touching the weights or the published hyperparameters.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    n = 0
    for x, *_ in batches:
        model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
        n += 1
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return n


@torch.no_grad()
def _validate(model, batches, device, autocast, glosses: int, group: Group) -> dict:
    """Top-1/5 over the glosses on sign clips; accuracy (no-sign included) on context windows;
    summed over the ranks (each scored its share of the split)."""
    model.eval()
    n = top1 = top5 = windows = window_hits = 0
    for x, y, is_context in batches:
        with autocast:
            logits = InceptionI3d.clip_logits(
                model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
            ).float()
        logits = logits.cpu()
        window_hits += int((logits[is_context].argmax(dim=1) == y[is_context]).sum())
        windows += int(is_context.sum())
        logits, y = logits[~is_context, :glosses], y[~is_context]
        hits = logits.topk(min(5, glosses)).indices == y[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(1).sum())
        n += len(y)
    n, top1, top5, windows, window_hits = group.all_sum([n, top1, top5, windows, window_hits])
    out = {"val_top1": top1 / n, "val_top5": top5 / n} if n else {}
    if windows:  # the sign (or no sign) under each window's centre frame
        out["val_context_acc"] = round(window_hits / windows, 5)
    return out


def _datasets(shards: Path, pre: PreprocessConfig, cfg: TrainConfig, no_sign: int, group: Group):
    """(train, val, BatchNorm's) clips: cached in memory, or streamed (`cache: false`)."""
    part = (group.rank, group.world)
    context = {
        "context_fraction": cfg.context_fraction,
        "context_window": cfg.context_window,
        "no_sign": no_sign,
        "part": part,
    }
    augment = {"seed": cfg.seed, "hflip": cfg.hflip, "color_jitter": cfg.color_jitter}
    if cfg.cache:
        if isinstance(shards, S3Shards):
            raise ValueError(f"{shards}: the cached loader reads local shards (train.cache)")
        train_set = ShardClips(shards, "train", pre, train=True, cache=True, **augment, **context)
        val_set = ShardClips(shards, "val", pre, train=False, cache=True, **context)
        bn_set = ShardClips(  # statistics of what inference sees: signs and context windows
            shards,
            "train",
            pre,
            train=False,
            cache=True,
            by_shard=True,
            decoded_by=train_set,
            max_items=math.ceil(cfg.bn_clips / group.world),
            **context,
        )
        return train_set, val_set, bn_set, cfg.num_workers
    buffers = {"shuffle_buffer": cfg.shuffle_buffer, "context_buffer": cfg.context_buffer}
    train_set = StreamClips(shards, "train", pre, train=True, **augment, **context, **buffers)
    val_set = StreamClips(shards, "val", pre, train=False, **context, **buffers)
    bn_set = StreamClips(
        shards, "train", pre, train=False, max_items=cfg.bn_clips, **context, **buffers
    )
    return train_set, val_set, bn_set, train_set.usable_workers(cfg.num_workers)


def _resume(state_path: Path, device, cfg: TrainConfig, arch: I3DConfig, group: Group):
    state = torch.load(state_path, map_location=device, weights_only=True)
    if state["train_config"] != asdict(cfg) or state["arch"] != arch.to_dict():
        raise ValueError(f"{state_path} was written with other params; remove it to restart")
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) != group.world and group.main:
        print(
            f"warning: {state_path} was written by {len(ranks)} processes, resumed by "
            f"{group.world}: the run continues, but not as it would have"
        )
    _set_rng_state(ranks[group.rank % len(ranks)])
    return state


def train(
    shards: Path,
    out: Path,
    pre: PreprocessConfig,
    cfg: TrainConfig,
    arch: I3DConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train on `shards`' train split, validate on val each epoch; returns the final metrics.

    `arch` is the network (params.yaml `model:`); its class count comes from the shards. Under
    torchrun every rank calls this; rank 0 writes the files."""
    group, device = distributed.start(cfg.device)
    try:
        shards = shards if isinstance(shards, S3Shards) else Path(shards)
        return _train(shards, Path(out), pre, cfg, arch, group, device, resume, progress)
    finally:
        distributed.stop()


def _train(shards, out, pre, cfg, arch, group: Group, device, resume: bool, progress: bool):
    manifest = shards.manifest() if isinstance(shards, S3Shards) else read_manifest(shards)
    labels = manifest["labels"]
    n_train = manifest["splits"].get("train", {}).get("samples", 0)
    if n_train == 0:
        raise ValueError(f"{shards}: the train split has no samples")
    if cfg.batch_size % group.world:
        raise ValueError(
            f"train.batch_size {cfg.batch_size} (the global batch) does not divide "
            f"among {group.world} processes"
        )
    batch = cfg.batch_size // group.world
    if group.main:
        out.mkdir(parents=True, exist_ok=True)
    no_sign = len(labels)  # the extra output of a context-trained model
    arch = replace(arch, num_classes=len(labels) + cfg.context)
    model = build_model(cfg, arch).to(device, memory_format=torch.channels_last_3d)
    train_set, val_set, bn_set, workers = _datasets(shards, pre, cfg, no_sign, group)
    if group.world > 1:
        reads = train_set.shard_reads()
        names = " ".join(p.name for p, _ in reads)
        if any(first is not None for _, first in reads):  # fewer shards than ranks
            names += f" (shared: the split's videos k with k mod {group.world} = {group.rank})"
        # One write, line and newline together: the ranks share stdout, and print's two writes
        # interleave between processes.
        sys.stdout.write(f"rank {group.rank}/{group.world}: train shards {names}\n")
        sys.stdout.flush()
    if cfg.context and not manifest["splits"]["train"].get("idle") and group.main:
        print(
            f"warning: {shards} has no idle clips (convert.idle_clips): context windows will "
            "see no rest before or after the signs"
        )
    steps = [  # every rank's optimizer steps, epoch by epoch (the LR schedule counts them)
        steps_per_epoch(
            rank_items(n_train, cfg.context_fraction * cfg.context_in(e), group.world),
            batch,
            workers,
        )
        for e in range(cfg.total_epochs)
    ]
    opt, sched = _optimizer(cfg, model, steps)
    has_val = manifest["splits"].get("val", {}).get("samples", 0) > 0
    cuda = device.type == "cuda"
    train_loader = loader(train_set, batch, workers, pin=cuda, keep=True)
    val_loader = loader(val_set, batch, workers, pin=cuda)
    bn_loader = loader(bn_set, batch, workers, pin=cuda)
    # bf16 autocast on GPU only: CPU bf16 conv3d is slower than fp32 on most CPUs.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    net = model
    if group.world > 1:  # BatchNorm buffers are averaged by precise BN, not synced each step
        ids = [device.index] if cuda else None
        net = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        # channels_last 1x1x1 kernels: strides differ only on size-1 dims, the same layout
        warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")

    start, history = 0, []
    state_path = out / STATE
    if resume and state_path.is_file():
        state = _resume(state_path, device, cfg, arch, group)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
        if group.main:
            print(f"resumed from {state_path} after epoch {start}")

    for epoch in range(start, cfg.total_epochs):
        t0 = time.perf_counter()
        for ds in (train_set, val_set, bn_set):
            ds.set_epoch(epoch, context=cfg.context_in(epoch))
        model.train()
        if cfg.freeze_backbone:  # frozen BatchNorm statistics too, not just weights
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.eval()
        total, count, t_loop = 0.0, 0, time.perf_counter()
        bar = tqdm(
            train_loader,
            total=steps[epoch],
            desc=f"epoch {epoch + 1}/{cfg.total_epochs}",
            disable=not (progress and group.main),
            leave=False,
        )
        for x, y, _ in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
            y = y.to(device, non_blocking=True)
            with autocast:
                logits = InceptionI3d.clip_logits(net(x))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.3f}")
        t_loop = time.perf_counter() - t_loop
        if not cfg.freeze_backbone:  # frozen BatchNorm keeps the published statistics
            distributed.average_batchnorm(model, group, precise_bn(model, bn_loader, device))
        seen = group.gather(count)
        all_loss, all_count = group.all_sum([total, count])
        row = {
            "epoch": epoch + 1,
            "loss": round(all_loss / max(all_count, 1), 5),
            "lr": sched.get_last_lr()[0],
            **(
                _validate(model, val_loader, device, autocast, len(labels), group)
                if has_val
                else {}
            ),
            "world_size": group.world,
            "samples_per_rank": seen,  # training clips each rank saw this epoch
            "train_samples_per_s": round(sum(seen) / max(t_loop, 1e-9), 2),  # all ranks together
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        rngs = group.gather(_rng_state())
        if group.main:
            print(json.dumps(row), flush=True)
            snapshot = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "rng": rngs[0],
                **({"rng_ranks": rngs} if group.world > 1 else {}),
                "train_config": asdict(cfg),
                "arch": arch.to_dict(),
            }
            # Durable: a resumed run starts from state.pt, so a crash must leave a whole one.
            write_atomic(state_path, partial(torch.save, snapshot), durable=True)
            write_curves(out / HISTORY, out / METRICS, history)  # live curves, after it

    final = history[-1] if history else {}
    if group.main:
        write_model_dir(
            out / MODEL_DIR,
            model.cpu(),
            pre,
            labels,
            extras={"train_config.json": asdict(cfg)},
            sentence_window=cfg.context_window if cfg.context else None,
        )
        write_curves(out / HISTORY, out / METRICS, history)  # also when resumed after the end
    group.barrier()  # the others return once the model is written
    return final
