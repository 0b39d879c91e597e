"""`sign2text data ...`: the dataset, from synthesis or ingestion to validated shards.

data synth | ingest | add | validate | convert
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sign2text.options import command, load_params, optional_path


def _synth(args: argparse.Namespace) -> None:
    """Write the bundled synthetic dataset in WLASL layout.

    Write a deterministic synthetic sign dataset in WLASL layout (WLASL_v0.3.json +
    videos/<video_id>.mp4) that stands in for WLASL."""
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


def _ingest(args: argparse.Namespace) -> None:
    """Normalise WLASL json / nslt split + class list / record lists into our layout.

    Write SOURCE (WLASL_v0.3.json, nslt_N.json with --class-list, or a JSON / JSON Lines list
    of per-sample records) and its videos to OUT in our layout (WLASL_v0.3.json + videos/). The
    source is only read."""
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
            videos=optional_path(args.videos),
            class_list=optional_path(args.class_list),
            top=args.top,
            link=args.link,
            progress=not args.quiet,
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "missing_videos"}, indent=2))


def _add(args: argparse.Namespace) -> None:
    """Add an ingested folder's samples (e.g. feedback) to the versioned dataset.

    Add every sample of SOURCE (our layout, e.g. `data ingest` of the app's feedback) and its
    videos to the dataset TO, under the glosses it has. Refuses glosses TO lacks (unless --new-
    glosses), video ids it already has, and samples without videos; writes nothing then. Then
    `dvc add TO` records the new data version."""
    from components.data.merge import add_samples

    summary = add_samples(Path(args.source), Path(args.to), new_glosses=args.new_glosses)
    print(json.dumps(summary, indent=2))
    print(
        f"next: validate {args.to}, then `dvc add {args.to}` records it as a new data version "
        "(git add the .dvc file, commit, `dvc push`)",
        file=sys.stderr,
    )


def _validate(args: argparse.Namespace) -> None:
    """Great Expectations checks; quarantine bad samples, write valid.json.

    Validate a dataset's metadata and videos. Writes OUT/report.html (the report to open; works
    offline), OUT/report.json, OUT/valid.json (the samples that passed) and GX Data Docs in
    OUT/docs/. Exit 0 even with quarantined samples; 2 on a dataset-level failure. The dataset
    is only read."""
    from components import steps

    report = steps.validate(
        load_params(args),
        Path(args.data),
        Path(args.out),
        workers=args.workers,
        cache_dir=optional_path(args.cache_dir),
        progress=not args.quiet,
    )
    print(
        f"{report['total']} samples: {report['valid']} valid, {len(report['quarantined'])} "
        f"quarantined {report['reasons']}, {len(report['warnings'])} warnings; "
        f"see {Path(args.out) / 'report.html'}"
    )


def _convert(args: argparse.Namespace) -> None:
    """Decode, trim, crop, resize videos into WebDataset shards.

    Apply the shared preprocessing up to resizing and write WebDataset tar shards per split,
    with a manifest (counts, content hash)."""
    from components import steps
    from components.infra.objstore import local_output

    params, data, samples = load_params(args), Path(args.data), optional_path(args.samples)
    with local_output(args.out) as out:
        manifest = steps.convert(params, data, samples, out, progress=not args.quiet)
    counts = {k: v["samples"] for k, v in manifest["splits"].items()}
    print(f"wrote {args.out}: {counts}, skipped {len(manifest['skipped'])}")


DATA_HELP = "dataset folder (WLASL layout; default data)"
SAMPLES_HELP = "JSON list of samples to use (e.g. validation's valid.json)"


def add_to(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset commands").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND"
    )
    s = command(data, "synth", _synth)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--classes", type=int, default=10, help="number of glosses (default 10)")
    s.add_argument("--per-class", type=int, default=48, help="videos per gloss (default 48)")
    s.add_argument("--signers", type=int, default=24, help="number of signers (default 24)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    ig = command(data, "ingest", _ingest)
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
    ig.add_argument("--confirmed", action="store_true", help="feedback: also those marked correct")
    ig.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="feedback: the split its samples go to (default train)",
    )
    ig.add_argument("--quiet", action="store_true", help="no progress bar")

    ad = command(data, "add", _add)
    ad.add_argument("source", help="dataset folder to take samples from (WLASL layout)")
    ad.add_argument("--to", default="data", help="dataset folder to add to (default data)")
    ad.add_argument(
        "--new-glosses",
        action="store_true",
        help="append glosses TO lacks as new classes, after its own",
    )

    v = command(data, "validate", _validate, params=True)
    v.add_argument("--data", default="data", help=DATA_HELP)
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--workers", type=int, help="parallel probes (default: up to 4 cores)")
    v.add_argument("--cache-dir", help="probe cache (default ~/.cache/sign2text)")

    c = command(data, "convert", _convert, params=True)
    c.add_argument("--data", default="data", help=DATA_HELP)
    c.add_argument("--out", required=True, help="output folder or s3://bucket/prefix/ for shards")
    c.add_argument("--samples", help=SAMPLES_HELP)
