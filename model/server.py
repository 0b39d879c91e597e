"""Serving entry point: `python -m model.server --model-dir DIR_OR_URI` (the serving image's CMD).

Starts kserve's ModelServer (REST on --http-port, gRPC on --grpc-port) with the `sign2text`
predictor from model/serving.py.
"""

from __future__ import annotations

import argparse
import struct
import sys

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import (
    InferInput,
    InferRequest,
    RequestedOutput,
    deserialize_bytes_tensor,
)
from kserve.utils.numpy_codec import to_np_dtype

from model.storage import display_uri

MIB = 1 << 20


def _binary_tensor(raw: bytes, name: str, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(raw)
        except struct.error:
            raise InvalidInput(
                f"input {name}: malformed BYTES data (4-byte length prefixes)"
            ) from None
    dtype = to_np_dtype(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name}: unknown datatype {datatype}")
    try:
        return np.frombuffer(raw, dtype=dtype)
    except ValueError as e:
        raise InvalidInput(f"input {name}: {len(raw)} bytes are not whole {datatype}s") from e


def request_from_binary(body: bytes, json_length: str, model_name: str) -> InferRequest:
    """A REST binary-data-extension request -> InferRequest, keeping BYTES tensors as bytes.

    kserve 0.21's InferRequest.from_bytes turns binary BYTES tensors into UTF-8 str (JSON
    semantics), so an encoded video fails there with a 500 before any model code runs, and
    models get no hook ahead of that decoding. This is the same parse minus that conversion
    (binary tensors stay numpy arrays, which also skips a per-element Python list for frames).
    """
    try:
        n = int(json_length)
        header = orjson.loads(body[:n])
    except (ValueError, orjson.JSONDecodeError) as e:
        raise InvalidInput(f"unreadable binary request header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('the request header must be a JSON object with an "inputs" list')
    offset, inputs = n, []
    for spec in header["inputs"]:
        try:
            name, shape, datatype = spec["name"], list(spec["shape"]), spec["datatype"].upper()
            params = dict(spec.get("parameters") or {})
        except (KeyError, TypeError, AttributeError, ValueError):
            raise InvalidInput("each input needs name, shape, datatype") from None
        if "data" in spec:
            data = spec["data"]
        elif "binary_data_size" in params:
            size = params.pop("binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name}: bad binary_data_size {size!r}")
            raw = body[offset : offset + size]
            if len(raw) != size:
                raise InvalidInput(f"input {name}: binary_data_size {size} runs past the body")
            offset += size
            data = _binary_tensor(raw, name, datatype)
        else:
            raise InvalidInput(f"input {name}: no data and no binary_data_size")
        inputs.append(InferInput(name, shape, datatype, data=data, parameters=params))
    try:
        outputs = [
            RequestedOutput(o["name"], o.get("parameters")) for o in header.get("outputs") or []
        ]
    except (KeyError, TypeError, AttributeError):
        raise InvalidInput("each requested output needs a name") from None
    return InferRequest(
        model_name,
        inputs,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.server", description="Serve sign2text over KServe v2 REST + gRPC."
    )
    p.add_argument("--model-dir", required=True, help="model directory or s3:// gs:// ... URI")
    p.add_argument("--http-port", type=int, default=8080, help="REST port (default 8080)")
    p.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081)")
    p.add_argument("--max-video-mb", type=float, default=32, help="largest video (default 32)")
    p.add_argument("--max-duration-s", type=float, default=60, help="longest video (default 60)")
    p.add_argument("--max-frames", type=int, default=1500, help="most `frames` (default 1500)")
    p.add_argument("--workers", type=int, default=1, help="REST worker processes (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import kserve
    from fastapi.exceptions import RequestValidationError
    from kserve import model_server
    from kserve.logging import logger

    from model.serving import Sign2TextModel

    max_bytes = int(args.max_video_mb * MIB)
    # GRPCServer reads its channel options from kserve's own parsed CLI namespace
    # (model_server.args, passed as vars(args)); setting them there is how a caller that owns
    # argv configures them. A video up to the limit, plus the rest of the message, must fit.
    model_server.args.grpc_max_receive_message_length = max_bytes + MIB
    model_server.args.grpc_max_send_message_length = max_bytes + MIB
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers
    )
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
