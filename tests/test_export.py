"""`sign2text model export DIR --format onnx`: the exported network gives torch's per-time logits.

Each export costs ~15 s of tracing on 2 cores, so there are two: the demo-sized model (shared by
the module) and a full-width 400-class imported published checkpoint at 8 x 112.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from components.release import onnx_export as export
from model.files import hash_file
from model.network.bundle import ModelDirError, load_model_dir
from model.runtimes.torch_runtime import normalized
from sign2text.cli import main
from tests.conftest import CLASS_LIST, FIXTURES, published_state_dict

DEMO = FIXTURES / "sentence_model"


def _export(model_dir, *extra) -> int:
    return main(["model", "export", str(model_dir), "--format", "onnx", *extra])


def _check_against_torch(model_dir, seed: int) -> float:
    """A fresh ONNX Runtime session on model.onnx vs the torch network load_model_dir builds."""
    bundle = load_model_dir(model_dir)
    record = bundle.config["onnx"]
    assert record["file"] == "model.onnx"
    assert record["sha256"] == hash_file(model_dir / "model.onnx")
    assert record["weights_sha256"] == hash_file(model_dir / "model.pt")
    pre = bundle.preprocess
    shape = [3, 3, pre.num_frames, pre.crop, pre.crop]  # a batch size the export never saw
    assert record["input"] == {"name": "clip", "shape": ["batch", *shape[1:]], "dtype": "uint8"}
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)  # preprocessing's clips
    with torch.inference_mode():  # the graph scales them itself, as the torch runtime does
        want = bundle.model(normalized(x, pre.value_range)).numpy()
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {"clip": x.numpy()})[0]
    assert got.shape == want.shape
    assert record["output"]["shape"] == ["batch", *want.shape[1:]]
    assert want.shape[:2] == (3, bundle.arch.num_classes)
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-4
    assert max(record["max_abs_diff"].values()) <= 1e-4
    return diff


@pytest.fixture
def demo_export(onnx_sentence_model):
    return onnx_sentence_model


def test_demo_model_exports_with_torch_logits(demo_export):
    """conftest's onnx_sentence_model: the CLI's export of the demo-trained fixture model, which
    changed nothing in config.json but add its record."""
    original = json.loads((DEMO / "config.json").read_text())
    exported = json.loads((demo_export / "config.json").read_text())
    assert {k: v for k, v in exported.items() if k != "onnx"} == original
    assert load_model_dir(demo_export).arch.width == 0.25
    _check_against_torch(demo_export, seed=1)
    config = json.loads((demo_export / "config.json").read_text())
    assert config["onnx"]["clip"] == "synthetic" and config["onnx"]["opset"] == 18
    assert config["no_sign"] == {"class": 10, "window": 30}  # the rest of config.json kept


def test_full_width_imported_checkpoint_exports(tmp_path, video_file, capsys):
    weights = tmp_path / "rgb_imagenet.pt"
    torch.save(published_state_dict(num_classes=400), weights)
    model_dir = tmp_path / "model"
    args = [
        "model",
        "import-i3d",
        "--weights",
        str(weights),
        "--labels",
        str(CLASS_LIST),
        "--num-classes",
        "400",
        "--out",
        str(model_dir),
        "--num-frames",
        "8",
        "--resize",
        "128",
        "--crop",
        "112",
    ]
    assert main(args) == 0
    assert _export(model_dir, "--video", str(video_file)) == 0
    assert "max |diff|" in capsys.readouterr().out
    assert load_model_dir(model_dir).arch.width == 1.0
    _check_against_torch(model_dir, seed=2)
    assert json.loads((model_dir / "config.json").read_text())["onnx"]["clip"] == video_file.name


@pytest.mark.parametrize("bad", ["mismatch", "garbage"])
def test_a_mismatching_or_corrupt_export_is_refused(
    demo_export, tmp_path, monkeypatch, capsys, bad
):
    """Other weights than the export's, or bytes ONNX Runtime cannot load: exit 2, and the
    directory is left as it was (no model.onnx, config.json unchanged, no temp files)."""
    model_dir = tmp_path / "m"
    shutil.copytree(DEMO, model_dir)
    if bad == "mismatch":
        state = torch.load(model_dir / "model.pt", weights_only=True)
        state["logits.conv3d.bias"] += 0.01  # 1e-2 off every logit, 100x the tolerance
        torch.save(state, model_dir / "model.pt")
        data = (demo_export / "model.onnx").read_bytes()
    else:
        data = (demo_export / "model.onnx").read_bytes()[:10_000]
    monkeypatch.setattr(export, "onnx_bytes", lambda *a, **k: data)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    assert _export(model_dir) == 2
    err = capsys.readouterr().err
    assert err.startswith("sign2text: error: ") and err.count("\n") == 1
    assert ("differs from torch" if bad == "mismatch" else "cannot load") in err
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_an_onnx_record_without_its_file_is_refused(demo_export, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(demo_export, model_dir)
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ModelDirError, match="onnx record"):
        load_model_dir(model_dir)


def test_serving_refuses_a_stale_or_altered_onnx(demo_export, tmp_path):
    """model.onnx must be the file its record hashed, exported from the model.pt beside it: a
    retrained model.pt, or other bytes, and no runtime serves the pair; without model.onnx,
    asking for ONNX says how to make one."""
    from model.predict import Classifier

    assert Classifier(demo_export).runtime.name == "openvino"  # auto: the export is there
    stale = tmp_path / "stale"
    shutil.copytree(demo_export, stale)
    state = torch.load(stale / "model.pt", weights_only=True)
    state["logits.conv3d.bias"] += 0.01  # retrained since the export
    torch.save(state, stale / "model.pt")
    with pytest.raises(ModelDirError, match="exported from other weights"):
        Classifier(stale)
    altered = tmp_path / "altered"
    shutil.copytree(demo_export, altered)
    with open(altered / "model.onnx", "ab") as f:
        f.write(b"\0")
    for runtime in ("onnx", "openvino"):
        with pytest.raises(ModelDirError, match="sha256"):
            Classifier(altered, runtime=runtime)
    assert Classifier(DEMO).runtime.name == "torch"
    for runtime in ("onnx", "openvino"):
        with pytest.raises(ModelDirError, match="sign2text model export"):
            Classifier(DEMO, runtime=runtime)


def _float_input_export(model_dir, out):
    """model_dir's model.onnx as exports were before clips stayed uint8: float32 clips in,
    already scaled (the graph's leading Cast, Mul, Add removed), and a record without a dtype."""
    import onnx

    shutil.copytree(model_dir, out)
    graph = (m := onnx.load(out / "model.onnx")).graph
    cast, mul, add = graph.node[:3]
    assert [n.op_type for n in (cast, mul, add)] == ["Cast", "Mul", "Add"]
    for node in graph.node[3:]:
        node.input[:] = ["clip" if i == add.output[0] else i for i in node.input]
    del graph.node[:3]
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(m, out / "model.onnx")
    config = json.loads((out / "config.json").read_text())
    del config["onnx"]["input"]["dtype"]
    config["onnx"]["sha256"] = hash_file(out / "model.onnx")
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_an_export_from_before_uint8_clips_still_serves(demo_export, tmp_path):
    """An older model.onnx takes float32 clips: its runtime scales preprocessing's uint8 clips
    itself and answers what the current export answers; Triton's repository declares FP32."""
    from components.release.triton_repo import write_repository
    from model.predict import Classifier

    old = _float_input_export(demo_export, tmp_path / "old")
    pre = load_model_dir(demo_export).preprocess
    g = torch.Generator().manual_seed(3)
    clips = torch.randint(
        0, 256, (2, 3, pre.num_frames, pre.crop, pre.crop), generator=g, dtype=torch.uint8
    ).numpy()
    new_clf, old_clf = Classifier(demo_export, runtime="onnx"), Classifier(old, runtime="onnx")
    assert old_clf.runtime.value_range == pre.value_range and new_clf.runtime.value_range is None
    np.testing.assert_allclose(old_clf.logits(clips), new_clf.logits(clips), rtol=0, atol=1e-5)
    old_ov = Classifier(old, runtime="openvino")  # OpenVINO scales them the same way
    assert old_ov.runtime.value_range == pre.value_range
    np.testing.assert_allclose(old_ov.logits(clips), new_clf.logits(clips), rtol=0, atol=1e-4)
    with pytest.raises(TypeError, match="uint8"):
        old_clf.logits(clips.astype(np.float32))  # already scaled? no way to tell: refused
    lying = tmp_path / "lying"  # the old graph, its record claiming uint8
    shutil.copytree(old, lying)
    config = json.loads((lying / "config.json").read_text())
    config["onnx"]["input"]["dtype"] = "uint8"
    (lying / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"takes tensor\(float\) clips"):
        Classifier(lying, runtime="onnx")
    with pytest.raises(ModelDirError, match=r"takes f32 clips"):
        Classifier(lying, runtime="openvino")
    for model_dir, want in ((old, "TYPE_FP32"), (demo_export, "TYPE_UINT8")):
        config = write_repository(model_dir, tmp_path / f"repo-{want}") / "config.pbtxt"
        assert f"data_type: {want}" in config.read_text().split("output")[0]
