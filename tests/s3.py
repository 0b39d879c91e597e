"""Fixtures for a real S3 server on 127.0.0.1 (tools/s3.py). Import them into a test module:

    from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

    def test_x(s3_env): ...

The fixtures are *named* `s3_server` and `s3_env` but defined under other Python names, because
ruff flags a test parameter that shadows an imported name (F811; ruff cannot know it is a
fixture). `s3_server` (session scope) is one server for the run; `s3_env` (function scope)
points boto3 / kserve_storage at it through the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tools.s3 import S3Server, _free_ports, run_s3_server

__all__ = ["S3Server", "_free_ports", "s3_env_fixture", "s3_server_fixture"]


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    with run_s3_server() as server:
        yield server


@pytest.fixture(name="s3_env")
def s3_env_fixture(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Environment for boto3 / kserve_storage to reach `s3_server` (restored after the test)."""
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    # Fail fast in tests: no retries, short timeouts (kserve_storage reads S3_*; boto3 AWS_*).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("S3_READ_TIMEOUT", "10")
    # Keep ambient config (a developer's ~/.aws) out of the picture.
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "STORAGE_CONFIG", "STORAGE_OVERRIDE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


# The names the fixtures are requested by, for `from tests.s3 import s3_server, s3_env`.
s3_server = s3_server_fixture
s3_env = s3_env_fixture
