"""Serving entry point: `python -m model.server --model-dir DIR_OR_URI` (the serving image's CMD;
`sign2text serve` parses with the same build_parser and runs serve()).

Starts kserve's ModelServer (REST on --http-port, gRPC on --grpc-port) with the `sign2text`
predictor from model/serving.py. KServe's own flags (--workers, --max_threads, ...) are here
too: the parser is built on kserve.model_server.parser, as KServe's own model servers are.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys

import kserve
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane

from model.request import NAME, request_from_binary
from model.storage import display_uri

MIB = 1 << 20


class BinaryBytesDataPlane(DataPlane):
    """kserve's DataPlane with binary REST BYTES kept as bytes (see request_from_binary).

    Targets kserve 0.21.0 (DataPlane.decode_inference_request(body, headers, model_name)).
    """

    def decode_inference_request(self, body, headers, model_name):
        json_length = headers.get("inference-header-content-length")
        if isinstance(body, bytes) and json_length is not None:
            return request_from_binary(body, json_length, model_name)
        return super().decode_inference_request(body, headers, model_name)


async def _not_a_v2_request(request, exc):
    from kserve.errors import invalid_input_handler

    where = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]
    )
    return await invalid_input_handler(
        request, InvalidInput(f"not a v2 inference request: {where}")
    )


def build_parser(
    prog: str = "python -m model.server", add_help: bool = True
) -> argparse.ArgumentParser:
    """This server's flags on top of kserve's own (--http_port, --grpc_port, --workers, ...)."""
    # A copy, so that our defaults below do not change kserve's parser for anyone else.
    kserve_flags = copy.deepcopy(model_server.parser)
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve sign2text over KServe v2 REST + gRPC.",
        parents=[kserve_flags],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-dir", "--model_dir", required=True, default=argparse.SUPPRESS,
                   help="model directory or s3:// gs:// ... URI")  # fmt: skip
    # The spellings our manifests, Makefile and README use, for kserve's --http_port/--grpc_port.
    p.add_argument("--http-port", dest="http_port", type=int, default=argparse.SUPPRESS,
                   help="REST port (as --http_port)")  # fmt: skip
    p.add_argument("--grpc-port", dest="grpc_port", type=int, default=argparse.SUPPRESS,
                   help="gRPC port (as --grpc_port)")  # fmt: skip
    p.add_argument("--max-video-mb", type=float, default=32,
                   help="largest video; the gRPC message limits follow it unless "
                   "--grpc_max_*_message_length are given")  # fmt: skip
    p.add_argument("--max-duration-s", type=float, default=60, help="longest video")
    p.add_argument("--max-frames", type=int, default=1500,
                   help="most frames: `frames` input, or a video in sentence mode")  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device")
    p.set_defaults(
        model_name=NAME, grpc_max_send_message_length=None, grpc_max_receive_message_length=None
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Run the server with build_parser's arguments until it is stopped."""
    from fastapi.exceptions import RequestValidationError
    from kserve.logging import logger

    from model.serving import Sign2TextModel

    max_bytes = int(args.max_video_mb * MIB)
    # A video up to the limit, plus the rest of the message, must fit in one gRPC message.
    for name in ("grpc_max_send_message_length", "grpc_max_receive_message_length"):
        if getattr(args, name) is None:
            setattr(args, name, max_bytes + MIB)
    # kserve reads part of its settings (logging; gRPC options: GRPCServer gets
    # vars(model_server.args)) from the namespace it parsed out of sys.argv at import, which
    # `sign2text serve` does not share: that namespace takes ours.
    vars(model_server.args).update({k: getattr(args, k) for k in vars(model_server.args)})
    # ModelServer's defaults were bound from that namespace at import, so each is passed.
    wanted = inspect.signature(kserve.ModelServer).parameters
    server = kserve.ModelServer(**{k: v for k, v in vars(args).items() if k in wanted})
    server.dataplane = BinaryBytesDataPlane(model_registry=server.registered_models)
    # A body that is not a v2 request (malformed JSON, no "inputs") is the client's fault too:
    # 400 with the reason, like every other bad input, rather than FastAPI's 422.
    model_server.app.add_exception_handler(RequestValidationError, _not_a_v2_request)

    model = Sign2TextModel(
        args.model_dir,
        max_video_bytes=max_bytes,
        max_duration_s=args.max_duration_s,
        max_frames=args.max_frames,
        device=args.device,
        name=args.model_name,
    )
    logger.info("sign2text: loading model from %s", display_uri(args.model_dir))
    model.load()
    logger.info(
        "sign2text: %d classes; limits: video %d bytes, %g s, %d frames",
        len(model.classifier.labels),
        max_bytes,
        args.max_duration_s,
        args.max_frames,
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
