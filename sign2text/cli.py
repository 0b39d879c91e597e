"""`sign2text` command line. Each subcommand calls the same step function DVC and KFP call.

One module per command group (cmd_*.py), each with its parsers beside its handlers. User errors
(bad paths, bad videos, mismatched checkpoints, invalid arguments) end with exit code 2 and one
line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from sign2text import (
    __version__,
    cmd_data,
    cmd_model,
    cmd_pipeline,
    cmd_predict,
    cmd_release,
    cmd_serve,
    cmd_train,
)
from sign2text.options import PARAMS_HELP, check_params_file

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
GROUPS = (cmd_data, cmd_train, cmd_model, cmd_predict, cmd_serve, cmd_pipeline, cmd_release)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sign2text", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"sign2text {__version__}")
    p.add_argument("--params", default=None, help=PARAMS_HELP + "; also after a subcommand")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_to(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """build_parser's parse, with `serve`'s and `app`'s arguments parsed by their own parsers
    (into args.server)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    own = cmd_serve.own_parser(args.command, prog=f"sign2text {args.command}")
    if own is not None:
        args.server = own.parse_args(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if getattr(args, "reads_params", False):
            check_params_file(args)
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
