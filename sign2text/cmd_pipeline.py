"""`sign2text pipeline compile | submit | run-local`: the Kubeflow pipeline (pipelines/).

compile and run-local build the pipeline from params.yaml, found as the steps find it: in the
working directory, or --params FILE (never beside the installed code). submit checks its --arg
values against the compiled spec it uploads."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sign2text.options import command


def _compile(args: argparse.Namespace) -> None:
    """Write the pipeline spec the Kubeflow UI uploads.

    Its parameters' defaults are the params file's values (./params.yaml unless --params)."""
    from pipelines import runner

    out = Path(args.out)
    # Recompiling keeps the image `make images` compiled in, so the spec stays runnable.
    image = args.image if args.image is not None else runner.spec_image(out)
    print(f"wrote {runner.compile_pipeline(out, image, Path(args.params))} for image {image}")
    if runner.is_placeholder(image):
        warning = (
            f"{out} names the placeholder image {image}; it runs with `pipeline run-local` "
            "but no cluster can pull it: compile with --image "
            "REGISTRY/sign2text-components:TAG before uploading"
        )
        print(f"sign2text: warning: {warning}", file=sys.stderr)


def _submit(args: argparse.Namespace) -> None:
    """Upload a pipeline version and start a run."""
    from pipelines import runner

    package = Path(args.package)
    run = runner.submit(
        args.host,
        package=package,
        arguments=runner.parse_overrides(args.arg or [], runner.spec_parameters(package)),
        experiment=args.experiment,
    )
    print(json.dumps(run))


def _run_local(args: argparse.Namespace) -> None:
    """Run the pipeline here with kfp.local.

    Built from the params file (./params.yaml unless --params), as `pipeline compile` builds it."""
    from pipelines import runner

    params = Path(args.params)
    arguments = runner.parse_overrides(args.arg or [], runner.pipeline_parameters(params))
    run = runner.run_local(Path(args.data), Path(args.out), arguments, params, image=args.image)
    print(f"run outputs: {run}")


def add_to(sub: argparse._SubParsersAction) -> None:
    pipe = sub.add_parser("pipeline", help="Kubeflow pipeline commands").add_subparsers(
        dest="pipeline_command", required=True, metavar="COMMAND"
    )
    pp = command(pipe, "compile", _compile, params=True, quiet=False)
    pp.add_argument("--out", default="pipelines/sign2text.yaml", help="spec file to write")
    pp.add_argument(
        "--image",
        help="components image REGISTRY/NAME:TAG (default: the one the existing --out file "
        "names, else the placeholder DEFAULT_IMAGE)",
    )
    ps = command(pipe, "submit", _submit)
    ps.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. http://...:8888")
    ps.add_argument("--package", default="pipelines/sign2text.yaml", help="compiled spec")
    ps.add_argument("--experiment", default="sign2text", help="experiment name")
    pr = command(pipe, "run-local", _run_local, params=True, quiet=False)
    pr.add_argument("--data", default="data", help="dataset folder (WLASL layout)")
    pr.add_argument(
        "--image", help="run each step in this components image (local Docker) instead of here"
    )
    pr.add_argument("--out", default="artifacts/pipeline", help="folder for run outputs")
    for q in (ps, pr):
        q.add_argument("--arg", action="append", metavar="KEY=VALUE", help="pipeline parameter")
