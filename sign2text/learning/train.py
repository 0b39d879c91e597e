"""Training: shards -> I3D -> a model directory, resumable to the exact same weights.

Every random choice of an epoch (sample order, temporal jitter, crop, flip) is drawn from a
generator seeded by (seed, epoch[, sample]), and the torch RNG (dropout) is saved with each
checkpoint, so a run killed after any epoch and resumed ends where an uninterrupted run ends.

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
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from model.checkpoint import load_weights, read_state_dict
from model.i3d import I3DConfig, InceptionI3d
from model.package import write_model_dir
from model.storage import write_atomic
from model.video import PreprocessConfig, clip_from_frames
from sign2text.data.convert import iter_samples, read_manifest
from sign2text.learning.context import ContextWindows, rebuild_videos
from sign2text.learning.curves import write_curves
from sign2text.params import TrainConfig

STATE = "state.pt"  # resumable training state
MODEL_DIR = "model"  # the trained model, in the serving format
METRICS = "metrics.json"  # last epoch, for `dvc metrics`
HISTORY = "history.json"  # one row per epoch, for `dvc plots`


class ShardClips(IterableDataset):
    """Clips of one split streamed from shards; augmentation seeded per (seed, epoch, sample).

    Yields (clip, label, is_context): the trimmed sign clips, plus -- with `context_fraction` and
    `set_epoch(epoch, context=True)` -- that many context windows per sign clip, labelled with
    the sign under their centre frame or `no_sign`."""

    def __init__(
        self,
        shards: Path,
        split: str,
        pre: PreprocessConfig,
        *,
        train: bool,
        seed: int = 0,
        hflip: bool = False,
        color_jitter: float = 0.0,
        cache: bool = False,
        context_fraction: float = 0.0,
        context_window: int = 30,
        no_sign: int = -1,
        max_items: int | None = None,
        decoded_by: ShardClips | None = None,
    ):
        self.shards, self.split, self.pre = Path(shards), split, pre
        self.train, self.seed, self.hflip, self.cache = train, seed, hflip, cache
        self.color_jitter = color_jitter
        self.context_fraction, self.context_window = context_fraction, context_window
        self.no_sign, self.max_items = no_sign, max_items
        self.epoch, self.context = 0, context_fraction > 0
        self._cache: list[tuple[dict, np.ndarray]] | None = None
        self._context: ContextWindows | None = None
        # Another view of the same split (e.g. BatchNorm's beside training's) decodes it once.
        self._decoded_by = decoded_by if cache and decoded_by is not None else None
        if self._decoded_by is not None and (
            (decoded_by.shards, decoded_by.split, decoded_by.pre, decoded_by.context_window,
             decoded_by.no_sign) != (self.shards, split, pre, context_window, no_sign)
        ):  # fmt: skip
            raise ValueError("decoded_by must read the same split with the same preprocessing")

    def set_epoch(self, epoch: int, context: bool | None = None) -> None:
        self.epoch = epoch
        if context is not None:
            self.context = context and self.context_fraction > 0

    def _samples(self) -> list[tuple[dict, np.ndarray]] | Iterator[tuple[dict, np.ndarray]]:
        if not self.cache:
            return iter_samples(self.shards, self.split)
        if self._decoded_by is not None:
            return self._decoded_by._samples()
        if self._cache is None:
            self._cache = list(iter_samples(self.shards, self.split))
        return self._cache

    def _windows(self, samples: list[tuple[dict, np.ndarray]]) -> ContextWindows:
        """The whole videos context windows are cut from: rebuilt each epoch, or once with
        `cache` (the samples they are rebuilt from are cached then too)."""
        if self._decoded_by is not None:
            return self._decoded_by._windows(samples)
        if self._context is None or not self.cache:
            windows = ContextWindows(rebuild_videos(samples), self.context_window, self.no_sign)
            if not self.cache:
                return windows
            self._context = windows
        return self._context

    def _key(self) -> list[int]:
        # Evaluation sees the same windows every epoch; training draws fresh ones.
        return [self.seed, 1, self.epoch] if self.train else [self.seed, 0, 0]

    def epoch_items(self, signs: int) -> list[tuple[bool, int]]:
        """(is_context, index): every sign clip and, in a context epoch, context windows around
        randomly drawn videos (`context_per_epoch` of them). Shuffled when training; evaluation
        interleaves the two evenly in a fixed order. At most `max_items`: the first ones when
        shuffled, evenly spread ones otherwise (shards run in metadata order, not mixed)."""
        k = context_per_epoch(signs, self.context_fraction) if self.context else 0
        rng = np.random.default_rng(self._key())
        anchors = rng.integers(0, signs, size=k).tolist() if k else []
        items = [(False, i) for i in range(signs)] + [(True, a) for a in anchors]
        cap = len(items) if self.max_items is None else min(self.max_items, len(items))
        if self.train:
            return [items[i] for i in rng.permutation(len(items))[:cap]]
        place = [(i + 0.5) / signs for i in range(signs)] + [(j + 0.5) / k for j in range(k)]
        order = np.argsort(place, kind="stable")
        return [items[order[i]] for i in np.linspace(0, len(items) - 1, cap).round().astype(int)]

    def __iter__(self):
        samples = list(self._samples())
        signs = [(meta, f) for meta, f in samples if not meta.get("idle")]
        items = list(enumerate(self.epoch_items(len(signs))))  # position seeds the draw
        windows = self._windows(samples) if any(ctx for _, (ctx, _) in items) else None
        info = torch.utils.data.get_worker_info()
        if info is not None:
            items = items[info.id :: info.num_workers]
        for n, (is_context, i) in items:
            rng = np.random.default_rng([*self._key(), n, i])
            if is_context:
                frames, label = windows.draw(i, rng)
            else:
                frames, label = signs[i][1], int(signs[i][0]["label"])
            if not self.train:
                rng = None
            x = clip_from_frames(frames, self.pre, rng=rng)  # bbox crop already done in convert
            if self.train and self.hflip and rng.random() < 0.5:
                x = x.flip(-1)
            if self.train and self.color_jitter > 0:
                x = color_jitter(x, rng, self.color_jitter, self.pre.value_range)
            yield x, label, is_context


def context_per_epoch(signs: int, fraction: float) -> int:
    """How many context windows a context epoch draws (the LR schedule counts them too)."""
    return round(fraction * signs)


def color_jitter(
    x: torch.Tensor, rng: np.random.Generator, strength: float, value_range: tuple[float, float]
) -> torch.Tensor:
    """Lighting and colour changes, so signers' clothes and backgrounds stop being cues."""
    lo, hi = value_range
    mid = (lo + hi) / 2
    contrast = 1 + rng.uniform(-strength, strength)
    gain = torch.from_numpy(1 + rng.uniform(-strength, strength, (x.shape[0], 1, 1, 1)))
    shift = rng.uniform(-strength, strength) * (hi - lo) / 2
    return ((x - mid) * contrast * gain.float() + mid + shift).clamp_(lo, hi)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
def precise_bn(model: torch.nn.Module, loader, device) -> None:
    """Recompute BatchNorm statistics as exact averages over the loader's training clips.

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
    for x, *_ in loader:
        model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def _validate(model, loader, device, autocast, glosses: int) -> dict:
    """Top-1/5 over the glosses on sign clips; accuracy (no-sign included) on context windows."""
    model.eval()
    n = top1 = top5 = 0
    context_hits = []
    for x, y, is_context in loader:
        with autocast:
            logits = InceptionI3d.clip_logits(
                model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
            ).float()
        logits = logits.cpu()
        context_hits += (logits[is_context].argmax(dim=1) == y[is_context]).tolist()
        logits, y = logits[~is_context, :glosses], y[~is_context]
        k = min(5, glosses)
        hits = logits.topk(k).indices == y[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(1).sum())
        n += len(y)
    out = {"val_top1": top1 / n, "val_top5": top5 / n} if n else {}
    if context_hits:  # the sign (or no sign) under each window's centre frame
        out["val_context_acc"] = round(float(np.mean(context_hits)), 5)
    return out


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

    `arch` is the network (params.yaml `model:`); its class count comes from the shards."""
    shards, out = Path(shards), Path(out)
    manifest = read_manifest(shards)
    labels = manifest["labels"]
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    no_sign = len(labels)  # the extra output of a context-trained model
    arch = replace(arch, num_classes=len(labels) + cfg.context)
    model = build_model(cfg, arch).to(device, memory_format=torch.channels_last_3d)
    context = {
        "context_fraction": cfg.context_fraction,
        "context_window": cfg.context_window,
        "no_sign": no_sign,
    }
    train_set = ShardClips(
        shards,
        "train",
        pre,
        train=True,
        seed=cfg.seed,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        cache=cfg.cache,
        **context,
    )
    val_set = ShardClips(shards, "val", pre, train=False, cache=cfg.cache, **context)
    bn_set = ShardClips(  # statistics of what inference sees: signs and context windows
        shards, "train", pre, train=False, cache=cfg.cache, max_items=cfg.bn_clips,
        decoded_by=train_set, **context,
    )  # fmt: skip
    n_train = manifest["splits"].get("train", {}).get("samples", 0)
    if n_train == 0:
        raise ValueError(f"{shards}: the train split has no samples")
    if cfg.context and not manifest["splits"]["train"].get("idle"):
        print(f"warning: {shards} has no idle clips (convert.idle_clips): context windows will "
              "see no rest before or after the signs")  # fmt: skip
    extra = context_per_epoch(n_train, cfg.context_fraction)
    steps = [
        math.ceil((n_train + extra * cfg.context_in(e)) / cfg.batch_size)
        for e in range(cfg.total_epochs)
    ]
    opt, sched = _optimizer(cfg, model, steps)
    has_val = manifest["splits"].get("val", {}).get("samples", 0) > 0
    loader = DataLoader(train_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    bn_loader = DataLoader(bn_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    # bf16 autocast on GPU only: CPU bf16 conv3d is slower than fp32 on most CPUs.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    start, history = 0, []
    state_path = out / STATE
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["train_config"] != asdict(cfg) or state["arch"] != arch.to_dict():
            raise ValueError(f"{state_path} was written with other params; remove it to restart")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, history = state["epoch"], state["history"]
        print(f"resumed from {state_path} after epoch {start}")

    for epoch in range(start, cfg.total_epochs):
        t0 = time.perf_counter()
        train_set.set_epoch(epoch, context=cfg.context_in(epoch))
        val_set.set_epoch(epoch, context=cfg.context_in(epoch))
        bn_set.set_epoch(epoch, context=cfg.context_in(epoch))
        model.train()
        if cfg.freeze_backbone:  # frozen BatchNorm statistics too, not just weights
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.eval()
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            total=steps[epoch],
            desc=f"epoch {epoch + 1}/{cfg.total_epochs}",
            disable=not progress,
            leave=False,
        )
        for x, y, _ in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
            y = y.to(device)
            with autocast:
                logits = InceptionI3d.clip_logits(model(x))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.3f}")
        if not cfg.freeze_backbone:  # frozen BatchNorm keeps the published statistics
            precise_bn(model, bn_loader, device)
        row = {
            "epoch": epoch + 1,
            "loss": round(total / max(count, 1), 5),
            "lr": sched.get_last_lr()[0],
            **(_validate(model, val_loader, device, autocast, len(labels)) if has_val else {}),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        print(json.dumps(row))
        snapshot = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "rng": _rng_state(),
            "train_config": asdict(cfg),
            "arch": arch.to_dict(),
        }
        # Durable: a resumed run starts from state.pt, so a crash must leave a whole one.
        write_atomic(state_path, partial(torch.save, snapshot), durable=True)
        write_curves(out / HISTORY, out / METRICS, history)  # live curves, after the checkpoint

    final = history[-1] if history else {}
    write_model_dir(
        out / MODEL_DIR,
        model.cpu(),
        pre,
        labels,
        extras={"train_config.json": asdict(cfg)},
        sentence_window=cfg.context_window if cfg.context else None,
    )
    write_curves(out / HISTORY, out / METRICS, history)  # also when resumed after the last epoch
    return final
