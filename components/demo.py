"""The end of `make demo`: test metrics, then one test video's top-5 next to its true gloss."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.dataset import load_samples
from model.predict import Classifier


def show(model_dir: Path, data: Path, metrics: Path, top_k: int = 5) -> None:
    m = json.loads(metrics.read_text())
    for split in ("val", "test"):
        s = m.get(split) or {}
        print(f"{split:>5}: top1={s.get('top1')} top5={s.get('top5')} top10={s.get('top10')} "
              f"per-class={s.get('per_class_mean')} reversed-pairs={s.get('reversed_pairs')} "
              f"(n={s.get('n')})")  # fmt: skip
    sample = load_samples(data, ("test",))[0]
    pred = Classifier(model_dir).predict_video(sample.video_path(data), top_k=top_k)
    print(f"\n{sample.video_path(data)}  true gloss: {sample.gloss}")
    for i, (g, p) in enumerate(zip(pred.glosses, pred.scores, strict=True), 1):
        mark = "  <- true" if g == sample.gloss else ""
        print(f"  {i}. {g:<12} {p:.3f}{mark}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="artifacts/model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--metrics", default="artifacts/eval/metrics.json")
    a = ap.parse_args()
    show(Path(a.model), Path(a.data), Path(a.metrics))
