import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data import synth
from components.data.dataset import Sample, load_glosses, load_samples, read_reversed_pairs
from components.evaluation.evaluate import evaluate, gate, write_gate
from model.network.bundle import write_model_dir
from model.network.i3d import I3DConfig, InceptionI3d
from model.predict import Classifier
from model.video.clip import PreprocessConfig, load_clip

SPLITS = ("val", "test")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "data"
    synth.synthesize(out, classes=4, per_class=6, signers=4, progress=False)
    return out


def _model_dir(root: Path, labels: list[str], **preprocess) -> Path:
    torch.manual_seed(0)
    model = InceptionI3d(I3DConfig(num_classes=len(labels), width=0.25))
    cfg = PreprocessConfig(num_frames=8, resize=64, crop=56, **preprocess)
    return write_model_dir(root, model, cfg, labels)


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("model") / "m", load_glosses(data))


def _key(clip: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(clip).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def clips(data, model_dir) -> dict:
    """Clip hash -> sample, built the way serving would build each clip."""
    cfg = Classifier(model_dir).info.preprocess
    out = {}
    for s in load_samples(data, SPLITS):
        clip = load_clip(s.video_path(data), cfg, frame_start=s.frame_start, frame_end=s.frame_end)
        out[_key(clip)] = s
    assert len(out) == len(load_samples(data, SPLITS)), "clips must be distinguishable"
    return out


@pytest.fixture
def oracle(monkeypatch, clips, model_dir):
    """Install a model whose answer for each sample is choose(sample) (a gloss)."""
    labels = Classifier(model_dir).labels

    def install(choose):
        def probabilities(self, batch):
            probs = np.zeros((len(batch), len(labels)), np.float32)
            for i, clip in enumerate(batch):
                probs[i, labels.index(choose(clips[_key(clip)]))] = 1.0
            return probs

        monkeypatch.setattr(Classifier, "probabilities", probabilities)

    return install


def _partner(data) -> dict[str, str]:
    return {a: b for p in read_reversed_pairs(data) for a, b in (p, p[::-1])}


def test_metrics_shape_and_ranges(data, model_dir, tmp_path):
    metrics = evaluate(model_dir, data, tmp_path, batch_size=5, progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    n = len(load_samples(data, SPLITS))
    assert metrics["overall"]["n"] == n == metrics["val"]["n"] + metrics["test"]["n"]
    assert metrics["skipped"] == []
    for split in (*SPLITS, "overall"):
        m = metrics[split]
        for key in ("top1", "top5", "top10", "per_class_mean", "reversed_pairs"):
            assert 0.0 <= m[key] <= 1.0, (split, key, m[key])
            assert m[key] == round(m[key], 4)
        assert m["top1"] <= m["top5"] <= m["top10"]
        assert m["top5"] == 1.0  # k is capped at the 4 classes
        assert 0 <= m["pair_confusions"] <= m["reversed_pairs_n"] == m["n"]
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == n
    assert {r["split"] for r in rows} == set(SPLITS)
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)


def test_perfect_model(data, model_dir, tmp_path, oracle):
    oracle(lambda s: s.gloss)
    metrics = evaluate(model_dir, data, tmp_path, progress=False)
    for split in (*SPLITS, "overall"):
        m = metrics[split]
        assert m["top1"] == m["per_class_mean"] == m["reversed_pairs"] == 1.0
        assert m["pair_confusions"] == 0


def test_always_pair_partner(data, model_dir, tmp_path, oracle):
    partner = _partner(data)
    oracle(lambda s: partner[s.gloss])
    metrics = evaluate(model_dir, data, tmp_path, progress=False)
    for split in (*SPLITS, "overall"):
        m = metrics[split]
        assert m["top1"] == m["reversed_pairs"] == 0.0
        assert m["pair_confusions"] == m["reversed_pairs_n"] == m["n"] > 0


def test_per_class_mean_skips_absent_classes(data, model_dir, tmp_path, oracle):
    glosses = load_glosses(data)
    val = load_samples(data, ("val",))
    a = [s for s in val if s.gloss == glosses[0]]
    b = [s for s in val if s.gloss == glosses[1]]
    assert len(a) >= 2
    chosen = a[:2] + b[:1]  # classes 2 and 3 absent from the split
    oracle(lambda s: s.gloss if s.gloss == glosses[0] else glosses[2])
    m = evaluate(model_dir, data, tmp_path, splits=("val",), samples=chosen, progress=False)["val"]
    assert m["n"] == 3
    assert m["top1"] == pytest.approx(0.6667)
    assert not math.isnan(m["per_class_mean"])
    assert m["per_class_mean"] == 0.5  # (1.0 + 0.0) / 2 present classes, not / 4


def test_confusion_outputs(data, model_dir, tmp_path, oracle):
    partner = _partner(data)
    oracle(lambda s: partner[s.gloss] if s.split == "test" else s.gloss)
    metrics = evaluate(model_dir, data, tmp_path, progress=False)
    glosses = load_glosses(data)
    for split in SPLITS:
        rows = list(csv.reader(open(tmp_path / f"confusion_{split}.csv")))
        assert rows[0][1:] == glosses
        assert [r[0] for r in rows[1:]] == glosses
        counts = [[int(v) for v in r[1:]] for r in rows[1:]]
        assert sum(map(sum, counts)) == metrics[split]["n"]
        diagonal = sum(counts[i][i] for i in range(len(glosses)))
        assert diagonal == (metrics[split]["n"] if split == "val" else 0)
        assert (tmp_path / f"confusion_{split}.png").read_bytes().startswith(PNG_MAGIC)


def test_corrupt_and_missing_videos_are_skipped(data, model_dir, tmp_path):
    good = load_samples(data, ("test",))
    broken = Sample.from_dict({**good[0].to_dict(), "video_id": "corrupt"})
    missing = Sample.from_dict({**good[0].to_dict(), "video_id": "missing"})
    (data / "videos" / "corrupt.mp4").write_bytes(b"definitely not an mp4 " * 50)
    try:
        samples = [*good, broken, missing]
        metrics = evaluate(model_dir, data, tmp_path, samples=samples, progress=False)
    finally:
        (data / "videos" / "corrupt.mp4").unlink()
    skipped = {s["video_id"]: s for s in metrics["skipped"]}
    assert set(skipped) == {"corrupt", "missing"}
    assert all(s["split"] == "test" and s["reason"] for s in skipped.values())
    assert "not found" in skipped["missing"]["reason"]
    assert metrics["test"]["n"] == len(good)
    assert metrics["test"]["n_skipped"] == metrics["overall"]["n_skipped"] == 2
    assert metrics["val"]["n"] == 0 and metrics["val"]["top1"] is None


@pytest.mark.parametrize("bbox_crop", [False, True])
def test_uses_shared_preprocessing(data, tmp_path, monkeypatch, bbox_crop):
    model_dir = _model_dir(tmp_path / "m", load_glosses(data), bbox_crop=bbox_crop)
    seen: list[np.ndarray] = []
    real = Classifier.probabilities

    def recording(self, batch):
        seen.extend(batch.copy())
        return real(self, batch)

    monkeypatch.setattr(Classifier, "probabilities", recording)
    samples = load_samples(data, ("test",))
    evaluate(model_dir, data, tmp_path / "out", samples=samples, batch_size=3, progress=False)
    cfg = Classifier(model_dir).info.preprocess
    assert cfg.bbox_crop is bbox_crop
    assert len(seen) == len(samples)
    for s, got in zip(samples, seen, strict=True):
        want = load_clip(
            s.video_path(data),
            cfg,
            frame_start=s.frame_start,
            frame_end=s.frame_end,
            bbox=s.bbox if bbox_crop else None,
        )
        assert np.array_equal(got, want)


def _metrics(top1):
    return {"test": {"top1": top1}, "val": {"top1": 0.1}}


def test_gate_threshold(tmp_path):
    ok = gate(_metrics(0.8), min_top1=0.5)
    assert ok["decision"] == "pass" and ok["reasons"] == []
    assert [c["check"] for c in ok["checks"]] == ["min_top1"]
    bad = gate(_metrics(0.4), min_top1=0.5)
    assert bad["decision"] == "fail"
    assert "0.4000" in bad["reasons"][0] and "0.5000" in bad["reasons"][0]
    write_gate(tmp_path / "g", bad)
    assert json.loads((tmp_path / "g" / "gate.json").read_text()) == bad


def test_gate_against_baseline(tmp_path):
    baseline = tmp_path / "prod.json"
    baseline.write_text(json.dumps(_metrics(0.85)))
    worse = gate(_metrics(0.8), min_top1=0.5, baseline=baseline)
    assert worse["decision"] == "fail" and len(worse["reasons"]) == 1
    assert "0.8000" in worse["reasons"][0] and "0.8500" in worse["reasons"][0]
    within = gate(_metrics(0.8), min_top1=0.5, baseline=baseline, tolerance=0.05)
    assert within["decision"] == "pass" and within["reasons"] == []
    assert [c["check"] for c in within["checks"]] == ["min_top1", "baseline"]
    assert all(c["passed"] for c in within["checks"])
    both = gate(_metrics(0.3), min_top1=0.5, baseline=baseline, tolerance=0.05)
    assert both["decision"] == "fail" and len(both["reasons"]) == 2


def test_gate_missing_baseline_and_missing_test(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        gate(_metrics(0.9), min_top1=0.5, baseline=tmp_path / "nope.json")
    empty = gate({"test": {"n": 0, "top1": None}}, min_top1=0.0)
    assert empty["decision"] == "fail" and empty["reasons"]


def test_parallel_decoding_scores_the_same_in_the_same_order(data, model_dir, tmp_path):
    """Decoding ahead on several threads changes nothing but speed."""
    one = evaluate(model_dir, data, tmp_path / "one", decoders=1, progress=False)
    many = evaluate(model_dir, data, tmp_path / "many", decoders=4, progress=False)
    assert one == many
    rows = [(tmp_path / run / "predictions.csv").read_text() for run in ("one", "many")]
    assert rows[0] == rows[1]


def test_evaluation_runs_on_the_gpu_when_there_is_one(monkeypatch):
    """ "auto" (evaluate's default) is CUDA on a GPU machine, the CPU elsewhere. No GPU here:
    the choice is checked; the GPU run itself is `pytest -m gpu` on a GPU machine."""
    from model.runtimes.torch_runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.gpu
def test_gpu_evaluation_matches_the_cpu(data, model_dir, tmp_path):
    cpu = evaluate(model_dir, data, tmp_path / "cpu", device="cpu", progress=False)
    gpu = evaluate(model_dir, data, tmp_path / "gpu", device="cuda", progress=False)
    assert gpu["test"]["top1"] == pytest.approx(cpu["test"]["top1"], abs=0.05)
