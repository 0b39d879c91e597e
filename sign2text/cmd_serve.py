"""`sign2text serve | app`: the model server and the web app. Neither declares flags here:
parse_args hands their arguments, --help included, to the server's own parser
(model/serving/server.py, kserve's flags and ours) and the app's (app/main.py), the parsers the
serving and app images run, so only these commands pay for importing kserve or the app."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> None:
    from model.serving import server

    server.serve(args.server)


def _app(args: argparse.Namespace) -> None:
    from app.main import run

    run(args.server)


def own_parser(command: str, prog: str) -> argparse.ArgumentParser | None:
    """The parser that takes `command`'s arguments, if it is serve or app."""
    if command == "serve":
        from model.serving.server import build_parser

        return build_parser(prog=prog)
    if command == "app":
        from app.main import build_parser

        return build_parser(prog=prog)
    return None


def add_to(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", add_help=False, help="serve a model over KServe v2 REST + gRPC")
    sv.set_defaults(func=_serve)
    ap = sub.add_parser("app", add_help=False, help="the web app, against a served model")
    ap.set_defaults(func=_app)
