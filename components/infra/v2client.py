"""`sign2text predict`: a v2 (Open Inference Protocol) client. Needs neither torch nor the model.

The raw video travels as one BYTES element: REST with the binary-data extension, or gRPC with
raw_input_contents. Outputs are read as the server sends them (tritonclient's as_numpy).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MODEL = "sign2text"


class ClientError(ValueError):
    """The server refused the request or could not be reached; the message says why."""


def _inputs(module, video: bytes):
    inp = module.InferInput("video", [1], "BYTES")
    data = np.array([video], dtype=np.object_)
    if module.__name__.endswith("http"):
        inp.set_data_from_numpy(data, binary_data=True)
    else:
        inp.set_data_from_numpy(data)
    return [inp]


def predict(
    video: str | os.PathLike,
    *,
    url: str | None = None,
    grpc: str | None = None,
    mode: str = "word",
    top_k: int = 5,
    timeout: float = 120.0,
    sentence: dict | None = None,
) -> dict:
    """Send one video; returns {"glosses", "scores"} (word) or {"words", "spans", "confidences"}.

    `sentence`: window / stride / threshold for sentence mode (server defaults otherwise)."""
    if (url is None) == (grpc is None):
        raise ClientError("give exactly one of --url (REST) or --grpc (host:port)")
    path = Path(video)
    if not path.is_file():
        raise ClientError(f"video not found: {path}")
    params = {"mode": mode, "top_k": int(top_k)}
    for name, value in (sentence or {}).items():
        if value is not None:  # a float as text: every v2 gRPC server has string parameters
            params[name] = str(value) if name == "threshold" else int(value)
    names = ("glosses", "scores") if mode == "word" else ("words", "spans", "confidences")
    if url is not None:
        import tritonclient.http as client
        from tritonclient.utils import InferenceServerException

        host = url.split("://", 1)[-1].rstrip("/")
        kw = {"ssl": url.startswith("https://")}
        conn = client.InferenceServerClient(
            host, network_timeout=timeout, connection_timeout=timeout, **kw
        )
    else:
        import tritonclient.grpc as client
        from tritonclient.utils import InferenceServerException

        size = path.stat().st_size + (1 << 20)
        opts = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        conn = client.InferenceServerClient(grpc, channel_args=opts)
    outputs = [client.InferRequestedOutput(n) for n in names]
    try:
        # gRPC has no deadline unless given one: without it a hung server is waited on forever.
        deadline = {} if url is not None else {"client_timeout": timeout}
        result = conn.infer(
            MODEL,
            _inputs(client, path.read_bytes()),
            outputs=outputs,
            parameters=params,
            **deadline,
        )
    except InferenceServerException as e:
        raise ClientError(f"server: {e.message() or e}") from e
    except (ConnectionError, OSError) as e:
        raise ClientError(f"cannot reach the server: {e}") from e
    out = {}
    for n in names:
        arr = result.as_numpy(n)
        if arr is None:
            raise ClientError(f"response has no output '{n}'")
        if arr.dtype == np.object_:
            arr = np.array([v.decode() if isinstance(v, bytes) else v for v in arr.ravel()])
        out[n] = arr.tolist()
    return out


def format_table(result: dict) -> str:
    if "glosses" in result:
        rows = [f"{'rank':>4}  {'gloss':<20} probability"]
        for i, (g, s) in enumerate(zip(result["glosses"], result["scores"], strict=True), 1):
            rows.append(f"{i:>4}  {g:<20} {s:.4f}")
        return "\n".join(rows)
    rows = [f"{'#':>3}  {'word':<20} {'frames':<13} confidence"]
    for i, (w, (a, b), c) in enumerate(
        zip(result["words"], result["spans"], result["confidences"], strict=True), 1
    ):
        rows.append(f"{i:>3}  {w:<20} {f'{a}-{b}':<13} {c:.4f}")
    if not result["words"]:
        rows.append("  (no signs found)")
    return "\n".join(rows)


def to_json(result: dict) -> str:
    return json.dumps(result)
