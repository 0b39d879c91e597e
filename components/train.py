"""Training: shards -> I3D -> a model directory, resumable to the exact same weights.

Every random choice of an epoch (sample order, temporal jitter, crop, flip) is drawn from a
generator seeded by (seed, epoch[, sample]), and the torch RNG (dropout) is saved with each
checkpoint, so a run killed after any epoch and resumed ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from components.convert import iter_samples, read_manifest
from model.checkpoint import load_weights, read_state_dict
from model.config import strict_from_dict
from model.i3d import I3DConfig, InceptionI3d
from model.package import write_model_dir
from model.video import PreprocessConfig, clip_from_frames

STATE = "state.pt"  # resumable training state
MODEL_DIR = "model"  # the trained model, in the serving format
METRICS = "metrics.json"  # last epoch, for `dvc metrics`
HISTORY = "history.json"  # one row per epoch, for `dvc plots`


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 8
    optimizer: str = "adamw"  # "adam" is the WLASL recipe
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    hflip: bool = False  # handedness can carry meaning: off unless asked for
    color_jitter: float = 0.0  # per-clip brightness / contrast / per-channel gain, +- this
    idle_fraction: float = 0.0  # idle clips per epoch, as a fraction of the sign clips
    freeze_backbone: bool = False
    init: str = ""  # published I3D checkpoint to start from; "" = from scratch
    seed: int = 0
    num_workers: int = 0
    cache: bool = True  # keep decoded clips in memory across epochs (small datasets)
    device: str = "auto"

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return strict_from_dict(cls, d, "train params")


class ShardClips(IterableDataset):
    """Clips of one split streamed from shards; augmentation seeded per (seed, epoch, sample)."""

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
        idle_fraction: float = 0.0,
    ):
        self.shards, self.split, self.pre = Path(shards), split, pre
        self.train, self.seed, self.hflip, self.cache = train, seed, hflip, cache
        self.color_jitter, self.idle_fraction = color_jitter, idle_fraction
        self.epoch = 0
        self._cache: list[tuple[dict, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples(self) -> list[tuple[dict, np.ndarray]] | Iterator[tuple[dict, np.ndarray]]:
        if not self.cache:
            return iter_samples(self.shards, self.split)
        if self._cache is None:
            self._cache = list(iter_samples(self.shards, self.split))
        return self._cache

    def epoch_indices(self, samples: list) -> np.ndarray:
        """Every sign clip, plus idle clips up to idle_fraction of them (a fresh draw per epoch)."""
        signs = [i for i, (meta, _) in enumerate(samples) if not meta.get("idle")]
        idle = [i for i, (meta, _) in enumerate(samples) if meta.get("idle")]
        k = idle_per_epoch(len(signs), len(idle), self.idle_fraction)
        if not self.train:
            return np.array(signs + idle[:k], dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = rng.choice(np.array(idle, dtype=np.int64), size=k, replace=False) if k else []
        return rng.permutation(np.concatenate([signs, chosen]).astype(np.int64))

    def __iter__(self):
        samples = list(self._samples())
        info = torch.utils.data.get_worker_info()
        order = self.epoch_indices(samples)
        if info is not None:
            order = order[info.id :: info.num_workers]
        for i in order:
            meta, frames = samples[i]
            rng = np.random.default_rng([self.seed, self.epoch, int(i)]) if self.train else None
            x = clip_from_frames(frames, self.pre, rng=rng)  # bbox crop already done in convert
            if self.train and self.hflip and rng.random() < 0.5:
                x = x.flip(-1)
            if self.train and self.color_jitter > 0:
                x = color_jitter(x, rng, self.color_jitter, self.pre.value_range)
            yield x, int(meta["label"])


def idle_per_epoch(signs: int, idle: int, fraction: float) -> int:
    """How many idle clips an epoch draws (the scheduler's step count depends on it too)."""
    return min(idle, round(fraction * signs))


def clip_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy on sign clips; idle clips (label -1) are pushed to a uniform distribution,
    so "no sign here" reads as low confidence and sentence mode can threshold it away."""
    logits = logits.float()
    sign = y >= 0
    total = logits.new_zeros(())
    if sign.any():
        total = total + F.cross_entropy(
            logits[sign], y[sign], label_smoothing=label_smoothing, reduction="sum"
        )
    if (~sign).any():
        total = total - logits[~sign].log_softmax(dim=1).mean(dim=1).sum()
    return total / len(y)


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


def _optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam or adamw, got {cfg.optimizer!r}")
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
def precise_bn(model: torch.nn.Module, loader, device, max_clips: int = 256) -> None:
    """Recompute BatchNorm statistics as exact averages over training clips.

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
    seen = 0
    for x, _ in loader:
        model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
        seen += len(x)
        if seen >= max_clips:
            break
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def _validate(model, loader, device, autocast) -> dict:
    model.eval()
    n = top1 = top5 = 0
    idle_conf = []
    for x, y in loader:
        with autocast:
            logits = InceptionI3d.clip_logits(
                model(x.to(device).contiguous(memory_format=torch.channels_last_3d))
            ).float()
        sign = y >= 0
        idle_conf += logits[~sign].softmax(dim=1).amax(dim=1).tolist()
        logits, y = logits[sign], y[sign]
        k = min(5, logits.shape[1])
        hits = logits.topk(k).indices.cpu() == y[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(1).sum())
        n += len(y)
    out = {"val_top1": top1 / n, "val_top5": top5 / n} if n else {}
    if idle_conf:  # how sure the model is of *some* sign on rest clips: should fall
        out["val_idle_conf"] = round(float(np.mean(idle_conf)), 5)
    return out


def train(
    shards: Path,
    out: Path,
    pre: PreprocessConfig,
    cfg: TrainConfig,
    *,
    width: float = 1.0,
    dropout: float = 0.5,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train on `shards`' train split, validate on val each epoch; returns the final metrics."""
    shards, out = Path(shards), Path(out)
    manifest = read_manifest(shards)
    labels = manifest["labels"]
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    arch = I3DConfig(num_classes=len(labels), width=width, dropout=dropout)
    model = build_model(cfg, arch).to(device, memory_format=torch.channels_last_3d)
    train_set = ShardClips(
        shards,
        "train",
        pre,
        train=True,
        seed=cfg.seed,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        cache=cfg.cache,
        idle_fraction=cfg.idle_fraction,
    )
    val_set = ShardClips(
        shards, "val", pre, train=False, cache=cfg.cache, idle_fraction=cfg.idle_fraction
    )
    bn_set = ShardClips(  # statistics of what inference sees: signs and rest
        shards, "train", pre, train=False, cache=cfg.cache, idle_fraction=cfg.idle_fraction
    )
    n_train = manifest["splits"].get("train", {}).get("samples", 0)
    if n_train == 0:
        raise ValueError(f"{shards}: the train split has no samples")
    n_idle = idle_per_epoch(n_train, manifest["splits"]["train"].get("idle", 0), cfg.idle_fraction)
    steps = math.ceil((n_train + n_idle) / cfg.batch_size)
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

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        model.train()
        if cfg.freeze_backbone:  # frozen BatchNorm statistics too, not just weights
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.eval()
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for x, y in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
            y = y.to(device)
            with autocast:
                logits = InceptionI3d.clip_logits(model(x))
            loss = clip_loss(logits, y, cfg.label_smoothing)
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
            **(_validate(model, val_loader, device, autocast) if has_val else {}),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        print(json.dumps(row))
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "rng": _rng_state(),
                "train_config": asdict(cfg),
                "arch": arch.to_dict(),
            },
            state_path,
        )

    final = history[-1] if history else {}
    write_model_dir(
        out / MODEL_DIR, model.cpu(), pre, labels, extras={"train_config.json": asdict(cfg)}
    )
    (out / METRICS).write_text(json.dumps(final, indent=2) + "\n")
    (out / HISTORY).write_text(json.dumps(history, indent=2) + "\n")
    return final
