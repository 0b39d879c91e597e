"""import-i3d -> model directory -> predict-local, and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.network.bundle import ModelDirError, load_model_dir, read_labels, write_model_dir
from model.predict import Classifier
from model.runtimes.choice import softmax
from model.video.clip import PreprocessConfig
from sign2text.cli import main
from tests.conftest import CLASS_LIST, published_state_dict

SMALL = ["--num-frames", "16", "--resize", "128", "--crop", "112"]


@pytest.fixture
def wlasl100_checkpoint(tmp_path):
    """Saved the way the WLASL authors' files were: legacy format, DataParallel prefix."""
    state = {"module." + k: v for k, v in published_state_dict(num_classes=100).items()}
    path = tmp_path / "FINAL_nslt_100_iters=896_top1=65.89_top5=84.11_top10=89.92.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture
def imported(tmp_path, wlasl100_checkpoint):
    out = tmp_path / "model"
    args = [
        "model",
        "import-i3d",
        "--weights",
        str(wlasl100_checkpoint),
        "--labels",
        str(CLASS_LIST),
        "--num-classes",
        "100",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(args) == 0
    return out


def test_import_writes_a_complete_model_directory(imported):
    config = json.loads((imported / "config.json").read_text())
    assert config["architecture"]["num_classes"] == 100
    pre = config["preprocess"]
    assert pre["channel_order"] == "BGR" and pre["value_range"] == [-1.0, 1.0]
    assert (pre["num_frames"], pre["resize"], pre["crop"]) == (16, 128, 112)
    labels = read_labels(imported / "labels.txt")
    assert labels == read_labels(CLASS_LIST)[:100]
    assert labels[:3] == ["book", "drink", "computer"]
    lineage = json.loads((imported / "lineage.json").read_text())
    assert lineage["checkpoint_classes"] == 100 and not lineage["head_replaced"]
    # weights are plain tensors: loadable with weights_only=True
    state = torch.load(imported / "model.pt", weights_only=True)
    expected = published_state_dict(num_classes=100)
    assert torch.equal(state["Mixed_5c.b3b.conv3d.weight"], expected["Mixed_5c.b3b.conv3d.weight"])


def test_predict_local_prints_top_k_from_the_class_list(imported, video_file, capsys):
    assert main(["predict-local", str(imported), str(video_file), "--top-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    labels = read_labels(CLASS_LIST)[:100]
    assert len(out["glosses"]) == 5 and all(g in labels for g in out["glosses"])
    scores = out["scores"]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
    assert all(0 <= s <= 1 for s in scores)
    assert main(["predict-local", str(imported), str(video_file), "--top-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "gloss", "probability"] and len(table) == 4


def test_predict_matches_the_network_on_the_same_clip(imported, video_file):
    clf = Classifier(imported)
    pred = clf.word(video_file, 100)
    from model.video.clip import load_clip, normalize

    clip = load_clip(video_file, clf.info.preprocess)
    with torch.inference_mode():
        net = load_model_dir(imported).model
        x = torch.from_numpy(normalize(clip, clf.info.preprocess.value_range))[None]
        logits = net(x).max(dim=2).values.softmax(1)[0]
    assert pred.glosses[0] == clf.labels[int(logits.argmax())]
    torch.testing.assert_close(torch.tensor(pred.scores), logits.sort(descending=True).values)


def test_kinetics_checkpoint_gets_a_new_head(tmp_path, capsys):
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(published_state_dict(num_classes=400), path)
    out = tmp_path / "m"
    args = [
        "model",
        "import-i3d",
        "--weights",
        str(path),
        "--labels",
        str(CLASS_LIST),
        "--num-classes",
        "2000",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(args) == 0
    assert "head replaced: 400 -> 2000" in capsys.readouterr().out
    assert load_model_dir(out).arch.num_classes == 2000


def test_round_trip_gives_identical_outputs(tmp_path):
    from model.network.i3d import I3DConfig, InceptionI3d

    model = InceptionI3d(I3DConfig(num_classes=3, width=0.25)).eval()
    pre = PreprocessConfig(num_frames=8, resize=64, crop=64)
    write_model_dir(tmp_path / "m", model, pre, ["a", "b", "c"], extras={"metrics.json": {}})
    bundle = load_model_dir(tmp_path / "m")
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.model(x), model(x))
    assert bundle.preprocess == pre and bundle.labels == ["a", "b", "c"]
    # rewriting replaces the directory whole, leaving no temp dirs behind
    write_model_dir(tmp_path / "m", model, pre, ["x", "y", "z"])
    assert load_model_dir(tmp_path / "m").labels == ["x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_no_sign_output_round_trip_and_checks(tmp_path):
    """A context-trained model: one output past the labels, its window in config.json; word mode
    probabilities leave the no-sign output out."""
    from model.network.i3d import I3DConfig, InceptionI3d
    from tests.model_server import input_sensitive

    model = input_sensitive(InceptionI3d(I3DConfig(num_classes=3, width=0.25))).eval()
    pre = PreprocessConfig(num_frames=8, resize=64, crop=64)
    write_model_dir(tmp_path / "m", model, pre, ["a", "b"], sentence_window=20)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["no_sign"] == {"class": 2, "window": 20}
    clf = Classifier(tmp_path / "m")
    assert clf.info.sentence_window == 20 and clf.labels == ["a", "b"]
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 64, 64), dtype=np.uint8)
    logits = clf.logits(x)
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(clf.probabilities(x), softmax(logits[:, :2]), rtol=1e-5)
    with pytest.raises(ModelDirError, match="2 labels \\+ the no-sign output for a 2-class"):
        write_model_dir(
            tmp_path / "n",
            InceptionI3d(I3DConfig(num_classes=2, width=0.25)),
            pre,
            ["a", "b"],
            sentence_window=20,
        )
    with pytest.raises(ModelDirError, match="2 labels for a 3-class"):  # no window, no extra
        write_model_dir(tmp_path / "n", model, pre, ["a", "b"])
    config["no_sign"]["class"] = 0  # hand-edited: refused on load, not served wrongly
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="no_sign must be"):
        load_model_dir(tmp_path / "m")


def test_incomplete_model_directory_is_refused(imported):
    (imported / "labels.txt").unlink()
    with pytest.raises(ModelDirError, match="labels.txt is missing"):
        load_model_dir(imported)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sign2text.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mismatched_checkpoint_fails_with_one_line_naming_the_key(tmp_path):
    state = published_state_dict(num_classes=100)
    del state["Mixed_4e.b1b.conv3d.weight"]
    torch.save(state, tmp_path / "broken.pt")
    r = _cli(
        "model",
        "import-i3d",
        "--weights",
        str(tmp_path / "broken.pt"),
        "--labels",
        str(CLASS_LIST),
        "--num-classes",
        "100",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "missing key 'Mixed_4e.b1b.conv3d.weight'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_user_errors_exit_non_zero_with_one_line(tmp_path, imported):
    bad_video = tmp_path / "not_a_video.mp4"
    bad_video.write_text("plain text")
    for args, needle in [
        (("predict-local", str(imported), str(bad_video)), "not a readable video"),
        (("predict-local", str(imported), str(tmp_path / "nope.mp4")), "not found"),
        (("predict-local", str(tmp_path), str(bad_video)), "not a model directory"),
        (("predict-local", str(imported), str(bad_video), "--top-k", "0"), "top_k"),
    ]:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["data", "synth", "--help"],
        ["model", "import-i3d", "--help"],
        ["predict-local", "--help"],
    ],
)
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: sign2text" in capsys.readouterr().out
