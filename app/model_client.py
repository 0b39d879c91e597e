"""The model, as the app sees it: the KServe v2 REST endpoint of model `sign2text`.

Videos travel with the binary-data extension (one BYTES element, no base64 or JSON escaping);
answers come back as JSON. The model's labels are learned from the model itself: a word request
with `top_k=0` ranks every gloss, so the app needs no file of the model's and no torch.
"""

from __future__ import annotations

import json

import httpx

NAME = "sign2text"
# frame_probs (the timeline's curves) comes only when named
SENTENCE_OUTPUTS = ("words", "spans", "confidences", "frame_probs")
WINDOWS_OUTPUTS = ("window_probs", "window_centres", "window")


class ModelError(Exception):
    """The model refused the request (status 4xx: the client's input) or could not answer."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class ModelClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0):
        self.base = base_url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout_s, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def metadata(self) -> dict:
        """{"name", "version"} of the served model (version: its weights' hash)."""
        r = await self._get(f"/v2/models/{NAME}")
        meta = r.json()
        versions = meta.get("versions") or [""]
        return {"name": meta.get("name", NAME), "version": versions[0]}

    async def ready(self) -> bool:
        try:
            return (await self._http.get(f"{self.base}/v2/models/{NAME}/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    async def labels(self) -> list[str]:
        """Every gloss the model knows, in alphabetical order (from a 2-frame grey clip)."""
        shape = [2, 32, 32, 3]  # UINT8 T x H x W x 3, all grey
        out = await self._infer({"top_k": 0}, "frames", "UINT8", shape, bytes([128]) * 6144)
        return sorted(out["glosses"])

    async def predict(self, video: bytes, mode: str, **params) -> dict:
        """Word mode: {"glosses", "scores"}; sentence mode: {"words", "spans", "confidences",
        "frame_probs"} (frame_probs: per frame, P(each word's gloss) and P(no sign))."""
        params = {"mode": mode, **{k: v for k, v in params.items() if v is not None}}
        outputs = SENTENCE_OUTPUTS if mode == "sentence" else None
        raw = len(video).to_bytes(4, "little") + video
        return await self._infer(params, "video", "BYTES", [1], raw, outputs)

    async def windows(
        self,
        rgb: bytes,
        count: int,
        height: int,
        width: int,
        *,
        start: int,
        stride: int,
        glosses: bool = False,
    ) -> dict:
        """A stream's next windows (the model's `windows` mode on raw RGB frames): those centred
        on start, start + stride, ... that end within the frames -> {"window_probs" (rows, no
        sign last), "window_centres", "window"}, and "glosses" (the columns' order) if asked."""
        params = {"mode": "windows", "start": start, "stride": stride}
        outputs = WINDOWS_OUTPUTS + (("glosses",) if glosses else ())
        shape = [count, height, width, 3]
        return await self._infer(params, "frames", "UINT8", shape, rgb, outputs)

    async def _infer(
        self,
        params: dict,
        name: str,
        datatype: str,
        shape: list,
        raw: bytes,
        outputs: tuple[str, ...] | None = None,
    ) -> dict:
        spec = {
            "name": name,
            "datatype": datatype,
            "shape": shape,
            "parameters": {"binary_data_size": len(raw)},
        }
        request = {"inputs": [spec], "parameters": params}
        if outputs:
            request["outputs"] = [{"name": o} for o in outputs]
        header = json.dumps(request).encode()
        try:
            r = await self._http.post(
                f"{self.base}/v2/models/{NAME}/infer",
                content=header + raw,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )
        except httpx.HTTPError as e:
            raise ModelError(f"the model server cannot be reached: {e}") from None
        if r.status_code != 200:
            raise ModelError(_error(r), 400 if 400 <= r.status_code < 500 else 502)
        return {o["name"]: _value(o) for o in r.json()["outputs"]}

    async def _get(self, path: str) -> httpx.Response:
        try:
            r = await self._http.get(self.base + path)
        except httpx.HTTPError as e:
            raise ModelError(f"the model server cannot be reached: {e}") from None
        if r.status_code != 200:
            raise ModelError(_error(r))
        return r


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error") or r.text)[:500]
    except ValueError:
        return f"the model server answered {r.status_code}"


def _value(output: dict):
    data = output["data"]
    if len(output["shape"]) == 2:  # rows, as the page reads them
        n = output["shape"][1]
        return [data[i : i + n] for i in range(0, len(data), n)]
    return data
