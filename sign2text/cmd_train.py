"""`sign2text train | evaluate | package`: the DVC stages after the data's, each a step of
components/steps.py; and `sign2text params PROFILE`, the overrides that switch params.yaml to a
profile."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from sign2text.cmd_data import DATA_HELP, SAMPLES_HELP
from sign2text.options import command, load_params, optional_path


def _train(args: argparse.Namespace) -> None:
    """Train I3D on shards.

    Train on the train split, validate on val each epoch, checkpoint every epoch; writes
    OUT/model (serving format), OUT/metrics.json, OUT/history.json."""
    from components import steps
    from components.infra.objstore import local_input
    from components.infra.s3_access import is_s3
    from components.training.s3stream import S3Shards

    params = load_params(args)
    _ = params.train  # a bad recipe, or a device this machine lacks, fails before any fetch
    if is_s3(args.shards) and not params.train.cache:  # the streaming loader reads S3 in place
        shards = contextlib.nullcontext(S3Shards(args.shards))
    else:  # the cached loader decodes everything up front: from a local copy
        shards = local_input(args.shards)
    with shards as shards:
        final = steps.train(
            params, shards, Path(args.out), resume=args.resume, progress=not args.quiet
        )
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        print(json.dumps(final))


def _evaluate(args: argparse.Namespace) -> None:
    """Top-1/5/10, per-class accuracy, confusion matrix, release gate.

    Evaluate a model directory on the dataset's val and test splits and decide the release gate
    (OUT/metrics.json, OUT/gate.json)."""
    from components import steps
    from components.evaluation.evaluate import sentence_summary
    from components.infra.objstore import local_input

    with local_input(args.model_dir) as model_dir:
        metrics, decision = steps.evaluate(
            load_params(args),
            model_dir,
            Path(args.data),
            optional_path(args.samples),
            Path(args.out),
            baseline=optional_path(args.baseline),
            progress=not args.quiet,
        )
    test = metrics.get("test") or {}
    print(
        f"test top1={test.get('top1')} top5={test.get('top5')} top10={test.get('top10')} "
        f"per-class={test.get('per_class_mean')} reversed-pairs={test.get('reversed_pairs')}"
    )
    if sentence := metrics.get("sentence"):
        print(sentence_summary(sentence))
    print(f"gate: {decision['decision']}" + "".join(f"\n  - {r}" for r in decision["reasons"]))


def _package(args: argparse.Namespace) -> None:
    """Write the release candidate model directory.

    Model + metrics + gate + lineage -> a servable model directory."""
    from components import steps
    from components.infra.objstore import local_output

    params, model_dir, eval_dir = load_params(args), Path(args.model_dir), Path(args.eval)
    with local_output(args.out) as out:
        lineage = steps.package(
            params, model_dir, eval_dir, out, allow_failed_gate=args.allow_failed_gate
        )
    onnx = (lineage.get("onnx") or {}).get("exported")
    onnx = {True: "model.onnx checked", False: "model.pt only"}.get(onnx, "ONNX not asked for")
    print(f"packaged {args.out} (gate {lineage['gate']}, data {lineage['data_md5']}, {onnx})")


def _params(args: argparse.Namespace) -> None:
    """Print `dvc exp run` overrides for a profile.

    Print -S overrides that switch params.yaml to a named profile: dvc exp run $(sign2text
    params wlasl)"""
    from components.params import profile_overrides

    print(" ".join(profile_overrides(load_params(args).values, args.profile)))


def add_to(sub: argparse._SubParsersAction) -> None:
    t = command(sub, "train", _train, params=True)
    t.add_argument("--shards", required=True, help="`data convert` output (folder or s3://)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")

    e = command(sub, "evaluate", _evaluate, params=True)
    e.add_argument("--model-dir", required=True, help="model directory or published s3:// URI")
    e.add_argument("--data", default="data", help=DATA_HELP)
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--baseline", help="production model's metrics.json (overrides params)")
    e.add_argument("--samples", help=SAMPLES_HELP)

    pk = command(sub, "package", _package, params=True)
    pk.add_argument("--model-dir", required=True, help="trained model directory")
    pk.add_argument("--eval", required=True, help="folder written by `evaluate`")
    pk.add_argument("--out", required=True, help="package folder or s3:// URI to publish")
    pk.add_argument("--allow-failed-gate", action="store_true", help="package anyway")

    pr = command(sub, "params", _params, params=True, quiet=False)
    pr.add_argument("profile", help="profile name in params.yaml (e.g. wlasl)")
