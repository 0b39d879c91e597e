"""Evaluation step: score a model directory on dataset splits, then gate its promotion.

Clips come from model.video.clip.load_clip with the model's own PreprocessConfig and rng=None, the
tensors serving builds, so the numbers describe the model as it will be deployed.

out/metrics.json            {split: {top1, top5, top10, per_class_mean, n, ...}, "overall": ...,
                             "skipped": [{video_id, split, reason}],
                             "sentence": {n, correct, words_right, word_error_rate, mean_iou}}
                            (sentence: when the model has a no-sign output and `sentences` > 0:
                             strings of 2-4 test videos of one signer through sentence mode)
out/confusion_<split>.csv   rows = true gloss, columns = predicted gloss, counts
out/confusion_<split>.png
out/predictions.csv         one row per evaluated video, for error analysis
out/gate.json               written by write_gate
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from components.data.dataset import Sample, load_samples, read_reversed_pairs
from components.infra.cpus import usable_cpus
from components.training.context import load_videos, score, sign_strings
from model.predict import Classifier
from model.runtimes.choice import stack
from model.sentence import transcribe
from model.video.clip import load_clip
from model.video.decode import VideoError

TOP_K = (1, 5, 10)
MAX_ANNOTATED = 30  # beyond this many classes, numbers in the cells are unreadable
MAX_TICKS = 100
EPS = 1e-9  # metrics are rounded to 4 decimals; keep float noise from flipping a gate


def _round(x) -> float | None:
    return None if x is None else round(float(x), 4)


def split_metrics(probs: np.ndarray, true: np.ndarray, partner: dict[int, int] | None) -> dict:
    """n x N probabilities + true model indices -> WLASL per-instance metrics (never NaN)."""
    n, n_classes = probs.shape
    pred = probs.argmax(axis=1)
    correct = pred == true
    out: dict = {"n": int(n)}
    # Stable sort: ties rank by class index, the same order argmax picks for top-1.
    ranked = np.argsort(-probs, axis=1, kind="stable")
    for k in TOP_K:
        hits = (ranked[:, : min(k, n_classes)] == true[:, None]).any(axis=1)
        out[f"top{k}"] = _round(hits.mean()) if n else None
    # Only classes present in this split count; an absent class has no accuracy, not zero.
    per_class = [correct[true == c].mean() for c in np.unique(true)]
    out["per_class_mean"] = _round(np.mean(per_class)) if per_class else None
    if partner is not None:
        in_pair = np.array([t in partner for t in true.tolist()], dtype=bool)
        m = int(in_pair.sum())
        out["reversed_pairs_n"] = m
        out["reversed_pairs"] = _round(correct[in_pair].mean()) if m else None
        out["pair_confusions"] = sum(
            int(pred[i] == partner[int(true[i])]) for i in np.flatnonzero(in_pair)
        )
    return out


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def write_confusion_csv(path: Path, cm: np.ndarray, labels: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *labels])
        w.writerows([g, *row] for g, row in zip(labels, cm.tolist(), strict=True))


def plot_confusion(path: Path, cm: np.ndarray, labels: Sequence[str], title: str) -> None:
    # A bare Figure on an Agg canvas: no pyplot global state, works headless in a pipeline pod.
    n = len(labels)
    size = min(4 + 0.4 * n, 20)
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="videos")
    ax.set(title=title, xlabel="predicted gloss", ylabel="true gloss")
    if n <= MAX_TICKS:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if n <= MAX_ANNOTATED:
        half = cm.max() / 2 if cm.size else 0
        for (i, j), v in np.ndenumerate(cm):
            if v:
                color = "white" if v > half else "black"
                ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _ahead(fn, items: Sequence, workers: int, depth: int):
    """fn(item) for each item, in order, computed by `workers` threads at most `depth` ahead
    (bounded: a test split of full-size clips would not fit in memory at once). OpenCV's
    decoding releases the GIL, so threads decode in parallel."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def evaluate(
    model_dir: Path,
    dataset: Path,
    out: Path,
    *,
    splits: Sequence[str] = ("val", "test"),
    samples: list[Sample] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: str = "auto",
    sentences: int = 0,
    decoders: int | None = None,
) -> dict:
    """Score model_dir on `splits` of dataset (or on `samples`, filtered to `splits`), and
    sentence mode on `sentences` strings of the last split's videos.

    On the GPU when there is one ("auto"); videos are decoded by `decoders` threads (default:
    one per core) a few batches ahead, so the network is not left waiting on one decoder."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset, out = Path(dataset), Path(out)
    splits = tuple(dict.fromkeys(splits))
    clf = Classifier(model_dir, device)
    cfg, labels = clf.info.preprocess, clf.labels
    # Map by gloss, never by Sample.label: the model's label order need not match the dataset's.
    index = {g: i for i, g in enumerate(labels)}
    if samples is None:
        samples = load_samples(dataset, splits)
    samples = [s for s in samples if s.split in splits]
    pairs = [(index[a], index[b]) for a, b in read_reversed_pairs(dataset) if {a, b} <= set(index)]
    partner = {a: b for p in pairs for a, b in (p, p[::-1])} if pairs else None

    rows: list[tuple[Sample, int, np.ndarray]] = []
    skipped: list[dict] = []
    batch: list[tuple[Sample, int, np.ndarray]] = []

    def flush() -> None:
        if batch:
            probs = clf.probabilities(stack([clip for _, _, clip in batch]))
            rows.extend((s, t, p) for (s, t, _), p in zip(batch, probs, strict=True))
            batch.clear()

    def read(s: Sample) -> np.ndarray | str:
        if s.gloss not in index:
            return f"gloss {s.gloss!r} is not one of the model's {len(labels)} classes"
        try:
            return load_clip(
                s.video_path(dataset),
                cfg,
                frame_start=s.frame_start,
                frame_end=s.frame_end,
                bbox=s.bbox if cfg.bbox_crop else None,
            )
        except VideoError as e:
            return str(e)

    workers = decoders or usable_cpus()
    clips = _ahead(read, samples, workers, depth=max(2 * workers, 2 * batch_size))
    bar = tqdm(
        zip(samples, clips, strict=True),
        total=len(samples),
        desc="evaluate",
        unit="video",
        disable=not progress,
    )
    for s, clip in bar:
        if isinstance(clip, str):
            skipped.append({"video_id": s.video_id, "split": s.split, "reason": clip})
            continue
        batch.append((s, index[s.gloss], clip))
        if len(batch) == batch_size:
            flush()
    flush()

    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    for name in (*splits, "overall"):
        group = [r for r in rows if name == "overall" or r[0].split == name]
        probs = np.stack([p for _, _, p in group]) if group else np.zeros((0, len(labels)))
        true = np.array([t for _, t, _ in group], dtype=np.int64)
        metrics[name] = split_metrics(probs, true, partner)
        metrics[name]["n_skipped"] = sum(name in ("overall", k["split"]) for k in skipped)
        if name != "overall":
            cm = confusion(true, probs.argmax(axis=1), len(labels))
            write_confusion_csv(out / f"confusion_{name}.csv", cm, labels)
            title = f"{name}: {len(group)} videos, top-1 {metrics[name]['top1']}"
            plot_confusion(out / f"confusion_{name}.png", cm, labels, title)
    metrics["skipped"] = skipped
    if sentences > 0 and clf.info.sentence_window is not None:
        evaluated = {s.video_id for s, _, _ in rows if s.split == splits[-1]}
        chosen = [s for s in samples if s.video_id in evaluated]
        metrics["sentence"] = sentence_metrics(clf, dataset, chosen, sentences, progress)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "split", "true_gloss", "predicted_gloss", "probability", "correct"])
        for s, t, p in rows:
            top = int(p.argmax())
            w.writerow([s.video_id, s.split, s.gloss, labels[top], f"{p[top]:.6f}", int(top == t)])
    return metrics


def sentence_metrics(
    clf: Classifier, dataset: Path, samples: Sequence[Sample], count: int, progress: bool = False
) -> dict:
    """Sentence mode on `count` strings of 2-4 of one signer's videos, scored against where each
    sign really is (its frame range in the metadata)."""
    strings = sign_strings(load_videos(dataset, samples, clf.labels), count)
    results = [
        score(transcribe(clf, frames), spans, clf.labels)
        for frames, spans in tqdm(strings, desc="sentences", disable=not progress)
    ]
    if not results:
        return {"n": 0}
    ious = [x for r in results for x in r["iou"]]
    return {
        "n": len(results),
        "correct": _round(np.mean([r["correct"] for r in results])),
        "words_right": _round(np.mean([r["words_right"] for r in results])),
        "word_error_rate": _round(
            sum(r["edit_distance"] for r in results) / sum(r["truth_words"] for r in results)
        ),
        "mean_iou": _round(np.mean(ious)) if ious else None,
    }


def sentence_summary(sentence: dict) -> str:
    """metrics.json's "sentence" entry as one line, for the CLI and the demo."""
    return (
        f"sentences ({sentence.get('n')} strings of 2-4 test signs): "
        f"correct={sentence.get('correct')} (words in order, every span IoU >= 0.5) "
        f"word-error-rate={sentence.get('word_error_rate')} mean-iou={sentence.get('mean_iou')}"
    )


def _test_top1(metrics: dict) -> float | None:
    top1 = (metrics.get("test") or {}).get("top1")
    return None if top1 is None else float(top1)


def gate(
    metrics: dict, *, min_top1: float, baseline: Path | None = None, tolerance: float = 0.0
) -> dict:
    """Promotion decision from candidate metrics, a threshold and optionally production's."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    base = None
    if baseline is not None:
        # Checked before anything else: a mistyped baseline path must not pass as "no baseline".
        baseline = Path(baseline)
        if not baseline.is_file():
            raise ValueError(f"baseline metrics {baseline} not found (pass None to skip it)")
        base = _test_top1(json.loads(baseline.read_text()))
        if base is None:
            raise ValueError(f"baseline metrics {baseline} have no test top1")
    top1 = _test_top1(metrics)
    reasons: list[str] = []
    checks: list[dict] = []
    if top1 is None:
        reasons.append("candidate metrics have no test top1 (no test video was evaluated)")
    else:
        ok = top1 >= min_top1 - EPS
        checks.append({"check": "min_top1", "test_top1": top1, "min_top1": min_top1, "passed": ok})
        if not ok:
            reasons.append(f"test top1 {top1:.4f} is below the minimum {min_top1:.4f}")
        if base is not None:
            ok = top1 >= base - tolerance - EPS
            checks.append(
                {
                    "check": "baseline",
                    "test_top1": top1,
                    "baseline_top1": base,
                    "tolerance": tolerance,
                    "baseline": str(baseline),
                    "passed": ok,
                }
            )
            if not ok:
                reasons.append(
                    f"test top1 {top1:.4f} is below the production baseline's {base:.4f} "
                    f"minus tolerance {tolerance:.4f}"
                )
    return {"decision": "fail" if reasons else "pass", "reasons": reasons, "checks": checks}


def write_gate(out: Path, decision: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(decision, indent=2) + "\n")
