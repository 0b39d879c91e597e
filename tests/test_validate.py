"""validate: a synthetic dataset with planted defects, each reported with the right reason; every
good sample survives into valid.json, the dataset is left as it was, the report page (and KFP's
HTML artifact) shows the quarantine in a browser with no network, and convert + train run on
the result."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from components.conversion.convert import iter_samples, read_manifest
from components.data.dataset import Sample, load_samples
from components.data.synth import synthesize
from components.validation.validate import REASONS, DatasetInvalid, validate
from model.video.decode import count_frames
from pipelines import glue
from sign2text.cli import main
from tests.browser import external_requests, offline_chromium, open_page
from tests.conftest import moving_square, write_video
from tests.test_train import tiny_params

# video_id -> the reasons it must be quarantined with (planted below).
PLANTED = {
    "zero_byte": ["empty_file"],
    "truncated": ["unreadable"],
    "text_as_mp4": ["unreadable"],
    "missing": ["missing_file"],
    "one_frame": ["too_few_frames"],
    "tiny_8x8": ["low_resolution"],
    "dup": ["duplicate_id"],  # two instances
    "label_99": ["bad_label"],
    "no_frame_end": ["bad_metadata"],
    "misspelled_key": ["bad_metadata"],
    None: ["bad_metadata"],  # `vidoe_id` instead of `video_id`
    "end_beyond": ["bad_frame_range"],
    "bbox_out": ["bbox_outside"],
    "fps30_beyond": ["bad_frame_range"],  # 25 fps indices that overrun the 30 fps file
}
FIXED = "fps30"  # 30 fps file, 25 fps indices [1, 50] -> warning, [1, 60] in valid.json
OPEN = "fps30_open"  # 30 fps file, [1, -1]: nothing to rescale, kept as it is, no warning
PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
GOOD_FRAMES = 30  # moving_square clips of the planted samples: 160 x 120 at 25 fps


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def plant(root: Path) -> None:
    """Add the PLANTED defects and the FIXED sample to a synth dataset (>= 4 classes)."""
    videos = root / "videos"
    good = write_video(videos / "good.mp4", moving_square(GOOD_FRAMES, seed=1)).read_bytes()
    (videos / "good.mp4").unlink()
    for vid in ("dup", "label_99", "no_frame_end", "misspelled_key", "end_beyond", "bbox_out"):
        (videos / f"{vid}.mp4").write_bytes(good)
    (videos / "zero_byte.mp4").write_bytes(b"")
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (videos / "text_as_mp4.mp4").write_text("this is a text file, not a video\n")
    write_video(videos / "one_frame.mp4", moving_square(1))
    write_video(videos / "tiny_8x8.mp4", moving_square(GOOD_FRAMES)[:, :8, :8])
    write_video(videos / "fps30.mp4", moving_square(60, seed=2), fps=30)
    (videos / f"{OPEN}.mp4").write_bytes((videos / "fps30.mp4").read_bytes())
    write_video(videos / "fps30_beyond.mp4", moving_square(60, seed=3), fps=30)

    base = {"bbox": [10, 10, 100, 100], "fps": 25, "frame_start": 1, "frame_end": -1}
    base |= {"instance_id": 0, "signer_id": 0, "source": "planted", "split": "train"}
    base |= {"url": "", "variation_id": 0}
    meta = json.loads((root / "WLASL_v0.3.json").read_text())
    for vid in ("zero_byte", "truncated", "text_as_mp4", "missing", "one_frame"):
        meta[0]["instances"].append(base | {"video_id": vid})
    meta[0]["instances"].append(base | {"video_id": "tiny_8x8", "bbox": None})
    meta[0]["instances"].append(base | {"video_id": "dup"})
    meta[1]["instances"].append(base | {"video_id": "dup"})
    meta[1]["instances"].append(base | {"video_id": "label_99", "label": 99})
    no_end = {k: v for k, v in base.items() if k != "frame_end"}
    meta[2]["instances"].append(no_end | {"video_id": "no_frame_end"})
    misspelled = {k: v for k, v in base.items() if k != "signer_id"} | {"sigenr_id": 3}
    meta[2]["instances"].append(misspelled | {"video_id": "misspelled_key"})
    meta[2]["instances"].append(base | {"vidoe_id": "end_beyond"})
    meta[3]["instances"].append(base | {"video_id": "end_beyond", "frame_end": GOOD_FRAMES + 5})
    meta[3]["instances"].append(base | {"video_id": "bbox_out", "bbox": [100, 10, 220, 100]})
    meta[3]["instances"].append(base | {"video_id": FIXED, "frame_end": 50})
    meta[3]["instances"].append(base | {"video_id": OPEN})
    meta[3]["instances"].append(base | {"video_id": "fps30_beyond", "frame_end": 55})
    (root / "WLASL_v0.3.json").write_text(json.dumps(meta, indent=1))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Sample]]:
    """The planted dataset and its good (synth) samples, read before the planting."""
    root = tmp_path_factory.mktemp("planted")
    synthesize(root, classes=4, per_class=6, signers=4, seed=0, progress=False)
    good = load_samples(root)
    plant(root)
    return root, good


@pytest.fixture(scope="module")
def planted(dataset) -> Path:
    return dataset[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe-cache")


@pytest.fixture(scope="module")
def result(planted, cache, tmp_path_factory) -> tuple[dict, Path, dict, dict]:
    before = _tree(planted)
    out = tmp_path_factory.mktemp("validate")
    report = validate(
        planted, out, max_bad_fraction=0.5, workers=2, progress=False, cache_dir=cache
    )
    return report, out, before, _tree(planted)


def test_one_process_and_several_give_the_same_verdicts(planted, result, tmp_path):
    """Validate probing on one thread and on three, each with an empty probe cache, writes the
    same valid.json and quarantines the same videos for the same reasons as the fixture's run."""
    report, out, _, _ = result
    for workers in (1, 3):
        dest = tmp_path / f"out{workers}"
        again = validate(
            planted,
            dest,
            max_bad_fraction=0.5,
            workers=workers,
            progress=False,
            cache_dir=tmp_path / f"cache{workers}",
        )
        assert (dest / "valid.json").read_bytes() == (out / "valid.json").read_bytes()
        assert again["quarantined"] == report["quarantined"], workers


def test_each_planted_defect_is_reported_with_its_reason(result):
    report, out, _, _ = result
    got = sorted((q["video_id"] or "", q["reasons"]) for q in report["quarantined"])
    want = sorted((vid or "", reasons) for vid, reasons in PLANTED.items())
    want.append(("dup", ["duplicate_id"]))  # both instances of the duplicated id
    assert got == sorted(want)
    assert json.loads((out / "report.json").read_text()) == report
    assert report["failure"] is None
    assert report["total"] == 24 + len(PLANTED) + 3  # synth, planted, 2nd dup, FIXED, OPEN
    assert report["valid"] == 26 and report["reasons"]["duplicate_id"] == 2
    assert all(set(q["reasons"]) <= set(REASONS) for q in report["quarantined"])
    by_id = {q["video_id"]: q for q in report["quarantined"]}
    assert any("did you mean 'signer_id'" in d for d in by_id["misspelled_key"]["details"])
    assert "WLASL_v0.3.json: gloss #2" in by_id[None]["where"]
    assert any("30 fps" in d and "[1, 66]" in d for d in by_id["fps30_beyond"]["details"])


def test_every_good_sample_survives_and_fps_mismatch_is_fixed(result, dataset):
    report, out, _, _ = result
    planted, good = dataset
    valid = [Sample.from_dict(d) for d in json.loads((out / "valid.json").read_text())]
    synth = {s.video_id: s for s in good}
    assert len(synth) == 24
    assert {s.video_id: s for s in valid if s.video_id in synth} == synth
    fixed = next(s for s in valid if s.video_id == FIXED)
    assert (fixed.frame_start, fixed.frame_end, fixed.fps) == (1, 60, 30.0)
    assert count_frames(fixed.video_path(planted)) == 60
    kept = next(s for s in valid if s.video_id == OPEN)
    assert (kept.frame_start, kept.frame_end, kept.fps) == (1, -1, 25.0)
    [warning] = report["warnings"]
    assert warning["video_id"] == FIXED and warning["reason"] == "fps_mismatch"
    assert "[1, 50]" in warning["detail"] and "[1, 60]" in warning["detail"]


def test_dataset_is_untouched_and_docs_are_written(result):
    _, out, before, after = result
    assert after == before
    index = (out / "docs" / "index.html").read_text()
    assert "metadata" in index and "probe" in index
    assert len(list((out / "docs").rglob("*.html"))) >= 5  # index, 2 suites, 2 validations


def _rows(browser, table: str) -> list[list[str]]:
    """A table's cells as the browser renders them: innerText is the laid-out, visible text (an
    element hidden by style gives ''), not the HTML source. One round trip for the table."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(tr => [...tr.cells].map(td => td.innerText.trim()))",
        f"#{table} tbody tr",
    )


def test_report_page_shows_the_quarantine_in_a_browser_with_no_network(
    result, planted, tmp_path, monkeypatch
):
    """DIR/report.html and the KFP step's HTML artifact: every quarantined id with its reasons,
    the counts by reason and each suite, rendered offline with nothing requested off the page.
    The GX index beside it asks CDNs for its styles, none of which load here."""
    report, out, _, _ = result
    # The step's glue with this run's result (test_pipeline_local runs the real step): what it
    # puts in the HTML artifact. The UI shows an artifact as HTML whatever its name; a browser
    # opening a file goes by the suffix.
    calls = []
    monkeypatch.setattr(
        "components.validation.validate.validate", lambda *a, **k: calls.append(k) or report
    )
    artifact = tmp_path / "kfp-html-artifact.html"
    params = json.dumps({"validate": {"max_bad_fraction": 0.5}})
    assert glue.validate_step(planted, params, tmp_path / "validation", artifact) is report
    (kwargs,) = calls  # params' values reach validate; the defaults fill in the rest
    assert kwargs["max_bad_fraction"] == 0.5 and kwargs["progress"] is False
    gx_index = out / "docs" / "index.html"
    want_rows = sorted(
        [q["video_id"] or "(no video_id)", ", ".join(q["reasons"])] for q in report["quarantined"]
    )
    with offline_chromium() as browser:
        open_page(browser, gx_index)
        cdn = external_requests(browser)
        pages = {}
        for page in (out / "report.html", artifact):
            open_page(browser, page)
            pages[page.name] = {
                "external": external_requests(browser),
                "quarantined": sorted(r[:2] for r in _rows(browser, "quarantined")),
                "reasons": {r: int(n) for r, n in _rows(browser, "reasons")},
                "text": browser.find_element("tag name", "body").text,
                "links": [a.get_attribute("href") for a in browser.find_elements("tag name", "a")],
            }
    assert any("cdn" in u for u in cdn) and not any(cdn.values())  # offline, and it would tell
    for name, seen in pages.items():
        assert seen["external"] == {}, name
        assert seen["quarantined"] == want_rows, name
        assert seen["reasons"] == report["reasons"], name
        assert "did you mean 'signer_id'" in seen["text"], name
        assert "metadata: failed" in seen["text"] and "probe: failed" in seen["text"], name
    assert pages["report.html"]["links"] == [gx_index.as_uri()]
    assert pages[artifact.name]["links"] == []  # a single file: no link that leads nowhere
    source = artifact.read_text()
    assert source != gx_index.read_text() and "://" not in source
    for ref in ("<script", "<link", "@import", "url(", "src="):
        assert ref not in source and ref not in (out / "report.html").read_text()


def test_revalidation_decodes_only_changed_files(result, planted, cache, tmp_path):
    report, _, _, _ = result
    assert report["probe"]["decoded"] > 0
    again = validate(planted, tmp_path / "a", max_bad_fraction=0.5, progress=False, cache_dir=cache)
    assert again["probe"] == {"decoded": 0, "cached": report["probe"]["decoded"]}
    assert again["quarantined"] == report["quarantined"] and again["valid"] == report["valid"]
    # Same name, new content: only that file is decoded again, and what it now is counts.
    copy = tmp_path / "copy"
    shutil.copytree(planted, copy, copy_function=lambda s, d: Path(d).symlink_to(s))
    (copy / "videos" / "one_frame.mp4").unlink()
    write_video(copy / "videos" / "one_frame.mp4", moving_square(GOOD_FRAMES, seed=9))
    third = validate(copy, tmp_path / "b", max_bad_fraction=0.5, progress=False, cache_dir=cache)
    assert third["probe"]["decoded"] == 1 and third["valid"] == report["valid"] + 1


def test_too_many_bad_samples_fail_the_dataset_after_writing_the_report(planted, cache, tmp_path):
    with pytest.raises(DatasetInvalid, match="above max_bad_fraction 20%"):
        validate(planted, tmp_path, max_bad_fraction=0.2, progress=False, cache_dir=cache)
    report = json.loads((tmp_path / "report.json").read_text())
    assert "quarantined" in report["failure"] and len(report["quarantined"]) == 15
    assert not (tmp_path / "valid.json").exists()
    page = (tmp_path / "report.html").read_text()
    assert "Dataset rejected: 15 of 41 samples quarantined" in page


def test_a_class_left_without_training_samples_fails(planted, cache, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "videos").symlink_to(planted / "videos")
    meta = json.loads((planted / "WLASL_v0.3.json").read_text())
    for inst in meta[1]["instances"]:
        if inst.get("split") == "train" and str(inst.get("video_id")).isdigit():
            inst["frame_end"] = 10_000  # beyond every video
    (data / "WLASL_v0.3.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetInvalid, match="no valid training sample left for class 1 'down'"):
        validate(data, tmp_path / "out", max_bad_fraction=1.0, progress=False, cache_dir=cache)


def _params(tmp: Path, **validate) -> Path:
    """Tiny model/train params plus the project's own `validate:` section."""
    params = yaml.safe_load(tiny_params(tmp, epochs=1).read_text())
    params["validate"] = yaml.safe_load(PROJECT_PARAMS.read_text())["validate"] | validate
    path = tmp / "params-validate.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_exit_codes(planted, cache, tmp_path, capsys):
    params = _params(tmp_path)
    assert yaml.safe_load(params.read_text())["validate"]["max_bad_fraction"] < 15 / 41
    args = ["--params", str(params), "--quiet", "--cache-dir", str(cache)]
    validate = ["data", "validate", "--data"]
    assert main([*validate, str(planted), "--out", str(tmp_path / "v"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "max_bad_fraction" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "WLASL_v0.3.json").write_text("{not json")
    assert main([*validate, str(bad), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "metadata unreadable" in err and "not valid JSON" in err
    assert "not valid JSON" in json.loads((tmp_path / "o" / "report.json").read_text())["failure"]
    page = (tmp_path / "o" / "report.html").read_text()
    assert "Dataset rejected: metadata unreadable" in page and "docs/index.html" not in page
    assert (
        main(["data", "validate", "--data", str(planted), "--out", str(planted / "x"), *args]) == 2
    )
    assert "only read" in capsys.readouterr().err


def test_convert_runs_on_valid_json(result, planted, tmp_path):
    """(tests/test_dvc.py runs validate -> convert -> train -> evaluate on this dataset too.)"""
    _, out, _, _ = result
    params = str(_params(tmp_path))
    valid = json.loads((out / "valid.json").read_text())
    shards = tmp_path / "shards"
    convert = ["data", "convert", "--data", str(planted), "--samples", str(out / "valid.json")]
    assert main([*convert, "--out", str(shards), "--params", params, "--quiet"]) == 0
    manifest = read_manifest(shards)
    assert manifest["skipped"] == []
    counts = {k: v["samples"] for k, v in manifest["splits"].items()}
    assert counts == Counter(d["split"] for d in valid)
    fixed = next(m for m, _ in iter_samples(shards, "train") if m["video_id"] == FIXED)
    assert (fixed["frame_start"], fixed["frame_end"], fixed["source_fps"]) == (1, 60, 30.0)


def test_validate_deletes_only_its_own_docs_and_writes_through_no_link(cache, tmp_path, capsys):
    """--out may hold the user's files: a docs/ folder validate did not write, or a link in its
    place, stops the run with nothing touched; its own earlier docs are replaced; a link where a
    report goes is replaced by the report, never written through."""
    bad = tmp_path / "bad"  # metadata unreadable: the run fails fast, after clearing docs/
    bad.mkdir()
    (bad / "WLASL_v0.3.json").write_text("{not json")
    args = ["--params", str(_params(tmp_path)), "--quiet", "--cache-dir", str(cache)]
    out = tmp_path / "out"
    run = ["data", "validate", "--data", str(bad), "--out", str(out), *args]
    docs = out / "docs"
    docs.mkdir(parents=True)
    (docs / "notes.txt").write_text("mine")
    assert main(run) == 2
    assert "was not written by `sign2text data validate`" in capsys.readouterr().err
    assert (docs / "notes.txt").read_text() == "mine"

    shutil.rmtree(docs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    docs.symlink_to(elsewhere, target_is_directory=True)
    assert main(run) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]

    docs.unlink()
    docs.mkdir()
    (docs / ".sign2text-validate").write_text("")
    (docs / "old.html").write_text("stale")
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (out / "report.json").symlink_to(victim)
    assert main(run) == 2
    assert "metadata unreadable" in capsys.readouterr().err
    assert not docs.exists()  # its own stale docs: gone (no new ones: the metadata failed)
    assert victim.read_text() == "precious"
    assert not (out / "report.json").is_symlink()
    assert "not valid JSON" in json.loads((out / "report.json").read_text())["failure"]
