"""The model the InferenceServices start from: `sign2text model publish` (`make initial-model`)
fills the manifests' storageUri, against a real S3 server (SeaweedFS on 127.0.0.1), and what it
writes is what KServe's storage initializer downloads and serving loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from components.infra.objstore import MANIFEST, is_published
from components.infra.s3_access import split_uri
from model.network.bundle import load_model_dir
from model.storage import fetch
from sign2text.cli import main
from sign2text.cmd_model import INITIAL_MODEL_URI
from tests.kustomize import OVERLAYS, manifests_copy, one, render
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "sentence_model"


def _files(d: Path) -> dict[str, bytes]:
    """The package's files (the download also brings the publish manifest along)."""
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != MANIFEST}


def test_the_default_target_is_where_the_manifests_start(tmp_path):
    for name in ("inferenceservice-rest.yaml", "inferenceservice-grpc.yaml"):
        isvc = yaml.safe_load((ROOT / "manifests" / "base" / name).read_text())
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == INITIAL_MODEL_URI, name
    manifests = manifests_copy(tmp_path)
    for overlay in OVERLAYS:  # none moves it (the triton overlay adds a service of its own)
        objects = render(manifests / "overlays" / overlay)
        for name in ("sign2text", "sign2text-grpc"):
            isvc = one(objects, "InferenceService", name)
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == INITIAL_MODEL_URI, overlay


def test_publish_fills_the_initial_prefix_for_serving(s3_env, tmp_path, capsys):
    bucket, prefix = split_uri(INITIAL_MODEL_URI)
    s3_env.make_bucket(bucket)

    # Not a model directory: refused in one line before anything is uploaded.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["model", "publish", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a model directory" in err
    assert s3_env.keys(bucket, prefix) == []

    assert main(["model", "publish", str(FIXTURE_MODEL)]) == 0
    assert capsys.readouterr().out.startswith("published 3 files (")
    assert is_published(INITIAL_MODEL_URI)
    # What the predictors' storage initializer does (kserve_storage), then serving's loader.
    served = fetch(INITIAL_MODEL_URI, tmp_path / "mnt-models")
    assert _files(served) == _files(FIXTURE_MODEL)
    assert load_model_dir(served).labels == load_model_dir(FIXTURE_MODEL).labels

    # Again with the same package: nothing to do. Another one: only with --overwrite.
    assert main(["model", "publish", str(FIXTURE_MODEL)]) == 0
    other = shutil.copytree(FIXTURE_MODEL, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config, indent=4))
    capsys.readouterr()
    assert main(["model", "publish", str(other)]) == 2
    assert "already holds another published package" in capsys.readouterr().err
    assert main(["model", "publish", str(other), "--overwrite"]) == 0
    again = fetch(INITIAL_MODEL_URI, tmp_path / "mnt-models-2")
    assert _files(again) == _files(other)
