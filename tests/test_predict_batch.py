"""`sign2text predict-batch`: a folder or s3:// prefix of videos -> one JSON line per video,
in parallel processes, resumable; the Kubeflow component and its separate pipeline."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

from components.scoring.predict_batch import DIED, list_videos, load_results, predict_batch
from model.modeldir import ModelDirError
from model.predict import Classifier
from pipelines.kfp_components import predict_videos
from sign2text.cli import main
from tests.conftest import FIXTURES, moving_square, write_video
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

MODEL = FIXTURES / "sentence_model"
GOOD = ["a.mp4", "sub/b.avi", "sub/c.mp4"]
BAD = "bad.mp4"


def _lines(path: Path) -> dict[str, dict]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["video"] for r in recs}) == len(recs), "each video once"
    return {r["video"]: r for r in recs}


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(MODEL)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i, name in enumerate(GOOD):
        write_video(root / name, moving_square(n=12, h=48, w=64, seed=i))
    (root / BAD).write_bytes(b"\x00not a video" * 100)
    (root / "notes.txt").write_text("not a video: ignored")
    return root


@pytest.fixture(scope="module")
def first_run(videos, tmp_path_factory) -> tuple[Path, dict]:
    """Two worker processes, word mode."""
    out = tmp_path_factory.mktemp("out") / "results.jsonl"
    return out, predict_batch(MODEL, videos, out, workers=2, top_k=3)


def _expected_word(classifier: Classifier, path: Path) -> dict:
    pred = classifier.word(path, top_k=3)
    return {"glosses": pred.glosses, "scores": pred.scores}


def _check_word(rec: dict, want: dict) -> None:
    assert rec["mode"] == "word"
    assert rec["glosses"] == want["glosses"]
    assert rec["scores"] == pytest.approx(want["scores"], rel=1e-4, abs=1e-6)


def test_workers_score_each_video_as_the_classifier_does(first_run, videos, classifier):
    out, summary = first_run
    assert list_videos(videos) == sorted([*GOOD, BAD])  # notes.txt is not a video
    assert summary | {"seconds": 0, "videos_per_s": 0} == {
        "videos": 4,
        "scored": 3,
        "skipped": 0,
        "errors": 1,
        "seconds": 0,
        "videos_per_s": 0,
        "out": str(out),
    }
    lines = _lines(out)
    assert sorted(lines) == sorted([*GOOD, BAD])
    for name in GOOD:
        _check_word(lines[name], _expected_word(classifier, videos / name))
    error = lines[BAD]["error"]
    assert error and "glosses" not in error and str(videos) not in error, error


def test_rerun_skips_and_a_cut_off_line_is_scored_again(first_run, videos, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    shutil.copy(first_run[0], out)
    before = out.read_text()
    assert (
        main(
            [
                "predict-batch",
                str(MODEL),
                str(videos),
                "--out",
                str(out),
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "scored 0, skipped 4 (already done), errors 0" in capsys.readouterr().out
    assert out.read_text() == before

    lines = before.splitlines(keepends=True)
    last = json.loads(lines[-1])["video"]
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write
    summary = predict_batch(MODEL, videos, out, workers=1, top_k=3)
    assert (summary["scored"] + summary["errors"], summary["skipped"]) == (1, 3)
    again = _lines(out)
    assert sorted(again) == sorted([*GOOD, BAD])
    assert again[last].keys() == json.loads(lines[-1]).keys()

    with pytest.raises(ValueError, match="word-mode results"):
        load_results(out, "sentence")
    summary = predict_batch(MODEL, videos, out, workers=1, top_k=3, retry_errors=True)
    assert (summary["errors"], summary["skipped"]) == (1, 3)
    assert sorted(_lines(out)) == sorted([*GOOD, BAD])

    out.write_text('{"video": "a.mp4", "mode": "word"}\nnot json\n{"video": "b"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a predict-batch result line"):
        load_results(out, "word")


class Killer:
    """Kills (SIGKILL, as the OOM killer does) any process of this test that has a video named in
    `always` open, and those in `once` the first time: a video that crashes its process, and a
    worker that dies while scoring a harmless one."""

    def __init__(self, always: set[str], once: set[str]) -> None:
        self.always, self.once, self.killed, self.pids = always, set(once), [], set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(0.01):
            for child in me.children(recursive=True):
                try:
                    names = {Path(f.path).name for f in child.open_files()}
                except psutil.Error:
                    continue
                hit = names & (self.always | self.once)
                if hit and child.pid not in self.pids:  # a killed one shows until reaped
                    child.kill()
                    self.pids.add(child.pid)
                    self.killed += sorted(hit)
                    self.once -= hit

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_a_video_that_kills_its_worker_gets_an_error_and_the_others_their_results(
    videos, tmp_path, classifier
):
    src = tmp_path / "src"
    shutil.copytree(videos, src)
    for name in ("poison.mp4", "once.mp4"):  # long enough to be seen open while decoding
        write_video(src / name, moving_square(n=400, h=360, w=640))
    out = tmp_path / "results.jsonl"
    with Killer(always={"poison.mp4"}, once={"once.mp4"}) as killer:
        summary = predict_batch(MODEL, src, out, workers=2, top_k=3)
    assert {"poison.mp4", "once.mp4"} <= set(killer.killed)  # poison.mp4: at least alone
    lines = _lines(out)
    assert sorted(lines) == sorted([*GOOD, BAD, "poison.mp4", "once.mp4"])
    assert lines["poison.mp4"]["error"] == DIED
    for name in [*GOOD, "once.mp4"]:
        _check_word(lines[name], _expected_word(classifier, src / name))
    assert (summary["scored"], summary["errors"]) == (4, 2)  # poison.mp4 and bad.mp4


def test_a_model_its_workers_cannot_open_fails_before_any_video(videos, tmp_path):
    """Opened as the workers open it: a model.onnx that is not the one config.json records
    (torch's model.pt is fine) fails at once, not as every worker's pool breaks."""
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    for f in (FIXTURES / "sentence_model_onnx").iterdir():
        shutil.copy(f, model / f.name)
    onnx = bytearray((model / "model.onnx").read_bytes())
    onnx[len(onnx) // 2] ^= 0xFF
    (model / "model.onnx").write_bytes(bytes(onnx))
    out = tmp_path / "results.jsonl"
    with pytest.raises(ModelDirError, match="model.onnx: its sha256"):
        predict_batch(model, videos, out, workers=2)
    assert not out.exists()


def test_sentence_mode_gives_words_with_spans(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    write_video(src / "v.mp4", moving_square(n=10, h=48, w=64))
    out = tmp_path / "sentence.jsonl"
    summary = predict_batch(MODEL, src, out, mode="sentence", workers=1)
    assert (summary["scored"], summary["errors"]) == (1, 0)
    (rec,) = _lines(out).values()
    assert rec["mode"] == "sentence" and rec["words"]  # model/predict.py: Classifier.sentence
    assert len(rec["words"]) == len(rec["spans"]) == len(rec["confidences"])
    assert all(0 <= a <= b < 10 for a, b in rec["spans"])


def test_s3_prefix_through_the_kubeflow_component(s3_env, videos, first_run, tmp_path):
    """The component's function on an s3:// prefix: the same lines as from the folder; keys
    that are not videos are ignored."""
    bucket = s3_env.make_bucket()
    for name in [GOOD[1], BAD, "notes.txt"]:
        s3_env.put_file(bucket, f"batch/in/{name}", videos / name)
    results = SimpleNamespace(path=str(tmp_path / "results"), metadata={})
    answer = predict_videos(
        model_uri=str(MODEL),
        videos=f"s3://{bucket}/batch/in",
        mode="word",
        top_k=3,
        workers=1,
        results=results,
    )
    summary = json.loads(answer)
    assert (summary["scored"], summary["errors"], summary["skipped"]) == (1, 1, 0)
    assert results.metadata["scored"] == 1
    lines, local = _lines(Path(results.path)), _lines(first_run[0])
    assert sorted(lines) == [BAD, GOOD[1]]
    _check_word(lines[GOOD[1]], local[GOOD[1]])
    assert lines[BAD]["error"] and "sign2text-batch-" not in lines[BAD]["error"]


def test_batch_pipeline_compiles_apart_from_the_training_pipeline(tmp_path):
    from kfp import compiler

    from pipelines.batch_scoring import NAME, build_batch_pipeline
    from pipelines.sign2text import S3_KEYS, S3_SECRET

    path = tmp_path / "batch.yaml"
    compiler.Compiler().compile(build_batch_pipeline("reg.test/s2t:9"), str(path))
    pipeline, platform = yaml.safe_load_all(path.read_text())
    assert pipeline["pipelineInfo"]["name"] == NAME
    assert list(pipeline["root"]["dag"]["tasks"]) == ["predict-videos"]
    (executor,) = pipeline["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == "reg.test/s2t:9"
    (k8s,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    keys = {e["secretKey"] for s in k8s["secretAsEnv"] for e in s["keyToEnv"]}
    assert {s["secretName"] for s in k8s["secretAsEnv"]} == {S3_SECRET}
    assert set(S3_KEYS) <= keys
