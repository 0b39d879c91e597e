"""What several command modules share: the params file argument and optional paths."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

PARAMS_FILE = "params.yaml"
PARAMS_HELP = "params file (default: params.yaml in the working directory)"


def add_params_arg(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    """--params (after the subcommand too) and, for the steps, --quiet."""
    # SUPPRESS: an absent subcommand --params must not overwrite the global one with a default.
    p.add_argument("--params", default=argparse.SUPPRESS, help=PARAMS_HELP)
    p.set_defaults(reads_params=True)
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bar")


def command(
    sub: argparse._SubParsersAction,
    name: str,
    func,
    *,
    params: bool = False,
    quiet: bool = True,
    **kwargs,
) -> argparse.ArgumentParser:
    """The subcommand `name`, run by `func`: its help is the first line of func's docstring and
    its description the docstring, so the words a user reads stand beside the code they
    describe. A step (`params`) reads params.yaml: --params, also after the subcommand, and
    --quiet (unless not `quiet`); add_parser's own options (add_help, ...) pass through."""
    doc = inspect.cleandoc(func.__doc__ or name)
    p = sub.add_parser(name, help=doc.split("\n\n")[0].rstrip("."), description=doc, **kwargs)
    if params:
        add_params_arg(p, quiet)
    p.set_defaults(func=func)
    return p


def check_params_file(args: argparse.Namespace) -> None:
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


def load_params(args: argparse.Namespace):
    """The run's Params, from the file check_params_file found."""
    from components.params import Params

    return Params.load(args.params)


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
