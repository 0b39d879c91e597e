"""A FAKE Kubernetes API server on 127.0.0.1 (no cluster can run here) for the real kubernetes
client: InferenceServices kept as sent (merge patches applied), TrainJobs, pods and a pod's log;
`srv.seen` records every request, `srv.deny` answers 403. The `apiserver` fixture yields the
server and a kubeconfig that points at it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import yaml

from tests.fake_kube import merge_patch

BASE = "/apis/serving.kserve.io/v1beta1/namespaces/ns1/inferenceservices"
TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns1/trainjobs"
PODS = "/api/v1/namespaces/ns1/pods"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # keep test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def _handle(self) -> None:
        srv = self.server
        body = self._body() if self.command in ("POST", "PATCH") else None
        srv.seen.append((self.command, self.path, self.headers.get("Content-Type"), body))
        if srv.deny:
            return self._send(403, {"kind": "Status", "message": "forbidden: no RBAC"})
        if not self.path.startswith(BASE):
            return self._trainer(body)
        name = self.path.removeprefix(BASE + "/")
        if self.command == "POST" and self.path == BASE:
            srv.objects[body["metadata"]["name"]] = body
            return self._send(201, body)
        if name not in srv.objects:
            return self._send(404, {"kind": "Status", "reason": "NotFound", "code": 404})
        if self.command == "PATCH":
            srv.objects[name] = merge_patch(srv.objects[name], body)
        return self._send(200, srv.objects[name])

    def _trainer(self, body: dict | None) -> None:
        """TrainJobs, pods and a pod's log, as KubernetesTrainJobApi asks for them."""
        srv, url = self.server, urlsplit(self.path)
        name = url.path.removeprefix(TRAINJOBS + "/")
        if url.path == TRAINJOBS and self.command == "POST":
            srv.objects[body["metadata"]["name"]] = body
            return self._send(201, body)
        if url.path.startswith(TRAINJOBS + "/") and name in srv.objects:
            obj = srv.objects.pop(name) if self.command == "DELETE" else srv.objects[name]
            return self._send(200, obj)
        if url.path == PODS and self.command == "GET":
            meta = {"name": "job-node-0-0-x", "namespace": "ns1", "labels": {"a": "b"}}
            return self._send(
                200, {"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": meta}]}
            )
        if url.path == f"{PODS}/job-node-0-0-x/log":
            data = b"2026-01-01T00:00:00.5Z epoch 1\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        return self._send(404, {"kind": "Status", "reason": "NotFound", "code": 404})

    do_GET = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815


@pytest.fixture(name="apiserver")
def apiserver_fixture(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.seen, srv.objects, srv.deny = [], {}, False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [
                    {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{srv.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            }
        )
    )
    yield srv, str(kubeconfig)
    srv.shutdown()
    srv.server_close()
