"""kserve behind one module (model/kserve_compat.py): nothing else imports kserve or
kserve_storage, the installed version is the one it was written for, another version stops the
server at start-up naming every internal to re-check, and the internals it relies on are there
with the shapes it uses. When kserve is upgraded, these are the tests that fail first, loudly."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import subprocess
from pathlib import Path

import pytest

from model import kserve_compat

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "model" / "kserve_compat.py"


def _sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    return [ROOT / f for f in out.stdout.split() if not f.startswith("tests/")]


def test_only_the_compat_module_imports_kserve():
    importers = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            if any(n.split(".")[0] in ("kserve", "kserve_storage") for n in names):
                importers.add(path)
    assert importers == {COMPAT}


def test_the_installed_kserve_is_the_one_it_was_written_for():
    lock = (ROOT / "requirements.lock").read_text()
    for dist, version in kserve_compat.WRITTEN_FOR.items():
        assert re.search(rf"^{dist}==({re.escape(version)})$", lock, re.M), dist
    kserve_compat.check_versions()  # raises otherwise


def test_another_kserve_fails_loudly_naming_what_to_recheck(monkeypatch):
    monkeypatch.setattr(
        kserve_compat, "installed_versions", lambda: {"kserve": "0.22.0", "kserve-storage": None}
    )
    with pytest.raises(kserve_compat.KServeVersionError) as e:
        kserve_compat.check_versions()
    message = str(e.value)
    assert "kserve 0.22.0 (written for 0.21.0)" in message
    assert "kserve-storage not installed (written for 0.21.0)" in message
    assert all(item in message for item in kserve_compat.RELIES_ON)


def test_the_server_refuses_to_start_on_another_kserve(monkeypatch, capsys):
    from model.serving import server

    monkeypatch.setattr(
        kserve_compat,
        "installed_versions",
        lambda: {"kserve": "0.22.0", "kserve-storage": "0.21.0"},
    )
    args = server.build_parser().parse_args(["--model-dir", str(ROOT / "no-such-model")])
    with pytest.raises(SystemExit, match=r"^sign2text: error: kserve 0\.22\.0 .*re-check"):
        server.serve(args)


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_model_server_internals_it_relies_on_are_there():
    from kserve import ModelServer, model_server
    from kserve.errors import invalid_input_handler
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import server as grpc_server

    assert isinstance(model_server.parser, argparse.ArgumentParser)
    assert isinstance(model_server.args, argparse.Namespace)
    # ModelServer takes the arguments new_model_server passes by name.
    wanted = set(_params(ModelServer))
    assert {"http_port", "grpc_port", "workers", "max_threads", "enable_grpc"} <= wanted
    assert {"registered_models", "dataplane"} <= set(vars(ModelServer(http_port=1, grpc_port=2)))
    assert hasattr(model_server, "app") and callable(model_server.app.add_middleware)
    # The classes ModelServer.start() builds its servers from, by these module-level names.
    start = inspect.getsource(ModelServer.start) + inspect.getsource(ModelServer)
    assert "RESTServer(" in start and "GRPCServer(" in start
    assert "self.config" in inspect.getsource(model_server.RESTServer)
    # GRPCServer.start, copied with the address as a parameter: what the copy reads.
    assert _params(grpc_server.GRPCServer.start) == ["self", "max_workers"]
    body = inspect.getsource(grpc_server.GRPCServer)
    for name in ("_data_plane", "_model_repository_extension", "_kwargs", "_port", "_server"):
        assert f"self.{name}" in body, name
    for name in (
        "aio",
        "InferenceServicer",
        "LoggingInterceptor",
        "ExceptionToStatusInterceptor",
        "grpc_predict_v2_pb2_grpc",
    ):
        assert hasattr(grpc_server, name), name
    assert _params(DataPlane.decode_inference_request) == [
        "self",
        "body",
        "headers",
        "model_name",
    ]
    assert _params(DataPlane.model_metadata) == ["self", "model_name"]
    assert hasattr(DataPlane, "get_model_from_registry")
    assert len(_params(invalid_input_handler)) == 2  # (request, exc)


def test_the_storage_internals_it_relies_on_are_there():
    from kserve_storage import Storage
    from kserve_storage.kserve_storage import _parse_patterns_from_env, _should_download
    from kserve_storage.storage_errors import get_storage_error_message

    assert _params(Storage._get_s3_client_kwargs) == []
    assert _params(Storage._update_with_storage_spec) == []
    assert _params(_parse_patterns_from_env) == ["env_var_name"]
    assert _params(_should_download)[:1] == ["relative_path"]
    assert len(_params(get_storage_error_message)) == 3
    kwargs = kserve_compat.s3_client_kwargs()
    assert "config" in kwargs  # model/storage.py merges its retries into it
    assert kserve_compat.download_filter()("model.pt") is True


def test_importing_it_imports_no_kserve():
    code = (
        "import sys, model.kserve_compat, model.storage; "
        "assert not {'kserve', 'kserve_storage'} & set(sys.modules), sorted(sys.modules)"
    )
    import sys

    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
