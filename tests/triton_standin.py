"""A stand-in for Triton Inference Server in tests: Triton itself cannot run here (no
tritonserver binary, no GPU). A real KServe ModelServer (v2 REST with the binary tensor data
extension, as Triton speaks it) serving a model repository that `sign2text model triton-repo`
wrote, the way Triton's ONNX Runtime backend would:

- the model is named by its directory and runs its highest version's model.onnx with ONNX
  Runtime: input "clip" -> output "per_time_logits";
- config.pbtxt's input data_type is enforced (a tensor of another datatype is refused, as
  Triton refuses it), and so is its max_batch_size (a larger batch is refused, as Triton refuses it)
  and answered at GET /v2/models/NAME/config (Triton's model configuration extension).

    python -m tests.triton_standin REPOSITORY --http_port PORT

It imports kserve: tests run it in a subprocess of its own.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import kserve
import onnxruntime as ort
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from model.kserve_compat import data_plane
from model.serving.request import request_from_binary

INPUT, OUTPUT = "clip", "per_time_logits"


class OnnxModel(kserve.Model):
    def __init__(self, directory: Path):
        super().__init__(directory.name)
        config = (directory / "config.pbtxt").read_text()
        self.max_batch_size = int(re.search(r"^max_batch_size:\s*(\d+)", config, re.M)[1])
        self.datatype = re.search(r"^input \[[^]]*?data_type: TYPE_(\w+)", config, re.M)[1]
        version = max(
            (d for d in directory.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)
        )
        self.session = ort.InferenceSession(
            str(version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        (inp,) = payload.inputs
        if inp.name != INPUT or inp.datatype != self.datatype:
            raise InvalidInput(f"unexpected input {inp.name} {inp.datatype}, want {self.datatype}")
        x = inp.as_numpy()
        if len(x) > self.max_batch_size:
            raise InvalidInput(
                f"inference request batch-size must be <= {self.max_batch_size} for '{self.name}'"
            )
        per_time = self.session.run([OUTPUT], {INPUT: x})[0]
        return InferResponse(
            response_id=payload.id or "standin",
            model_name=self.name,
            infer_outputs=[InferOutput(OUTPUT, list(per_time.shape), "FP32", data=per_time)],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("repository", type=Path)
    p.add_argument("--http_port", type=int, required=True)
    args = p.parse_args(argv)
    models = [OnnxModel(d) for d in sorted(args.repository.iterdir()) if d.is_dir()]
    sizes = {m.name: m.max_batch_size for m in models}

    @model_server.app.get("/v2/models/{name}/config")
    async def config(name: str) -> dict:
        return {"name": name, "max_batch_size": sizes[name]}

    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False)
    # The project's parse of binary requests: kserve 0.21's own turns every binary tensor into
    # a Python list (seconds per batch of clips), which Triton does not.
    server.dataplane = data_plane(server.registered_models, request_from_binary)
    server.start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
