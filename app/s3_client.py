"""The app image's S3 client (its feedback store). The app ships alone, without model/, so it builds
its own: the same client model/storage.py's `s3_client` builds for the serving and components
images, from the same environment with the same defaults (docs/object-storage.md;
tests/test_s3_clients.py compares the two).
"""

from __future__ import annotations

import os

CONNECT_TIMEOUT_S, READ_TIMEOUT_S, MAX_ATTEMPTS = "15", "30", "3"  # kserve's storage defaults


def s3_client():
    """A boto3 S3 client for the store the environment names: AWS_ENDPOINT_URL (a full URL),
    AWS_DEFAULT_REGION, keys through boto3's chain, S3_VERIFY_SSL / AWS_CA_BUNDLE,
    S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT, S3_MAX_ATTEMPTS (the first try included). A new
    session each time: it reads the environment as it is now (boto3's default session caches
    credentials on first use)."""
    import boto3
    from botocore.config import Config

    kwargs: dict = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = endpoint
    if verify := os.environ.get("S3_VERIFY_SSL"):
        kwargs["verify"] = verify.lower() not in ("0", "false")
    if kwargs.get("verify", True) and (bundle := os.environ.get("AWS_CA_BUNDLE")):
        kwargs["verify"] = bundle
    config = Config(
        connect_timeout=int(os.environ.get("S3_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S)),
        read_timeout=int(os.environ.get("S3_READ_TIMEOUT", READ_TIMEOUT_S)),
        retries={
            "total_max_attempts": max(1, int(os.environ.get("S3_MAX_ATTEMPTS", MAX_ATTEMPTS))),
            "mode": "standard",
        },
    )
    return boto3.session.Session().client("s3", config=config, **kwargs)
