"""`sign2text deploy` (publish a package and roll it out with a canary) and `sign2text images
stamp` (point the manifests at pushed images)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sign2text.options import command


def _deploy(args: argparse.Namespace) -> None:
    """Publish a model package and roll it out with a canary.

    Publish the package to s3:// (atomic), then create the InferenceServices or roll the new
    model out through the canary percents, smoke-checking the canary against the previous
    revision; promote, or roll back and exit 1 with the reason."""
    import yaml

    from components import steps
    from components.release.deploy import RolloutFailed, parse_percents
    from components.release.isvc import (
        DEFAULT_NAMES,
        DEFAULT_TEMPLATES,
        cluster_api,
        load_templates,
    )

    percents = parse_percents(args.canary_percents)
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


def _images_stamp(args: argparse.Namespace) -> None:
    """Point the kustomize overlays at the pushed serving and app images.

    Set REGISTRY/sign2text-serving:TAG (TAG-cuda where the overlay runs the CUDA build) and
    REGISTRY/sign2text-app:TAG in manifests/overlays/*/kustomization.yaml."""
    from components.release.images import stamp_overlays

    for overlay, images in stamp_overlays(Path(args.manifests), args.registry, args.tag).items():
        for image in images:
            print(f"{overlay}: {image}")


def add_to(sub: argparse._SubParsersAction) -> None:
    dp = command(sub, "deploy", _deploy)
    dp.add_argument("--model-dir", required=True, help="packaged model directory")
    dp.add_argument("--model-uri", required=True, help="s3://bucket/models/VERSION/")
    dp.add_argument("--namespace", default="sign2text", help="namespace (default sign2text)")
    dp.add_argument(
        "--canary-percents", default="10,50", help="canary traffic steps (default 10,50)"
    )
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

    im = sub.add_parser("images", help="container image commands").add_subparsers(
        dest="images_command", required=True, metavar="SUBCOMMAND"
    )
    st = command(im, "stamp", _images_stamp)
    st.add_argument("--registry", required=True, help="e.g. ghcr.io/acme")
    st.add_argument("--tag", required=True, help="image tag, e.g. 0.2.0 or a git sha")
    st.add_argument("--manifests", default="manifests", help="manifests folder (default manifests)")
