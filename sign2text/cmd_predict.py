"""`sign2text predict-local | predict-batch | predict`: a model's answers, in this process, over a
folder or bucket of videos, or from a running server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sign2text.options import command


def _predict_local(args: argparse.Namespace) -> None:
    """Predict one video in-process, no server.

    Print the top-k glosses and probabilities for a video."""
    from model.predict import Classifier

    clf = Classifier(args.model_dir)
    pred = clf.word(args.video, top_k=args.top_k)
    if args.json:
        print(json.dumps({"glosses": pred.glosses, "scores": pred.scores}))
        return
    print(f"{'rank':>4}  {'gloss':<20} probability")
    for i, (g, s) in enumerate(zip(pred.glosses, pred.scores, strict=True), 1):
        print(f"{i:>4}  {g:<20} {s:.4f}")


def _predict_batch(args: argparse.Namespace) -> None:
    """Score every video under a folder or s3:// prefix in-process, resumable.

    Score every video (.mp4 .webm .avi .mov .mkv, recursively) under SRC with the model in
    parallel processes; append one JSON line per video to --out as each finishes. A rerun skips
    the videos --out already holds. A bad video gets an `error` line and the batch goes on. S3
    endpoint and keys: docs/object-storage.md."""
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


def _predict(args: argparse.Namespace) -> None:
    """Send a video to a running server (v2 protocol, REST or gRPC).

    Client of a running sign2text server; needs neither torch nor the model."""
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


VIDEO_HELP = "video file (mp4, webm, avi, mov...)"
TOP_K_HELP = "word mode: how many glosses (5)"


def add_to(sub: argparse._SubParsersAction) -> None:
    pl = command(sub, "predict-local", _predict_local)
    pl.add_argument("model_dir", help="model directory")
    pl.add_argument("video", help=VIDEO_HELP)
    pl.add_argument("--top-k", type=int, default=5, help="how many glosses (default 5)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")

    pb = command(sub, "predict-batch", _predict_batch)
    pb.add_argument("model_dir", help="model directory or published s3:// URI")
    pb.add_argument("src", help="folder of videos, or s3://bucket/prefix/")
    pb.add_argument("--out", required=True, help="results file (JSON Lines), appended")
    pb.add_argument("--mode", choices=("word", "sentence"), default="word")
    pb.add_argument("--top-k", type=int, default=5, help=TOP_K_HELP)
    pb.add_argument("--workers", type=int, help="processes (default: 1 per 2 cores, at most 4)")
    pb.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu)")
    pb.add_argument("--retry-errors", action="store_true", help="score errors in --out again")
    pb.add_argument("--quiet", action="store_true", help="no progress bar")

    pc = command(sub, "predict", _predict)
    pc.add_argument("video", help=VIDEO_HELP)
    where = pc.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="REST endpoint, e.g. http://127.0.0.1:8080")
    where.add_argument("--grpc", help="gRPC endpoint host:port, e.g. 127.0.0.1:8081")
    pc.add_argument("--mode", choices=("word", "sentence"), default="word")
    pc.add_argument("--top-k", type=int, default=5, help=TOP_K_HELP)
    pc.add_argument("--window", type=int, help="sentence mode: frames per window (model's)")
    pc.add_argument("--stride", type=int, help="sentence mode: frames between window centres")
    pc.add_argument("--threshold", type=float, help="sentence mode: P(sign) a frame needs (0.5)")
    pc.add_argument("--json", action="store_true", help="print JSON instead of a table")
