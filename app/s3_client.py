"""The S3 client every part of sign2text builds: the app's feedback store, and (through
components.infra.objstore, which re-exports it) data versioning, publishing and ingest. It lives
in app/ because the app's image ships app/ alone and the project may import app/, not the
other way round."""

from __future__ import annotations

import os


def s3_client():
    """A boto3 S3 client for the store the environment names; every S3 client of ours is built here.

    `AWS_ENDPOINT_URL` (a bare `host:port` means https), `AWS_DEFAULT_REGION`, keys through
    boto3's chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`), and the `S3_*` settings that
    kserve_storage reads too: `S3_VERIFY_SSL` ("0"/"false" turns TLS verification off; else
    `AWS_CA_BUNDLE` may name a CA file), `S3_CONNECT_TIMEOUT` (15 s), `S3_READ_TIMEOUT` (60 s) and
    `S3_MAX_ATTEMPTS` (3, the first try included), so an unreachable endpoint fails in seconds.
    A new session each time: it reads the environment as it is now (boto3's default session
    caches credentials on first use).
    """
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    verify: bool | str | None = None  # boto3's default: verify, AWS_CA_BUNDLE if set
    if os.environ.get("S3_VERIFY_SSL", "1").lower() in ("0", "false"):
        verify = False
    config = Config(
        connect_timeout=float(os.environ.get("S3_CONNECT_TIMEOUT", "15")),
        read_timeout=float(os.environ.get("S3_READ_TIMEOUT", "60")),
        retries={
            "total_max_attempts": max(1, int(os.environ.get("S3_MAX_ATTEMPTS", "3"))),
            "mode": "standard",
        },
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or None,
        verify=verify,
        config=config,
    )
