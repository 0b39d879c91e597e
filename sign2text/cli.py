"""`sign2text` command line. Each subcommand calls the same step function DVC and KFP call.

User errors (bad paths, bad videos, mismatched checkpoints, invalid arguments) end with exit
code 2 and one line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
PARAMS_FILE = "params.yaml"
PARAMS_HELP = "params file (default: params.yaml in the working directory)"
# Where manifests/base's InferenceServices load their first model (a test keeps them equal).
INITIAL_MODEL_URI = "s3://sign2text/models/initial/"


def _cmd_synth(args: argparse.Namespace) -> None:
    from components.data.synth import synthesize

    summary = synthesize(
        Path(args.out),
        classes=args.classes,
        per_class=args.per_class,
        signers=args.signers,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2))


def _cmd_import_i3d(args: argparse.Namespace) -> None:
    from model.network.bundle import import_i3d
    from model.video.clip import PreprocessConfig

    pre = PreprocessConfig(num_frames=args.frames, resize=args.resize, crop=args.crop)
    out, summary = import_i3d(args.weights, args.labels, args.num_classes, args.out, pre)
    print(f"{summary}; wrote {out}")


def _cmd_predict_local(args: argparse.Namespace) -> None:
    from model.predict import Classifier

    clf = Classifier(args.model_dir)
    pred = clf.word(args.video, top_k=args.top_k)
    if args.json:
        print(json.dumps({"glosses": pred.glosses, "scores": pred.scores}))
        return
    print(f"{'rank':>4}  {'gloss':<20} probability")
    for i, (g, s) in enumerate(zip(pred.glosses, pred.scores, strict=True), 1):
        print(f"{i:>4}  {g:<20} {s:.4f}")


def _cmd_predict_batch(args: argparse.Namespace) -> None:
    from components import steps
    from components.infra.objstore import local_input
    from components.scoring.predict_batch import summary_line

    with local_input(args.model_dir) as model_dir:
        summary = steps.predict_batch(
            model_dir,
            args.src,
            Path(args.out),
            mode=args.mode,
            top_k=args.top_k,
            workers=args.workers,
            device=args.device,
            retry_errors=args.retry_errors,
            progress=not args.quiet,
        )
    print(summary_line(summary))


def _params(args: argparse.Namespace):
    from components.params import Params

    return Params.load(args.params)


def _check_params_file(args: argparse.Namespace) -> None:
    """Fail before the slow imports, saying how to fix it: params.yaml is looked up in the
    working directory, so the usual cause is running from outside the repository root."""
    path = Path(args.params or PARAMS_FILE)
    if not path.is_file():
        where = "" if path.is_absolute() else f" in {Path.cwd()}"
        hint = (
            " (given with --params)"
            if args.params
            else "; run sign2text from the repository root, or pass --params FILE"
        )
        raise FileNotFoundError(f"params file not found: {path}{where}{hint}")
    args.params = str(path)


def _cmd_convert(args: argparse.Namespace) -> None:
    from components import steps
    from components.infra.objstore import local_output

    with local_output(args.out) as out:
        manifest = steps.convert(
            _params(args), Path(args.data), _path(args.samples), out, progress=not args.quiet
        )
    counts = {k: v["samples"] for k, v in manifest["splits"].items()}
    print(f"wrote {args.out}: {counts}, skipped {len(manifest['skipped'])}")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _cmd_ingest(args: argparse.Namespace) -> None:
    from components.data.feedback_ingest import ingest_feedback, is_feedback_source
    from components.data.ingest import ingest

    if is_feedback_source(args.source):
        other = ("videos", "class_list", "top", "link")
        if given := [f for f in other if getattr(args, f) not in (None, False)]:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"{flags}: not for a feedback source (the app's store)")
        summary = ingest_feedback(
            args.source,
            Path(args.out),
            confirmed=args.confirmed,
            split=args.split or "train",
            progress=not args.quiet,
        )
    elif args.confirmed or args.split:
        raise ValueError("--confirmed and --split are for a feedback source (s3:// or records/)")
    else:
        summary = ingest(
            Path(args.source),
            Path(args.out),
            videos=Path(args.videos) if args.videos else None,
            class_list=Path(args.class_list) if args.class_list else None,
            top=args.top,
            link=args.link,
            progress=not args.quiet,
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "missing_videos"}, indent=2))


def _cmd_add(args: argparse.Namespace) -> None:
    from components.data.merge import add_samples

    summary = add_samples(Path(args.source), Path(args.to), new_glosses=args.new_glosses)
    print(json.dumps(summary, indent=2))
    print(
        f"next: validate {args.to}, then `dvc add {args.to}` records it as a new data version "
        "(git add the .dvc file, commit, `dvc push`)",
        file=sys.stderr,
    )


def _cmd_validate(args: argparse.Namespace) -> None:
    from components import steps

    report = steps.validate(
        _params(args),
        Path(args.dataset),
        Path(args.out),
        workers=args.workers,
        cache_dir=_path(args.cache_dir),
        progress=not args.quiet,
    )
    print(
        f"{report['total']} samples: {report['valid']} valid, {len(report['quarantined'])} "
        f"quarantined {report['reasons']}, {len(report['warnings'])} warnings; "
        f"see {Path(args.out) / 'report.html'}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from components import steps
    from components.infra.objstore import local_input

    params = _params(args)
    _ = params.train  # a bad recipe, or a device this machine lacks, fails before any fetch
    with local_input(args.shards) as shards:
        final = steps.train(
            params, shards, Path(args.out), resume=args.resume, progress=not args.quiet
        )
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        print(json.dumps(final))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from components import steps
    from components.evaluation.evaluate import sentence_summary
    from components.infra.objstore import local_input

    with local_input(args.model) as model_dir:
        metrics, decision = steps.evaluate(
            _params(args),
            model_dir,
            Path(args.data),
            _path(args.samples),
            Path(args.out),
            baseline=_path(args.baseline),
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


def _cmd_package(args: argparse.Namespace) -> None:
    from components import steps
    from components.infra.objstore import local_output

    with local_output(args.out) as out:
        lineage = steps.package(
            _params(args),
            Path(args.model),
            Path(args.eval),
            out,
            allow_failed_gate=args.allow_failed_gate,
        )
    onnx = (lineage.get("onnx") or {}).get("exported")
    onnx = {True: "model.onnx checked", False: "model.pt only"}.get(onnx, "ONNX not asked for")
    print(f"packaged {args.out} (gate {lineage['gate']}, data {lineage['data_md5']}, {onnx})")


def _cmd_params(args: argparse.Namespace) -> None:
    from components.params import profile_overrides

    print(" ".join(profile_overrides(_params(args).values, args.profile)))


def _cmd_app(args: argparse.Namespace) -> None:
    from app.main import run

    run(args.server)


def _cmd_serve(args: argparse.Namespace) -> None:
    from model.serving import server

    server.serve(args.server)


def _add_params_arg(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    # SUPPRESS: an absent subcommand --params must not overwrite the global one with a default.
    p.add_argument("--params", default=argparse.SUPPRESS, help=PARAMS_HELP)
    p.set_defaults(reads_params=True)
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_predict(args: argparse.Namespace) -> None:
    from components.infra.v2client import format_table, predict, to_json

    sentence = {"window": args.window, "stride": args.stride, "threshold": args.threshold}
    result = predict(
        args.video,
        url=args.url,
        grpc=args.grpc,
        mode=args.mode,
        top_k=args.top_k,
        sentence=sentence,
    )
    print(to_json(result) if args.json else format_table(result))


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from pipelines import runner

    arguments = runner.parse_overrides(getattr(args, "arg", None) or [])
    if args.pipeline_command == "compile":
        out = Path(args.out)
        # Recompiling keeps the image `make images` compiled in, so the spec stays runnable.
        image = args.image if args.image is not None else runner.spec_image(out)
        print(f"wrote {runner.compile_pipeline(out, image)} for image {image}")
        if runner.is_placeholder(image):
            warning = (
                f"{out} names the placeholder image {image}; it runs with `pipeline run-local` "
                "but no cluster can pull it: compile with --image "
                "REGISTRY/sign2text-components:TAG before uploading"
            )
            print(f"sign2text: warning: {warning}", file=sys.stderr)
    elif args.pipeline_command == "submit":
        print(
            json.dumps(
                runner.submit(
                    args.host,
                    package=Path(args.package),
                    arguments=arguments,
                    experiment=args.experiment,
                )
            )
        )
    else:
        print(f"run outputs: {runner.run_local(Path(args.data), Path(args.out), arguments)}")


def _cmd_deploy(args: argparse.Namespace) -> None:
    import yaml

    from components import steps
    from components.release.deploy import RolloutFailed
    from components.release.isvc import (
        DEFAULT_NAMES,
        DEFAULT_TEMPLATES,
        cluster_api,
        load_templates,
    )

    try:
        percents = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise ValueError(f"--steps wants comma-separated percents, got {args.steps!r}") from None
    if not args.dry_run and not args.smoke_video:  # said in the CLI's words
        raise ValueError("--smoke-video is required (sample videos for the smoke checks)")
    templates = [Path(t) for t in args.template] or list(DEFAULT_TEMPLATES)
    names = list(load_templates(templates)) if args.template else list(DEFAULT_NAMES)
    try:
        result = steps.deploy(
            Path(args.model_dir),
            args.model_uri,
            namespace=args.namespace,
            names=names,
            percents=percents,
            soak_s=args.soak_s,
            timeout_s=args.timeout_s,
            max_error_rate_increase=args.max_error_rate_increase,
            max_p95_increase=args.max_p95_increase,
            smoke_videos=args.smoke_video,
            api=cluster_api(args.kubeconfig, args.context),
            templates=templates,
            dry_run=args.dry_run,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except RolloutFailed as e:
        print(f"sign2text: deploy failed ({e.result.get('outcome')}): {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.dry_run:
        for a in result["actions"] + [
            {**a, "verb": "on failure: patch"} for a in result.get("on_failure", [])
        ]:
            print(f"# {a['verb']} InferenceService {args.namespace}/{a['name']}")
            print(yaml.safe_dump(a["body"], sort_keys=False), end="---\n")
        return
    print(json.dumps({k: result.get(k) for k in ("outcome", "model_uri", "from", "steps")}))


def _cmd_model_publish(args: argparse.Namespace) -> None:
    from components import steps

    manifest = steps.publish(Path(args.model_dir), args.uri, overwrite=args.overwrite)
    size = sum(f["size"] for f in manifest["files"])
    print(f"published {len(manifest['files'])} files ({size} bytes) at {manifest['uri']}")


def _cmd_model_export(args: argparse.Namespace) -> None:
    from components.release.onnx_export import export_onnx

    rec = export_onnx(args.model_dir, video=args.video, tol=args.tolerance)
    diff = max(rec["max_abs_diff"].values())
    print(
        f"wrote {Path(args.model_dir) / rec['file']} (input {rec['input']['shape']}, output "
        f"{rec['output']['shape']}); ONNX Runtime vs torch max |diff| {diff:.2g} "
        f"(export {rec['export_s']} s, verify {rec['verify_s']} s)"
    )


def _cmd_model_triton_repo(args: argparse.Namespace) -> None:
    from components.release.triton_repo import write_repository

    target = write_repository(
        args.model_dir,
        args.out,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {target}/config.pbtxt and {target}/1/model.onnx (max_batch_size "
        f"{args.max_batch_size}, dynamic batching within {args.max_queue_delay_us} us); upload "
        f"{args.out} where the triton overlay's predictor storageUri points"
    )


def _cmd_images_stamp(args: argparse.Namespace) -> None:
    from components.release.images import stamp_overlays

    for overlay, images in stamp_overlays(Path(args.manifests), args.registry, args.tag).items():
        for image in images:
            print(f"{overlay}: {image}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sign2text", description=__doc__.splitlines()[0])
    p.add_argument("--params", default=None, help=PARAMS_HELP + "; also after a subcommand")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="dataset commands").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND"
    )
    s = data.add_parser(
        "synth",
        help="write the bundled synthetic dataset in WLASL layout",
        description="Write a deterministic synthetic sign dataset in WLASL layout "
        "(WLASL_v0.3.json + videos/<video_id>.mp4) that stands in for WLASL.",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--classes", type=int, default=10, help="number of glosses (default 10)")
    s.add_argument("--per-class", type=int, default=48, help="videos per gloss (default 48)")
    s.add_argument("--signers", type=int, default=24, help="number of signers (default 24)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    c = data.add_parser(
        "convert",
        help="decode, trim, crop, resize videos into WebDataset shards",
        description="Apply the shared preprocessing up to resizing and write WebDataset tar "
        "shards per split, with a manifest (counts, content hash).",
    )
    c.add_argument("--data", default="data", help="dataset folder (WLASL layout)")
    c.add_argument("--out", required=True, help="output folder or s3://bucket/prefix/ for shards")
    c.add_argument("--samples", help="JSON list of samples to use (e.g. validation's valid.json)")
    _add_params_arg(c)
    c.set_defaults(func=_cmd_convert)

    ig = data.add_parser(
        "ingest",
        help="normalise WLASL json / nslt split + class list / record lists into our layout",
        description="Write SOURCE (WLASL_v0.3.json, nslt_N.json with --class-list, or a JSON "
        "/ JSON Lines list of per-sample records) and its videos to OUT in our layout "
        "(WLASL_v0.3.json + videos/). The source is only read.",
    )
    ig.add_argument(
        "source",
        help="metadata file (or a folder holding WLASL_v0.3.json), or the app's feedback: "
        "s3://BUCKET/PREFIX or a folder with records/ + videos/",
    )
    ig.add_argument("--out", required=True, help="new dataset folder (must be empty)")
    ig.add_argument("--videos", help="folder of <video_id>.mp4 (default: SOURCE's videos/)")
    ig.add_argument("--class-list", help="wlasl_class_list.txt (index<TAB>gloss)")
    ig.add_argument("--top", type=int, help="keep the first N glosses (WLASL100: 100)")
    ig.add_argument("--link", action="store_true", help="hard-link videos instead of copying")
    ig.add_argument(
        "--confirmed",
        action="store_true",
        help="feedback: also the predictions people marked correct",
    )
    ig.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="feedback: the split its samples go to (default train)",
    )
    ig.add_argument("--quiet", action="store_true", help="no progress bar")
    ig.set_defaults(func=_cmd_ingest)

    ad = data.add_parser(
        "add",
        help="add an ingested folder's samples (e.g. feedback) to the versioned dataset",
        description="Add every sample of SOURCE (our layout, e.g. `data ingest` of the app's "
        "feedback) and its videos to the dataset TO, under the glosses it has. Refuses glosses TO "
        "lacks (unless --new-glosses), video ids it already has, and samples without videos; "
        "writes nothing then. Then `dvc add TO` records the new data version.",
    )
    ad.add_argument("source", help="dataset folder to take samples from (WLASL layout)")
    ad.add_argument("--to", default="data", help="dataset folder to add to (default data)")
    ad.add_argument(
        "--new-glosses",
        action="store_true",
        help="append glosses TO lacks as new classes, after its own",
    )
    ad.set_defaults(func=_cmd_add)

    v = data.add_parser(
        "validate",
        help="Great Expectations checks; quarantine bad samples, write valid.json",
        description="Validate a dataset's metadata and videos. Writes OUT/report.html (the "
        "report to open; works offline), OUT/report.json, OUT/valid.json (the samples that "
        "passed) and GX Data Docs in OUT/docs/. Exit 0 even "
        "with quarantined samples; 2 on a dataset-level failure. The dataset is only read.",
    )
    v.add_argument("dataset", help="dataset folder (WLASL layout)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--workers", type=int, help="parallel probes (default: up to 4 cores)")
    v.add_argument("--cache-dir", help="probe cache (default ~/.cache/sign2text)")
    _add_params_arg(v)
    v.set_defaults(func=_cmd_validate)

    t = sub.add_parser(
        "train",
        help="train I3D on shards",
        description="Train on the train split, validate on val each epoch, checkpoint every "
        "epoch; writes OUT/model (serving format), OUT/metrics.json, OUT/history.json.",
    )
    t.add_argument("--shards", required=True, help="`data convert` output (folder or s3://)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    _add_params_arg(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="top-1/5/10, per-class accuracy, confusion matrix, release gate",
        description="Evaluate a model directory on the dataset's val and test splits and "
        "decide the release gate (OUT/metrics.json, OUT/gate.json).",
    )
    e.add_argument("--model", required=True, help="model directory or published s3:// URI")
    e.add_argument("--data", default="data", help="dataset folder (WLASL layout)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--baseline", help="production model's metrics.json (overrides params)")
    e.add_argument("--samples", help="JSON list of samples to use (e.g. validation's valid.json)")
    _add_params_arg(e)
    e.set_defaults(func=_cmd_evaluate)

    pk = sub.add_parser(
        "package",
        help="write the release candidate model directory",
        description="Model + metrics + gate + lineage -> a servable model directory.",
    )
    pk.add_argument("--model", required=True, help="trained model directory")
    pk.add_argument("--eval", required=True, help="folder written by `evaluate`")
    pk.add_argument("--out", required=True, help="package folder or s3:// URI to publish")
    pk.add_argument("--allow-failed-gate", action="store_true", help="package anyway")
    _add_params_arg(pk)
    pk.set_defaults(func=_cmd_package)

    pr = sub.add_parser(
        "params",
        help="print `dvc exp run` overrides for a profile",
        description="Print -S overrides that switch params.yaml to a named profile: "
        "dvc exp run $(sign2text params wlasl)",
    )
    pr.add_argument("profile", help="profile name in params.yaml (e.g. wlasl)")
    _add_params_arg(pr, quiet=False)
    pr.set_defaults(func=_cmd_params)

    mdl = sub.add_parser("model", help="model commands").add_subparsers(
        dest="model_command", required=True, metavar="COMMAND"
    )
    m = mdl.add_parser(
        "import-i3d",
        help="turn a published I3D checkpoint into a model directory",
        description="Turn a pytorch-i3d / WLASL state dict into a servable model directory "
        "(model.pt, config.json, labels.txt). Loaded with weights_only=True.",
    )
    m.add_argument("--weights", required=True, help="checkpoint file (.pt / .pth)")
    m.add_argument("--labels", required=True, help="wlasl_class_list.txt (index<TAB>gloss)")
    m.add_argument("--num-classes", type=int, required=True, help="WLASL-N: first N glosses")
    m.add_argument("--out", required=True, help="model directory to write")
    m.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    m.add_argument("--resize", type=int, default=256, help="short side before crop (256)")
    m.add_argument("--crop", type=int, default=224, help="centre crop size (default 224)")
    m.set_defaults(func=_cmd_import_i3d)
    mp = mdl.add_parser(
        "publish",
        help="upload a model directory to s3:// (default: where the InferenceServices start)",
        description="Publish a packaged model directory (`make demo`'s artifacts/model, or "
        "`model import-i3d` output) to an s3:// prefix, verified, manifest last. The default "
        f"is {INITIAL_MODEL_URI}, the storageUri the manifests' InferenceServices start from. "
        "Endpoint and keys: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.",
    )
    mp.add_argument("model_dir", help="model directory (model.pt, config.json, labels.txt)")
    mp.add_argument("--uri", default=INITIAL_MODEL_URI, help="target s3:// prefix")
    mp.add_argument("--overwrite", action="store_true", help="replace another package at --uri")
    mp.set_defaults(func=_cmd_model_publish)
    me = mdl.add_parser(
        "export",
        help="write the model directory's network as model.onnx, verified against torch",
        description="Export the network the model directory rebuilds (eval mode, per-time "
        "logits, input B x 3 x T x H x W with the batch dynamic) to DIR/model.onnx and record "
        "it in config.json. ONNX Runtime must match torch within --tolerance on a random input "
        "and on a real clip, each alone and as one batch, or nothing is written (exit 2).",
    )
    me.add_argument("model_dir", metavar="DIR", help="model directory (model.pt, config.json)")
    me.add_argument("--format", choices=("onnx",), required=True, help="export format: onnx")
    me.add_argument("--video", help="clip to verify on (default: a rendered synthetic clip)")
    me.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |ONNX - torch| logit (default 1e-4)",
    )
    me.set_defaults(func=_cmd_model_export)
    mt = mdl.add_parser(
        "triton-repo",
        help="write a Triton model repository (ONNX, dynamic batching) from a model directory",
        description="Write OUT/sign2text/config.pbtxt and OUT/sign2text/1/model.onnx for "
        "Triton's ONNX Runtime backend, with dynamic batching, from a model directory with a "
        "verified model.onnx (`model export DIR --format onnx` first). KServe's Triton runtime "
        "serves OUT (manifests/overlays/triton).",
    )
    mt.add_argument("model_dir", metavar="MODEL_DIR", help="model directory with model.onnx")
    mt.add_argument("out", metavar="OUT", help="repository directory to write")
    mt.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="most clips Triton runs in one forward (default 8)",
    )
    mt.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="longest a request waits for others to batch with, in microseconds (default 2000)",
    )
    mt.add_argument("--overwrite", action="store_true", help="replace OUT/sign2text")
    mt.set_defaults(func=_cmd_model_triton_repo)

    pl = sub.add_parser(
        "predict-local",
        help="predict one video in-process, no server",
        description="Print the top-k glosses and probabilities for a video.",
    )
    pl.add_argument("model_dir", help="model directory")
    pl.add_argument("video", help="video file (mp4, webm, avi, mov...)")
    pl.add_argument("--top-k", type=int, default=5, help="how many glosses (default 5)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.set_defaults(func=_cmd_predict_local)

    pb = sub.add_parser(
        "predict-batch",
        help="score every video under a folder or s3:// prefix in-process, resumable",
        description="Score every video (.mp4 .webm .avi .mov .mkv, recursively) under SRC with "
        "the model in parallel processes; append one JSON line per video to --out as each "
        "finishes. A rerun skips the videos --out already holds. A bad video gets an `error` "
        "line and the batch goes on. S3 endpoint and keys: AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.",
    )
    pb.add_argument("model_dir", help="model directory or published s3:// URI")
    pb.add_argument("src", help="folder of videos, or s3://bucket/prefix/")
    pb.add_argument("--out", required=True, help="results file (JSON Lines), appended")
    pb.add_argument("--mode", choices=("word", "sentence"), default="word")
    pb.add_argument("--top-k", type=int, default=5, help="word mode: how many glosses (5)")
    pb.add_argument("--workers", type=int, help="processes (default: 1 per 2 cores, at most 4)")
    pb.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu)")
    pb.add_argument(
        "--retry-errors",
        action="store_true",
        help="score again the videos --out holds an error for",
    )
    pb.add_argument("--quiet", action="store_true", help="no progress bar")
    pb.set_defaults(func=_cmd_predict_batch)

    # `serve` declares no flags: parse_args hands its arguments, --help included, to
    # model/serving/server.py's own parser (kserve's flags and the server's), so only `serve` pays
    # for importing kserve.
    sv = sub.add_parser("serve", add_help=False, help="serve a model over KServe v2 REST + gRPC")
    sv.set_defaults(func=_cmd_serve)
    # `app` likewise: app/main.py's parser (the app image runs `python -m app.main`).
    ap = sub.add_parser("app", add_help=False, help="the web app, against a served model")
    ap.set_defaults(func=_cmd_app)

    pc = sub.add_parser(
        "predict",
        help="send a video to a running server (v2 protocol, REST or gRPC)",
        description="Client of a running sign2text server; needs neither torch nor the model.",
    )
    pc.add_argument("video", help="video file (mp4, webm, avi, mov...)")
    where = pc.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="REST endpoint, e.g. http://127.0.0.1:8080")
    where.add_argument("--grpc", help="gRPC endpoint host:port, e.g. 127.0.0.1:8081")
    pc.add_argument("--mode", choices=("word", "sentence"), default="word")
    pc.add_argument("--top-k", type=int, default=5, help="word mode: how many glosses (5)")
    pc.add_argument("--window", type=int, help="sentence mode: frames per window (model's)")
    pc.add_argument("--stride", type=int, help="sentence mode: frames between window centres")
    pc.add_argument("--threshold", type=float, help="sentence mode: P(sign) a frame needs (0.5)")
    pc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pc.set_defaults(func=_cmd_predict)

    pipe = sub.add_parser("pipeline", help="Kubeflow pipeline commands").add_subparsers(
        dest="pipeline_command", required=True, metavar="COMMAND"
    )
    pp = pipe.add_parser("compile", help="write the pipeline spec the Kubeflow UI uploads")
    pp.add_argument("--out", default="pipelines/sign2text.yaml", help="spec file to write")
    pp.add_argument(
        "--image",
        help="components image REGISTRY/NAME:TAG (default: the one the existing --out file "
        "names, else the placeholder DEFAULT_IMAGE)",
    )
    ps = pipe.add_parser("submit", help="upload a pipeline version and start a run")
    ps.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. http://...:8888")
    ps.add_argument("--package", default="pipelines/sign2text.yaml", help="compiled spec")
    ps.add_argument("--experiment", default="sign2text", help="experiment name")
    pr = pipe.add_parser("run-local", help="run the pipeline here with kfp.local")
    pr.add_argument("--data", default="data", help="dataset folder (WLASL layout)")
    pr.add_argument("--out", default="artifacts/pipeline", help="folder for run outputs")
    for q in (ps, pr):
        q.add_argument("--arg", action="append", metavar="KEY=VALUE", help="pipeline parameter")
    for q in (pp, ps, pr):
        q.set_defaults(func=_cmd_pipeline)

    dp = sub.add_parser(
        "deploy",
        help="publish a model package and roll it out with a canary",
        description="Publish the package to s3:// (atomic), then create the InferenceServices "
        "or roll the new model out through the canary steps, smoke-checking the canary against "
        "the previous revision; promote, or roll back and exit 1 with the reason.",
    )
    dp.add_argument("--model-dir", required=True, help="packaged model directory")
    dp.add_argument("--model-uri", required=True, help="s3://bucket/models/VERSION/")
    dp.add_argument("--namespace", default="sign2text", help="namespace (default sign2text)")
    dp.add_argument("--steps", default="10,50", help="canary percents (default 10,50)")
    dp.add_argument("--soak-s", type=float, default=60, help="seconds at each step (60)")
    dp.add_argument("--timeout-s", type=float, default=600, help="wait limit per step (600)")
    dp.add_argument("--smoke-video", action="append", default=[], help="sample video (repeat)")
    dp.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=0.0,
        help="canary error rate may exceed prev's by this (default 0)",
    )
    dp.add_argument(
        "--max-p95-increase",
        type=float,
        default=0.5,
        help="canary p95 may exceed prev's by this fraction (default 0.5)",
    )
    dp.add_argument(
        "--template",
        action="append",
        default=[],
        help="InferenceService template (repeat; default: manifests/base)",
    )
    dp.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster, else ~/.kube/config)")
    dp.add_argument("--context", help="kubeconfig context")
    dp.add_argument("--dry-run", action="store_true", help="print the requests, send none")
    dp.set_defaults(func=_cmd_deploy)

    im = sub.add_parser("images", help="container image commands").add_subparsers(
        dest="images_command", required=True, metavar="SUBCOMMAND"
    )
    st = im.add_parser(
        "stamp",
        help="point the kustomize overlays at the pushed serving and app images",
        description="Set REGISTRY/sign2text-serving:TAG (TAG-cuda where the overlay runs the "
        "CUDA build) and REGISTRY/sign2text-app:TAG in manifests/overlays/*/kustomization.yaml.",
    )
    st.add_argument("--registry", required=True, help="e.g. ghcr.io/acme")
    st.add_argument("--tag", required=True, help="image tag, e.g. 0.2.0 or a git sha")
    st.add_argument("--manifests", default="manifests", help="manifests folder (default manifests)")
    st.set_defaults(func=_cmd_images_stamp)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """build_parser's parse, with `serve`'s arguments parsed by the server (into args.server)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from model.serving.server import build_parser as server_parser

        args.server = server_parser(prog="sign2text serve").parse_args(rest)
    elif args.command == "app":
        from app.main import build_parser as app_parser

        args.server = app_parser(prog="sign2text app").parse_args(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if getattr(args, "reads_params", False):
            _check_params_file(args)
        args.func(args)
    except USER_ERRORS as e:
        print(f"sign2text: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sign2text: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
