"""One S3 client configuration in every image: the app image's builder (app/s3_client.py, which
ships without model/) and the serving and components images' (model/storage.py's s3_client, on
kserve's storage settings) give the same endpoint, TLS verification, timeouts and attempts for
the same environment."""

from __future__ import annotations

import pytest

from app.s3_client import s3_client as app_client
from model.storage import s3_client as model_client

VARS = (
    "AWS_ENDPOINT_URL",
    "S3_VERIFY_SSL",
    "AWS_CA_BUNDLE",
    "S3_CONNECT_TIMEOUT",
    "S3_READ_TIMEOUT",
    "S3_MAX_ATTEMPTS",
    "AWS_MAX_ATTEMPTS",
    "CA_BUNDLE_CONFIGMAP_NAME",
)


def _settings(client) -> tuple:
    config = client.meta.config
    verify = client._endpoint.http_session._verify
    return (
        client.meta.endpoint_url,
        verify,
        config.connect_timeout,
        config.read_timeout,
        config.retries.get("total_max_attempts"),
        config.retries.get("mode"),
    )


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_VERIFY_SSL": "0"},
        {"AWS_ENDPOINT_URL": "https://minio.example:9000", "S3_VERIFY_SSL": "1"},
        {"S3_CONNECT_TIMEOUT": "3", "S3_READ_TIMEOUT": "7", "S3_MAX_ATTEMPTS": "2"},
        {"S3_MAX_ATTEMPTS": "0"},
        {"AWS_CA_BUNDLE": "CA"},
    ],
)
def test_app_and_model_build_the_same_s3_client(env, monkeypatch, tmp_path):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read until a request\n")
    for var, value in env.items():
        monkeypatch.setenv(var, str(bundle) if value == "CA" else value)
    app, model = _settings(app_client()), _settings(model_client())
    assert app == model
    defaults = {"S3_CONNECT_TIMEOUT": 15, "S3_READ_TIMEOUT": 30, "S3_MAX_ATTEMPTS": 3}
    expected = {k: int(env.get(k, v)) for k, v in defaults.items()}
    assert app[2:5] == (
        expected["S3_CONNECT_TIMEOUT"],
        expected["S3_READ_TIMEOUT"],
        max(1, expected["S3_MAX_ATTEMPTS"]),
    )
