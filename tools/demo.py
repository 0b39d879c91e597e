"""The end of `make demo`: test metrics, one test video's top-5 next to its true gloss, and
three test videos of one signer strung together through sentence mode next to the truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.data.dataset import load_samples
from components.evaluation.evaluate import sentence_summary
from components.training.context import load_videos, sign_strings
from model.predict import Classifier
from model.sentence import transcribe


def show(model_dir: Path, data: Path, metrics: Path, top_k: int = 5) -> None:
    m = json.loads(metrics.read_text())
    for split in ("val", "test"):
        s = m.get(split) or {}
        print(
            f"{split:>5}: top1={s.get('top1')} top5={s.get('top5')} top10={s.get('top10')} "
            f"per-class={s.get('per_class_mean')} reversed-pairs={s.get('reversed_pairs')} "
            f"(n={s.get('n')})"
        )
    if sentence := m.get("sentence"):
        print(sentence_summary(sentence))
    clf = Classifier(model_dir)
    samples = load_samples(data, ("test",))
    sample = samples[0]
    pred = clf.word(sample.video_path(data), top_k)
    print(f"\n{sample.video_path(data)}  true gloss: {sample.gloss}")
    for i, (g, p) in enumerate(zip(pred.glosses, pred.scores, strict=True), 1):
        mark = "  <- true" if g == sample.gloss else ""
        print(f"  {i}. {g:<12} {p:.3f}{mark}")
    if clf.info.sentence_window is None:
        return
    signer = [s for s in samples if s.signer_id == sample.signer_id]
    strings = sign_strings(load_videos(data, signer, clf.labels), 1, min_signs=3, max_signs=3)
    if strings:
        frames, spans = strings[0]
        print(f"\nsentence mode on {len(frames)} frames of signer {sample.signer_id}:")
        print("  truth:   " + "  ".join(f"{clf.labels[k]} [{a}-{b}]" for a, b, k in spans))
        words = transcribe(clf, frames)
        print("  words:   " + "  ".join(f"{w.gloss} [{w.start}-{w.end}]" for w in words))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="artifacts/model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--metrics", default="artifacts/eval/metrics.json")
    a = ap.parse_args()
    show(Path(a.model), Path(a.data), Path(a.metrics))
