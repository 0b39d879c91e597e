"""`sign2text model ...`: model directories made, published and exported.

model import-i3d | publish | export | triton-repo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sign2text.options import command

# Where manifests/base's InferenceServices load their first model (a test keeps them equal).
INITIAL_MODEL_URI = "s3://sign2text/models/initial/"


def _import_i3d(args: argparse.Namespace) -> None:
    """Turn a published I3D checkpoint into a model directory.

    Turn a pytorch-i3d / WLASL state dict into a servable model directory (model.pt,
    config.json, labels.txt). Loaded with weights_only=True."""
    from model.network.bundle import import_i3d
    from model.video.clip import PreprocessConfig

    pre = PreprocessConfig(num_frames=args.num_frames, resize=args.resize, crop=args.crop)
    out, summary = import_i3d(args.weights, args.labels, args.num_classes, args.out, pre)
    print(f"{summary}; wrote {out}")


def _publish(args: argparse.Namespace) -> None:
    """Upload a model directory to s3:// (default: where the InferenceServices start).

    Publish a packaged model directory (`make demo`'s artifacts/model, or `model import-i3d`
    output) to an s3:// prefix, verified, manifest last. The default --uri is the storageUri the
    manifests' InferenceServices start from. Endpoint and keys: docs/object-storage.md."""
    from components import steps

    manifest = steps.publish(Path(args.model_dir), args.uri, overwrite=args.overwrite)
    size = sum(f["size"] for f in manifest["files"])
    print(f"published {len(manifest['files'])} files ({size} bytes) at {manifest['uri']}")


def _export(args: argparse.Namespace) -> None:
    """Write the model directory's network as model.onnx, verified against torch.

    Export the network the model directory rebuilds (eval mode, per-time logits, input B x 3 x
    T x H x W with the batch dynamic) to DIR/model.onnx and record it in config.json. ONNX
    Runtime must match torch within --tolerance on a random input and on a real clip, each
    alone and as one batch, or nothing is written (exit 2). Then bf16 is gated against f32 on
    OpenVINO where this CPU has it (config.json's "precision": docs/serving.md)."""
    from components.release.onnx_export import export_onnx
    from components.release.precision_gate import gate_precisions, summary

    rec = export_onnx(args.model_dir, video=args.video, tol=args.tolerance)
    diff = max(rec["max_abs_diff"].values())
    print(
        f"wrote {Path(args.model_dir) / rec['file']} (input {rec['input']['shape']}, output "
        f"{rec['output']['shape']}); ONNX Runtime vs torch max |diff| {diff:.2g} "
        f"(export {rec['export_s']} s, verify {rec['verify_s']} s)"
    )
    print(f"precision gate (OpenVINO, vs f32): {summary(gate_precisions(args.model_dir))}")


def _triton_repo(args: argparse.Namespace) -> None:
    """Write a Triton model repository (ONNX, dynamic batching) from a model directory.

    Write OUT/sign2text/config.pbtxt and OUT/sign2text/1/model.onnx for Triton's ONNX Runtime
    backend, with dynamic batching, from a model directory with a verified model.onnx (`model
    export DIR --format onnx` first). KServe's Triton runtime serves OUT
    (manifests/overlays/triton)."""
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


def add_to(sub: argparse._SubParsersAction) -> None:
    mdl = sub.add_parser("model", help="model commands").add_subparsers(
        dest="model_command", required=True, metavar="COMMAND"
    )
    m = command(mdl, "import-i3d", _import_i3d)
    m.add_argument("--weights", required=True, help="checkpoint file (.pt / .pth)")
    m.add_argument("--labels", required=True, help="wlasl_class_list.txt (index<TAB>gloss)")
    m.add_argument("--num-classes", type=int, required=True, help="WLASL-N: first N glosses")
    m.add_argument("--out", required=True, help="model directory to write")
    m.add_argument("--num-frames", type=int, default=64, help="frames per clip (default 64)")
    m.add_argument("--resize", type=int, default=256, help="short side before crop (256)")
    m.add_argument("--crop", type=int, default=224, help="centre crop size (default 224)")

    mp = command(mdl, "publish", _publish)
    mp.add_argument("model_dir", help="model directory (model.pt, config.json, labels.txt)")
    mp.add_argument("--uri", default=INITIAL_MODEL_URI, help=f"target ({INITIAL_MODEL_URI})")
    mp.add_argument("--overwrite", action="store_true", help="replace another package at --uri")

    me = command(mdl, "export", _export)
    me.add_argument("model_dir", metavar="DIR", help="model directory (model.pt, config.json)")
    me.add_argument("--format", choices=("onnx",), required=True, help="export format: onnx")
    me.add_argument("--video", help="clip to verify on (default: a rendered synthetic clip)")
    me.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |ONNX - torch| logit (default 1e-4)",
    )

    mt = command(mdl, "triton-repo", _triton_repo)
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
