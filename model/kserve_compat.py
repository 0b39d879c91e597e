"""Everything sign2text takes from kserve and kserve_storage, in one place.

No other module imports either package (tests/test_kserve_compat.py holds the code to that), so
an upgrade of kserve is checked here and nowhere else. The public API the predictor is built on
(`Model`, `ModelServer`, the `Infer*` types, the errors, the logger) is re-exported as is, loaded
on first use: importing this module costs nothing, so the storage helpers can serve training
and the components image without importing the model server.

The rest leans on kserve's internals, each listed in RELIES_ON with what to re-check when the
version changes. `check_versions()` compares the installed kserve and kserve-storage with
WRITTEN_FOR; the server calls it at start-up and refuses to serve another version, naming what
to re-check, rather than break silently.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from importlib import metadata

WRITTEN_FOR = {"kserve": "0.21.0", "kserve-storage": "0.21.0"}

# What this module relies on beyond kserve's public API: what to re-check on an upgrade.
RELIES_ON = (
    "kserve.model_server.parser: the flags `server_parser` copies (sign2text serve extends them)",
    "kserve.model_server.args: the namespace kserve parses from sys.argv at import; logging and "
    "GRPCServer read it, so `new_model_server` copies the server's arguments into it",
    "kserve.ModelServer's keyword arguments: their defaults are bound from that namespace",
    "kserve.model_server.RESTServer / GRPCServer: replaced before ModelServer.start() builds "
    "them, for --host and the header timeout (kserve 0.21 listens on 0.0.0.0 / [::] with "
    "uvicorn's default protocol)",
    "kserve.protocol.grpc.server.GRPCServer.start(max_workers): copied with the address as a "
    "parameter (interceptors, message-size options, servicer registration)",
    "kserve.protocol.dataplane.DataPlane.decode_inference_request(body, headers, model_name) and "
    "model_metadata(model_name): overridden (binary BYTES kept as bytes; the model's version and "
    "platform). Fields beyond the v2 schema's do not reach a client: REST validates the answer "
    "into kserve's ModelMetadataResponse (extra keys dropped), gRPC copies name, platform, inputs "
    "and outputs (not even versions)",
    "kserve.errors.invalid_input_handler: the 400 for a body that is not a v2 request",
    "kserve.model_server.app: the FastAPI app that takes the guards' middleware and handlers",
    "kserve.protocol.infer_type.InferOutput.to_grpc tests `data` for truth: outputs must be numpy "
    "arrays (model/serving/predictor.py)",
    "kserve's copy of the v2 gRPC proto lacks InferParameter double_param / uint64_param "
    "(model/serving/request.py reads them from the unknown fields)",
    "kserve_storage.Storage._get_s3_client_kwargs and _update_with_storage_spec, "
    "kserve_storage.kserve_storage._parse_patterns_from_env and _should_download, "
    "kserve_storage.storage_errors.get_storage_error_message: model/storage.py's S3 download and "
    "every S3 client of the serving and components images",
)

# The public names, loaded on first use: name -> (module, attribute).
_PUBLIC = {
    "Model": ("kserve", "Model"),
    "ModelServer": ("kserve", "ModelServer"),
    "InvalidInput": ("kserve.errors", "InvalidInput"),
    "ModelNotReady": ("kserve.errors", "ModelNotReady"),
    "logger": ("kserve.logging", "logger"),
    "InferInput": ("kserve.protocol.infer_type", "InferInput"),
    "InferOutput": ("kserve.protocol.infer_type", "InferOutput"),
    "InferRequest": ("kserve.protocol.infer_type", "InferRequest"),
    "InferResponse": ("kserve.protocol.infer_type", "InferResponse"),
    "RequestedOutput": ("kserve.protocol.infer_type", "RequestedOutput"),
    "deserialize_bytes_tensor": ("kserve.protocol.infer_type", "deserialize_bytes_tensor"),
    "to_np_dtype": ("kserve.utils.numpy_codec", "to_np_dtype"),
}
__all__ = [*_PUBLIC, "WRITTEN_FOR", "RELIES_ON", "check_versions", "installed_versions"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


class KServeVersionError(RuntimeError):
    """The installed kserve is not the one this module was written for."""


def installed_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in WRITTEN_FOR:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def check_versions() -> None:
    """Raise KServeVersionError, naming what to re-check, unless the installed kserve and
    kserve-storage are WRITTEN_FOR's."""
    found = installed_versions()
    wrong = {d: v for d, v in found.items() if v != WRITTEN_FOR[d]}
    if wrong:
        seen = ", ".join(
            f"{d} {v or 'not installed'} (written for {WRITTEN_FOR[d]})" for d, v in wrong.items()
        )
        items = "".join(f"\n  - {r}" for r in RELIES_ON)
        raise KServeVersionError(
            f"{seen}: model/kserve_compat.py relies on these internals; re-check each against "
            f"the installed version, then update WRITTEN_FOR:{items}"
        )


# kserve_storage: the S3 client and download filters the KServe storage initializer uses.


def s3_client_kwargs() -> dict:
    """boto3 client keyword arguments from the environment, as kserve's storage initializer
    builds them (AWS_ENDPOINT_URL, S3_VERIFY_SSL, AWS_CA_BUNDLE, S3_*_TIMEOUT, S3_MAX_ATTEMPTS,
    ...; docs/object-storage.md)."""
    from kserve_storage import Storage

    return Storage._get_s3_client_kwargs()


def apply_storage_spec() -> None:
    """STORAGE_CONFIG / STORAGE_OVERRIDE_CONFIG (JSON) set the AWS_* variables, as kserve does
    before it builds a client."""
    from kserve_storage import Storage

    Storage._update_with_storage_spec()


def download_filter():
    """kserve's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS as a predicate on an object's
    path relative to the URI's key."""
    from kserve_storage.kserve_storage import _parse_patterns_from_env, _should_download

    allow = _parse_patterns_from_env("STORAGE_ALLOW_PATTERNS")
    ignore = _parse_patterns_from_env("STORAGE_IGNORE_PATTERNS")
    return lambda rel: _should_download(rel, allow, ignore)


def storage_error_message(bucket: str, e: BaseException) -> str:
    """kserve's wording for a failed S3 listing (names the bucket, says "not found", ...)."""
    from kserve_storage.storage_errors import get_storage_error_message

    return get_storage_error_message("S3", e, bucket)


def download(uri: str, out: str) -> str:
    """kserve's own download of a non-S3 URI (gs://, https://, hf://, ...) into `out`."""
    from kserve_storage import Storage

    return Storage.download(uri, out)


# kserve: the model server.


def server_parser():
    """A copy of kserve's model server parser (--http_port, --grpc_port, --workers, ...), so
    that changing its defaults changes nobody else's."""
    from kserve import model_server

    return copy.deepcopy(model_server.parser)


def rest_app():
    """The FastAPI app kserve's REST server serves (middleware and handlers go on it)."""
    from kserve import model_server

    return model_server.app


def invalid_input_response(request, message: str):
    """kserve's own 400 response for an InvalidInput(message)."""
    from kserve.errors import InvalidInput, invalid_input_handler

    return invalid_input_handler(request, InvalidInput(message))


def new_model_server(
    args, *, host: str, http_protocol, decode_binary, model_version, model_platform=None
):
    """kserve's ModelServer for `args` (the server's parsed arguments), listening on `host`
    with `http_protocol` (uvicorn's h11 protocol class) for REST, and a data plane that hands
    binary-extension REST bodies to `decode_binary(body, json_length, model_name)` and reports
    `model_version(model)` and `model_platform(model)` (None: none) in the model's metadata."""
    import kserve
    from kserve import model_server

    # kserve reads part of its settings (logging; gRPC options: GRPCServer gets
    # vars(model_server.args)) from the namespace it parsed out of sys.argv at import, which
    # `sign2text serve` does not share: that namespace takes ours.
    vars(model_server.args).update({k: getattr(args, k) for k in vars(model_server.args)})
    _listen_on(host, http_protocol)
    # ModelServer's defaults were bound from that namespace at import, so each is passed.
    wanted = inspect.signature(kserve.ModelServer).parameters
    server = kserve.ModelServer(**{k: v for k, v in vars(args).items() if k in wanted})
    server.dataplane = data_plane(
        server.registered_models, decode_binary, model_version, model_platform
    )
    return server


def data_plane(registry, decode_binary, model_version=lambda model: None, model_platform=None):
    """kserve's DataPlane over `registry`, handing binary-extension REST bodies to
    `decode_binary(body, json_length, model_name)` (kserve's own turns binary BYTES into str,
    and every binary tensor into a Python list), adding `model_version(model)` to a model's
    metadata as `versions` and setting its `platform` (kserve: "") to `model_platform(model)`
    (None: none). `platform` is the v2 field for what runs the model (Triton names its backend
    there, "onnxruntime_onnx"), and the one both REST and gRPC carry."""
    from kserve.protocol.dataplane import DataPlane

    class BinaryBytesDataPlane(DataPlane):
        async def model_metadata(self, model_name: str) -> dict:
            metadata = await super().model_metadata(model_name)
            model = self.get_model_from_registry(model_name)
            version = model_version(model)
            platform = model_platform(model) if model_platform else None
            return (
                metadata
                | ({"versions": [version]} if version else {})
                | ({"platform": platform} if platform else {})
            )

        def decode_inference_request(self, body, headers, model_name):
            json_length = headers.get("inference-header-content-length")
            if isinstance(body, bytes) and json_length is not None:
                return decode_binary(body, json_length, model_name)
            return super().decode_inference_request(body, headers, model_name)

    return BinaryBytesDataPlane(model_registry=registry)


def _listen_on(host: str, http_protocol) -> None:
    """REST and gRPC on `host`, REST with `http_protocol`: both servers are built inside
    ModelServer.start(), so the classes it builds them from are swapped here."""
    from concurrent import futures

    from kserve import model_server
    from kserve.logging import logger
    from kserve.protocol.grpc import server as grpc_server

    class RESTServer(model_server.RESTServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.config.host, self.config.http = host, http_protocol

    class GRPCServer(grpc_server.GRPCServer):
        async def start(self, max_workers):  # kserve 0.21's, with the address as a parameter
            self._server = grpc_server.aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(
                    grpc_server.LoggingInterceptor(),
                    grpc_server.ExceptionToStatusInterceptor(),
                ),
                options=[
                    (f"grpc.{k}", self._kwargs.get(f"grpc_{k}"))
                    for k in ("max_send_message_length", "max_receive_message_length")
                ],
            )
            servicer = grpc_server.InferenceServicer(
                self._data_plane, self._model_repository_extension
            )
            grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                servicer, self._server
            )
            address = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            self._server.add_insecure_port(address)
            logger.info("Starting gRPC server on %s", address)
            await self._server.start()
            await self._server.wait_for_termination()

    model_server.RESTServer, model_server.GRPCServer = RESTServer, GRPCServer
