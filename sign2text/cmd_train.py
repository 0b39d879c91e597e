"""`sign2text train | evaluate | package`: the DVC stages after the data's, each a step of
components/steps.py; and `sign2text params PROFILE`, the overrides that switch params.yaml to a
profile."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sign2text.cmd_data import DATA_HELP, SAMPLES_HELP
from sign2text.options import add_params_arg, load_params, optional_path


def _train(args: argparse.Namespace) -> None:
    from components import steps
    from components.infra.objstore import local_input

    params = load_params(args)
    _ = params.train  # a bad recipe, or a device this machine lacks, fails before any fetch
    with local_input(args.shards) as shards:
        final = steps.train(
            params, shards, Path(args.out), resume=args.resume, progress=not args.quiet
        )
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        print(json.dumps(final))


def _evaluate(args: argparse.Namespace) -> None:
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
    from components import steps
    from components.infra.objstore import local_output

    with local_output(args.out) as out:
        lineage = steps.package(
            load_params(args),
            Path(args.model_dir),
            Path(args.eval),
            out,
            allow_failed_gate=args.allow_failed_gate,
        )
    onnx = (lineage.get("onnx") or {}).get("exported")
    onnx = {True: "model.onnx checked", False: "model.pt only"}.get(onnx, "ONNX not asked for")
    print(f"packaged {args.out} (gate {lineage['gate']}, data {lineage['data_md5']}, {onnx})")


def _params(args: argparse.Namespace) -> None:
    from components.params import profile_overrides

    print(" ".join(profile_overrides(load_params(args).values, args.profile)))


def add_to(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train I3D on shards",
        description="Train on the train split, validate on val each epoch, checkpoint every "
        "epoch; writes OUT/model (serving format), OUT/metrics.json, OUT/history.json.",
    )
    t.add_argument("--shards", required=True, help="`data convert` output (folder or s3://)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    add_params_arg(t)
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "evaluate",
        help="top-1/5/10, per-class accuracy, confusion matrix, release gate",
        description="Evaluate a model directory on the dataset's val and test splits and "
        "decide the release gate (OUT/metrics.json, OUT/gate.json).",
    )
    e.add_argument("--model-dir", required=True, help="model directory or published s3:// URI")
    e.add_argument("--data", default="data", help=DATA_HELP)
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--baseline", help="production model's metrics.json (overrides params)")
    e.add_argument("--samples", help=SAMPLES_HELP)
    add_params_arg(e)
    e.set_defaults(func=_evaluate)

    pk = sub.add_parser(
        "package",
        help="write the release candidate model directory",
        description="Model + metrics + gate + lineage -> a servable model directory.",
    )
    pk.add_argument("--model-dir", required=True, help="trained model directory")
    pk.add_argument("--eval", required=True, help="folder written by `evaluate`")
    pk.add_argument("--out", required=True, help="package folder or s3:// URI to publish")
    pk.add_argument("--allow-failed-gate", action="store_true", help="package anyway")
    add_params_arg(pk)
    pk.set_defaults(func=_package)

    pr = sub.add_parser(
        "params",
        help="print `dvc exp run` overrides for a profile",
        description="Print -S overrides that switch params.yaml to a named profile: "
        "dvc exp run $(sign2text params wlasl)",
    )
    pr.add_argument("profile", help="profile name in params.yaml (e.g. wlasl)")
    add_params_arg(pr, quiet=False)
    pr.set_defaults(func=_params)
