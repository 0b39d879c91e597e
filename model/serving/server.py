"""Serving entry point: `python -m model.serving.server --model-dir DIR_OR_URI` (the serving image's
CMD; `sign2text serve` parses with the same build_parser and runs serve()).

Starts kserve's ModelServer (REST on --http-port, gRPC on --grpc-port) with the `sign2text`
predictor from model/serving/predictor.py. KServe's own flags (--workers, --max_threads, ...) are
here too: the parser is built on kserve's (model/kserve_compat.py), as KServe's own model servers
are.
"""

from __future__ import annotations

import argparse
import logging
import sys

from model import kserve_compat
from model.files import display_uri
from model.runtimes.choice import CHOICES
from model.serving import guard
from model.serving.guard import DEFAULT_LIMITS
from model.serving.request import NAME, request_from_binary
from model.video.limits import Limits

MIB = 1 << 20


async def _not_a_v2_request(request, exc):
    where = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]
    )
    return await kserve_compat.invalid_input_response(
        request, f"not a v2 inference request: {where}"
    )


def build_parser(
    prog: str = "python -m model.serving.server", add_help: bool = True
) -> argparse.ArgumentParser:
    """This server's flags on top of kserve's own (--http_port, --grpc_port, --workers, ...)."""
    kserve_flags = kserve_compat.server_parser()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve sign2text over KServe v2 REST + gRPC.",
        parents=[kserve_flags],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model-dir",
        "--model_dir",
        required=True,
        default=argparse.SUPPRESS,
        help="model directory or s3:// gs:// ... URI",
    )
    # The spellings our manifests, Makefile and docs use, for kserve's --http_port/--grpc_port.
    for proto, name in (("http", "REST"), ("grpc", "gRPC")):
        port, dest = f"--{proto}-port", f"{proto}_port"
        p.add_argument(port, dest=dest, type=int, default=argparse.SUPPRESS, help=f"{name} port")
    p.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104  (a container listens on all)
        help="address to listen on (REST and gRPC), e.g. 127.0.0.1",
    )
    limits = p.add_argument_group(
        "limits", "what one request may cost; every one is checked before the work is spent"
    )
    d = DEFAULT_LIMITS
    for flag, kind, default, text in (
        ("--max-video-mb", float, 32, "largest video; the gRPC message limits follow it"),
        ("--max-body-mb", float, None, "largest REST body, 413 beyond (None: 2 x video + 1 MiB)"),
        ("--max-duration-s", float, d.max_duration_s, "longest video"),
        ("--max-frames", int, d.max_frames, "most frames a video (or the `frames` input) has"),
        ("--max-pixels", int, d.max_pixels, "most pixels per frame (width x height)"),
        ("--max-aspect", float, d.max_aspect, "largest long side / short side of a frame"),
        ("--max-kept-mb", float, d.max_kept_bytes / MIB, "resized frames sentence mode may hold"),
        ("--decoder-memory-mb", float, 768, "memory ceiling of each video decoder process"),
        ("--time-budget-s", float, 60, "longest a request may take, waiting included (503)"),
        ("--max-in-flight", int, 4, "requests waiting or running at once (503 + Retry-After)"),
        ("--decoders", int, 2, "video decoder processes; requests beyond wait for one"),
        ("--client-timeout-s", float, 30, "longest wait for headers, or between body chunks"),
    ):
        limits.add_argument(flag, type=kind, default=default, help=text)
    batching = p.add_argument_group(
        "batching", "concurrent requests' clips share one forward (model/serving/batching.py)"
    )
    for flag, kind, default, text in (
        ("--max-batch-size", int, 8, "most clips in one forward; 1: one request's at a time"),
        ("--max-batch-wait-ms", float, 5, "longest the first clip waits for others to join"),
    ):
        batching.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument(
        "--runtime",
        choices=CHOICES,
        default="auto",
        help="the network's runtime: openvino (OpenVINO on model.onnx, at bf16 where the "
        "CPU reports BF16 and the model's package-time precision gate passed and measured "
        "bf16 faster, else f32), onnx (ONNX Runtime on model.onnx, f32), torch (model.pt), "
        "auto (openvino where the model directory has model.onnx and --device is the CPU, "
        "onnx where OpenVINO is not installed, torch otherwise), triton (a KServe v2 "
        "predictor: set by --predictor_host); the start-up log says which, at what "
        "precision and why; the ONNX serving image has no torch",
    )
    # --predictor_protocol: kserve's default is v1; this server's predictor speaks only v2.
    p.set_defaults(
        model_name=NAME,
        grpc_max_send_message_length=None,
        grpc_max_receive_message_length=None,
        predictor_protocol="v2",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Run the server with build_parser's arguments until it is stopped."""
    from fastapi.exceptions import RequestValidationError

    from model.kserve_compat import logger
    from model.serving.predictor import Sign2TextModel

    try:
        kserve_compat.check_versions()
    except kserve_compat.KServeVersionError as e:
        raise SystemExit(f"sign2text: error: {e}") from None
    if args.workers > 1:
        # kserve's multi-process REST server spawns fresh interpreters that import a bare app:
        # none of the guards, handlers or the listen address set up below would be in them.
        raise SystemExit(
            f"sign2text: error: --workers {args.workers}: kserve's multi-process REST server "
            "would serve without this server's request limits, client timeouts and --host; "
            "one process already decodes on --decoders processes and batches forwards across "
            "requests: add replicas (minReplicas/maxReplicas) to serve more"
        )
    max_bytes = int(args.max_video_mb * MIB)
    # A video up to the limit, plus the rest of the message, must fit in one gRPC message.
    for name in ("grpc_max_send_message_length", "grpc_max_receive_message_length"):
        if getattr(args, name) is None:
            setattr(args, name, max_bytes + MIB)
    server = kserve_compat.new_model_server(
        args,
        host=args.host,
        http_protocol=guard.slow_headers(args.client_timeout_s),
        decode_binary=request_from_binary,
        model_version=lambda model: getattr(model, "version", None),
        model_platform=lambda model: getattr(model, "platform", None),
    )
    # A body that is not a v2 request (malformed JSON, no "inputs") is the client's fault too:
    # 400 with the reason, like every other bad input, rather than FastAPI's 422.
    app = kserve_compat.rest_app()
    app.add_exception_handler(RequestValidationError, _not_a_v2_request)
    for exc, handler in guard.HANDLERS.items():
        app.add_exception_handler(exc, handler)
    max_body = int((args.max_body_mb * MIB) if args.max_body_mb else 2 * max_bytes + MIB)
    app.add_middleware(
        guard.RequestGuard, max_body_bytes=max_body, body_timeout_s=args.client_timeout_s
    )
    logging.getLogger("kserve").addFilter(guard.OneLineClientErrors())

    limits = Limits(
        max_duration_s=args.max_duration_s,
        max_frames=args.max_frames,
        max_pixels=args.max_pixels,
        max_aspect=args.max_aspect,
        max_kept_bytes=int(args.max_kept_mb * MIB),
    )
    model = Sign2TextModel(
        args.model_dir,
        max_video_bytes=max_bytes,
        limits=limits,
        decoder_memory_bytes=int(args.decoder_memory_mb * MIB),
        time_budget_s=args.time_budget_s,
        max_in_flight=args.max_in_flight,
        decoders=args.decoders,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_batch_wait_s=args.max_batch_wait_ms / 1000,
        name=args.model_name,
        **_runtime(args),
    )
    logger.info("sign2text: loading model from %s", display_uri(args.model_dir))
    model.load()
    runtime = model.classifier.runtime
    logger.info("sign2text: %s runtime at %s (%s)", runtime.name, runtime.precision, runtime.reason)
    logger.info(
        "sign2text: %d classes; limits: video %d bytes, body %d bytes, %s; decoder "
        "%g MiB; %g s per request, %d in flight",
        len(model.classifier.labels),
        max_bytes,
        max_body,
        limits,
        args.decoder_memory_mb,
        args.time_budget_s,
        args.max_in_flight,
    )
    try:
        server.start([model])
    finally:
        model.stop()  # kserve stops models on SIGTERM/SIGINT; this covers any other way out
    return 0


def _runtime(args: argparse.Namespace) -> dict:
    """KServe passes --predictor_host to a transformer: the network then runs on that predictor
    (Triton, model/runtimes/triton_runtime.py) and this server decodes and preprocesses in front of
    it."""
    if not args.predictor_host:
        if args.runtime == "triton":
            raise SystemExit("sign2text: error: --runtime triton needs --predictor_host")
        return {"runtime": args.runtime}
    return {
        "runtime": "triton",
        "runtime_options": {
            "predictor_host": args.predictor_host,
            "protocol": args.predictor_protocol,
            "use_ssl": args.predictor_use_ssl,
            "timeout_s": float(args.predictor_request_timeout_seconds),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
