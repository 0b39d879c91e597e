"""Packaging: the trained model directory + evaluation + lineage -> artifacts/model/.

The result has the same format `model import-i3d` writes (one loader for serving), plus
metrics.json, gate.json and lineage.json. A model whose gate failed is not packaged unless
asked for explicitly: a package is a release candidate.

With `onnx` (params.yaml package.onnx), model.onnx is exported beside model.pt and kept only if
it matches torch (components/release/onnx_export.py); predictors then serve it with ONNX Runtime
(model/runtimes/choice.py's "auto"). A failed check leaves the package torch-only, and
lineage.json's "onnx" says why, so a release never waits on the exporter. A kept model.onnx is
then gated for reduced precisions (components/release/precision_gate.py): config.json's
"precision" records whether bf16 serves this model as well as f32 does, which OpenVINO's "auto"
reads; lineage.json's "precision" repeats the verdicts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from model.files import write_atomic
from model.network.bundle import load_model_dir, write_model_dir


def dvc_data_hash(pointer: str | os.PathLike = "data.dvc") -> str | None:
    """The md5 DVC recorded for the dataset folder (what `dvc add data` wrote), if tracked."""
    path = Path(pointer)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


# Set in the components image by `make images` (build arg GIT_COMMIT): a pipeline pod has
# neither git nor the repository, so the commit it was built from has to travel in the image.
COMMIT_ENV = "SIGN2TEXT_GIT_COMMIT"


def git_commit(cwd: str | os.PathLike = ".") -> str | None:
    """HEAD of the checkout at `cwd` (+ "-dirty"), else the commit the image was built from."""
    git = shutil.which("git")
    if git:
        r = subprocess.run([git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
        if r.returncode == 0:
            dirty = subprocess.run(
                [git, "status", "--porcelain"], cwd=cwd, capture_output=True, text=True
            ).stdout.strip()
            return r.stdout.strip() + ("-dirty" if dirty else "")
    return os.environ.get(COMMIT_ENV, "").strip() or None


def package(
    model_dir: Path,
    eval_dir: Path,
    out: Path,
    *,
    params: dict,
    data_pointer: Path = Path("data.dvc"),
    allow_failed_gate: bool = False,
    onnx: bool = True,
) -> dict:
    """Write the release candidate to `out`; returns its lineage."""
    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    gate = json.loads((Path(eval_dir) / "gate.json").read_text())
    if gate.get("decision") != "pass" and not allow_failed_gate:
        raise ValueError("evaluation gate failed: " + "; ".join(gate.get("reasons", [])))
    bundle = load_model_dir(model_dir)  # proves the weights load before anything is written
    lineage = {
        "data_md5": dvc_data_hash(data_pointer),
        "git_commit": git_commit(),
        "params": params,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gate": gate.get("decision"),
        "test_top1": (metrics.get("test") or {}).get("top1"),
    }
    extras = {"metrics.json": metrics, "gate.json": gate, "lineage.json": lineage}
    write_model_dir(
        out,
        bundle.model,
        bundle.preprocess,
        bundle.labels,
        extras=extras,
        sentence_window=bundle.sentence_window,
    )
    if onnx:
        lineage["onnx"] = _export(Path(out))
        write_atomic(
            Path(out) / "lineage.json",
            (json.dumps(lineage, indent=2, sort_keys=True) + "\n").encode(),
        )
    return lineage


def _export(out: Path) -> dict:
    from components.release.onnx_export import ExportError, export_onnx

    try:
        record = export_onnx(out)
    except ExportError as e:
        print(f"package: model.onnx not kept: {e}", flush=True)
        return {"exported": False, "reason": str(e)}
    from components.release.precision_gate import gate_precisions, summary

    out_record = {"exported": True, "max_abs_diff": max(record["max_abs_diff"].values())}
    try:
        gate = gate_precisions(out)
    except (RuntimeError, ValueError, OSError) as e:  # OpenVINO's errors are RuntimeErrors
        print(f"package: precision gate not run, every CPU serves f32: {e}", flush=True)
        return out_record | {"precision": {"error": str(e)}}
    print(f"package: precision gate: {summary(gate)}", flush=True)
    verdicts = {p: {"measured": r["measured"], "passed": r["passed"]} for p, r in gate.items()}
    return out_record | {"precision": verdicts}
