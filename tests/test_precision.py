"""Precision chosen per CPU, gated on accuracy: the package-time bf16 gate
(components/release/precision_gate.py) and what `auto` makes of its record on a CPU with and
without bf16 (model/runtimes/choice.py), on the demo-trained fixture model's model.onnx.

What this CPU runs is `choice.cpu_precisions()`, replaced here by monkeypatch: a CPU with bf16
and one without. The runtime that opens is checked where this machine has bf16 (Sapphire Rapids
here); elsewhere those tests skip, saying why.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.release import package as pkg
from components.release import precision_gate as gate
from model.files import hash_file
from model.modeldir import read_model_info
from model.predict import Classifier
from model.runtimes import choice
from model.runtimes.openvino_runtime import cpu_precisions
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "sentence_model"

BF16, F32 = frozenset({"f32", "bf16"}), frozenset({"f32"})
needs_bf16 = pytest.mark.skipif(
    "bf16" not in cpu_precisions(), reason="this CPU reports no BF16 (OpenVINO): nothing to gate"
)


@pytest.fixture
def model(onnx_sentence_model, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(onnx_sentence_model, out)
    return out


def _record(model_dir, **changes) -> dict:
    """config.json's bf16 record, changed and written back."""
    config = json.loads((model_dir / "config.json").read_text())
    config["precision"]["bf16"] |= changes
    (model_dir / "config.json").write_text(json.dumps(config))
    return config["precision"]["bf16"]


def _with_bf16_cpu(monkeypatch, has_bf16: bool) -> None:
    monkeypatch.setattr(choice, "cpu_precisions", lambda: BF16 if has_bf16 else F32)


@needs_bf16
def test_the_gate_passes_the_fixture_model_within_tolerance(model):
    """(d) bf16 against f32 on the gate's clip set: every top-1 agrees, the logits stay within
    2% of their scale, and the record is bound to this model.onnx."""
    record = gate.gate_precisions(model)["bf16"]
    print(gate.summary({"bf16": record}))
    assert record["measured"] and record["passed"]
    assert record["top1_agreement"] == 1.0 and record["clips"] == 33
    assert 0 < record["max_abs_diff"] <= record["tolerance"]
    assert record["tolerance"] == pytest.approx(gate.RELATIVE * record["logit_scale"])
    assert record["onnx_sha256"] == hash_file(model / "model.onnx")
    assert record["speedup"] > 0 and record["cpu"]
    assert json.loads((model / "config.json").read_text())["precision"]["bf16"] == record


def test_the_clip_set_is_every_class_by_unseen_signers_and_at_rest():
    info = read_model_info(FIXTURE)
    clips, what = gate.gate_clips(info.preprocess, len(info.labels))
    assert clips.shape == (33, 3, 16, 112, 112) and clips.dtype == np.uint8
    assert what == "synthetic: 10 classes x 3 test-split signers + 3 at rest"
    again, _ = gate.gate_clips(info.preprocess, len(info.labels))
    assert np.array_equal(clips, again)  # deterministic
    many, _ = gate.gate_clips(info.preprocess, 400)  # a WLASL model: capped, classes spread
    assert len(many) == gate.MAX_CLIPS


def test_auto_takes_bf16_only_on_a_cpu_with_it_and_a_passed_faster_gate(model, monkeypatch):
    """(b) A passed record that ran faster: bf16 on a CPU with BF16, f32 (no error) on one
    without; a passed record that ran slower (the demo model's narrow network does): f32."""
    record = {
        "measured": True,
        "passed": True,
        "top1_agreement": 1.0,
        "max_abs_diff": 0.07,
        "tolerance": 0.44,
        "clips": 33,
        "speedup": 1.5,
        "cpu": "a CPU",
        "onnx_sha256": hash_file(model / "model.onnx"),
    }
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"precision": {"bf16": record}}))
    info = read_model_info(model, "model.onnx")
    picked = choice.choose(info, "auto", precisions=BF16)
    assert (picked.runtime, picked.precision) == ("openvino", "bf16")
    assert "passed the package-time gate" in picked.reason and "1.50x" in picked.reason
    plain = choice.choose(info, "auto", precisions=F32)
    assert (plain.runtime, plain.precision) == ("openvino", "f32")
    assert "reports no BF16" in plain.reason
    assert choice.choose(info, "openvino", precisions=F32).precision == "f32"
    assert choice.choose(info, "onnx", precisions=BF16).runtime == "onnx"  # asked: as asked
    assert choice.choose(info, "auto", "cuda", precisions=BF16).runtime == "torch"
    no_openvino = choice.choose(info, "auto", precisions=frozenset())
    assert (no_openvino.runtime, no_openvino.precision) == ("onnx", "f32")
    _with_bf16_cpu(monkeypatch, False)  # the Classifier asks cpu_precisions()
    clf = Classifier(model)
    assert (clf.runtime.name, clf.runtime.precision) == ("openvino", "f32")
    assert "reports no BF16" in clf.runtime.reason
    _record(model, speedup=0.78)
    slower = choice.choose(read_model_info(model, "model.onnx"), "auto", precisions=BF16)
    assert slower.precision == "f32" and "ran 0.78x as fast as f32" in slower.reason


@needs_bf16
def test_auto_opens_bf16_here_and_answers_as_f32(model, monkeypatch):
    """On this CPU (BF16) with the gate's real record, made faster: the runtime compiles at
    bf16, and its logits are f32's within the gate's tolerance."""
    gate.gate_precisions(model)
    record = _record(model, speedup=1.5)
    _with_bf16_cpu(monkeypatch, True)
    bf16 = Classifier(model)
    assert (bf16.runtime.name, bf16.runtime.precision) == ("openvino", "bf16")
    f32 = Classifier(model, runtime="onnx")
    clips, _ = gate.gate_clips(bf16.info.preprocess, len(bf16.labels))
    a, b = bf16.logits(clips[:8]), f32.logits(clips[:8])
    assert np.abs(a - b).max() <= record["tolerance"]
    assert (a.argmax(1) == b.argmax(1)).all()


def _offset_logits(model_dir, offset: float = 1000.0) -> None:
    """The same model with every logit raised by `offset` (the final convolution's bias): f32's
    answers are unchanged (softmax ignores a common offset), but bf16 keeps 8 bits of mantissa,
    so at 1000 its step is 4, more than the gaps between this model's logits."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model_dir / "model.onnx")
    bias = next(i for i in m.graph.initializer if i.name == "net.logits.conv3d.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + offset, bias.name))
    onnx.save(m, model_dir / "model.onnx")
    config = json.loads((model_dir / "config.json").read_text())
    config["onnx"]["sha256"] = hash_file(model_dir / "model.onnx")
    del config["onnx"]["weights_sha256"]  # no model.pt made it: serve model.onnx alone
    (model_dir / "model.pt").unlink()
    (model_dir / "config.json").write_text(json.dumps(config))


@needs_bf16
def test_auto_refuses_bf16_for_a_model_that_fails_the_gate(model, monkeypatch):
    """(c) A model whose bf16 answers differ from f32's fails the gate; auto then serves f32
    on a bf16 CPU and says why."""
    _offset_logits(model)
    record = gate.gate_precisions(model)["bf16"]
    print(gate.summary({"bf16": record}))
    assert record["measured"] and not record["passed"]
    assert record["top1_agreement"] < 1.0 or record["max_abs_diff"] > record["tolerance"]
    _with_bf16_cpu(monkeypatch, True)
    clf = Classifier(model)
    assert (clf.runtime.name, clf.runtime.precision) == ("openvino", "f32")
    assert "failed the package-time gate" in clf.runtime.reason


def test_a_failed_stale_or_unmeasured_record_serves_f32(model):
    """(c) without a bf16 CPU: the record alone decides. A failed gate, a gate of another
    model.onnx (re-exported since), or a packaging CPU without bf16: f32, saying which."""
    config = json.loads((model / "config.json").read_text())
    sha = hash_file(model / "model.onnx")
    base = {"measured": True, "passed": True, "top1_agreement": 1.0, "max_abs_diff": 0.07}
    base |= {"tolerance": 0.44, "clips": 33, "speedup": 1.5, "cpu": "a CPU", "onnx_sha256": sha}
    cases = {
        "failed the package-time gate": base | {"passed": False, "top1_agreement": 0.97},
        "measured another model.onnx": base | {"onnx_sha256": "0" * 64},
        "was not measured: this CPU reports no BF16": {
            "measured": False,
            "passed": False,
            "reason": "this CPU reports no BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES)",
            "onnx_sha256": sha,
        },
    }
    for why, record in cases.items():
        (model / "config.json").write_text(json.dumps(config | {"precision": {"bf16": record}}))
        picked = choice.choose(read_model_info(model, "model.onnx"), "auto", precisions=BF16)
        assert (picked.runtime, picked.precision) == ("openvino", "f32"), why
        assert why in picked.reason


def test_a_cpu_without_bf16_records_the_gate_as_not_measured(model):
    record = gate.gate_precisions(model, precisions=F32)["bf16"]
    assert record["measured"] is False and record["passed"] is False
    assert "reports no BF16" in record["reason"]


def test_package_gates_the_export_it_keeps(onnx_sentence_model, tmp_path, monkeypatch):
    """The package step runs the gate on the model.onnx it keeps: config.json's "precision",
    and lineage.json's verdicts (the export itself replaced by the fixture's: 15 s of tracing
    is tests/test_export.py's)."""
    from components.release import onnx_export

    def fake_export(out):
        for name in ("model.onnx", "config.json"):
            shutil.copy(onnx_sentence_model / name, out / name)
        return json.loads((out / "config.json").read_text())["onnx"]

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"test": {"top1": 1.0}}))
    (evaluation / "gate.json").write_text(json.dumps({"decision": "pass"}))
    out = tmp_path / "package"
    lineage = pkg.package(FIXTURE, evaluation, out, params={}, onnx=True)
    config = json.loads((out / "config.json").read_text())
    bf16 = config["precision"]["bf16"]
    assert bf16["onnx_sha256"] == hash_file(out / "model.onnx")
    assert lineage["onnx"]["precision"]["bf16"] == {k: bf16[k] for k in ("measured", "passed")}
    assert json.loads((out / "lineage.json").read_text())["onnx"]["precision"]
    assert bf16["measured"] == ("bf16" in cpu_precisions())
