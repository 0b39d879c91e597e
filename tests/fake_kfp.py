"""A FAKE Kubeflow Pipelines API server on 127.0.0.1 (the real one needs a cluster): just the
v2beta1 endpoints `kfp.Client` calls to upload a pipeline or a version, find or create an
experiment and start a run. It records every request so tests can check what was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class FakeKfp:
    url: str = ""
    requests: list[dict] = field(default_factory=list)
    pipelines: dict[str, list[str]] = field(default_factory=dict)  # name -> version ids
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id

    def answer(self, method: str, path: str, query: dict, body: bytes) -> dict:
        self.requests.append({"method": method, "path": path, "query": query, "body": body})
        name = query.get("name", [""])[0]
        if path == f"{API}/healthz":
            return {"multi_user": False}
        if method == "GET" and path == f"{API}/pipelines":
            wanted = _display_name(query)
            found = [n for n in self.pipelines if n == wanted]
            return {"pipelines": [{"pipeline_id": n, "display_name": n} for n in found]}
        if method == "POST" and path == f"{API}/pipelines/upload":
            self.pipelines[name] = [f"{name}-v1"]
            return {"pipeline_id": name, "display_name": name}
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[-2]
            return {
                "pipeline_versions": [
                    {"pipeline_id": pid, "pipeline_version_id": v} for v in self.pipelines[pid]
                ]
            }
        if method == "POST" and path == f"{API}/pipelines/upload_version":
            pid = query["pipelineid"][0]
            self.pipelines[pid].append(f"{pid}-{name}")
            return {"pipeline_id": pid, "pipeline_version_id": f"{pid}-{name}"}
        if method == "GET" and path == f"{API}/experiments":
            wanted = _display_name(query)
            eid = self.experiments.get(wanted)
            return {"experiments": [{"experiment_id": eid, "display_name": wanted}] if eid else []}
        if method == "POST" and path == f"{API}/experiments":
            exp = json.loads(body)
            self.experiments[exp["display_name"]] = eid = f"exp-{len(self.experiments) + 1}"
            return {"experiment_id": eid, "display_name": exp["display_name"]}
        if method == "POST" and path == f"{API}/runs":
            return json.loads(body) | {"run_id": f"run-{len(self.runs())}"}
        raise LookupError(f"{method} {path}")

    def runs(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["path"] == f"{API}/runs"]


def _display_name(query: dict) -> str:
    (predicate,) = json.loads(query["filter"][0])["predicates"]
    assert predicate["key"] == "display_name", predicate
    return predicate["stringValue"]


@contextmanager
def run_fake_kfp() -> Iterator[FakeKfp]:
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                out, code = fake.answer(self.command, url.path, parse_qs(url.query), body), 200
            except LookupError as e:
                out, code = {"error": f"fake KFP has no {e}"}, 404
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
