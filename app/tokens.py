"""Prediction tokens: what /api/predict answered, signed, so that /api/feedback on any replica can
check it without keeping anything in memory.

A token is base64url(JSON) + "." + base64url(HMAC-SHA256 of that first part): the JSON holds
the video's SHA-256, its file name, the answer as a feedback record needs it (mode, predicted
words, their scores, the model) and the time it was issued. Feedback sends the token and the
video again; it is taken if the signature is this app's, the token is at most KEPT_S old, and
the video hashes to what the token says. The answer is the server's own (signed), never the
client's.

The key is the same on every replica with no manual step: an explicit one if the operator gives
it (`--token-key-file`, or the environment variable ENV_KEY), else a random one kept in the
feedback store itself (`FeedbackStore.shared_key`, created once whoever asks first). Feedback
needs the store anyway, so every replica that can take feedback reaches the key. It is never
logged, and its name in the store is never told to a client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

KEPT_S = 3600.0  # how long a prediction can take feedback
SKEW_S = 60.0  # replicas' clocks may differ this much
KEY_NAME = "app-token"  # keys/app-token under the feedback store's prefix
KEY_BYTES = 32
ENV_KEY = "SIGN2TEXT_APP_TOKEN_KEY"
RETRY_AFTER_S = 30.0  # after the store failed to give the key, predictions go without tokens
REREAD_S = 5.0  # a signature that fails re-reads the store's key, at most this often


NOT_OURS = "the prediction's token is not one this app issued (or it was changed); predict again"


class TokenError(ValueError):
    """A token refused: the message says what to do; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class KeyUnavailable(RuntimeError):
    """No key right now (the store is down): the message is for the user."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def issue(key: bytes, video: bytes, filename: str, answer: dict, now: float | None = None) -> str:
    """The token for a prediction of `video`; `answer` is {mode, predicted, scores, model}."""
    claims = {
        "sha256": hashlib.sha256(video).hexdigest(),
        "name": filename[-200:],
        "answer": answer,
        "issued": int(time.time() if now is None else now),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{body}.{_mac(key, body)}"


def signed(key: bytes, token: str) -> bool:
    body, _, mac = token.partition(".")
    return bool(mac) and hmac.compare_digest(_mac(key, body).encode(), mac.encode())


def claims_of(token: str, now: float | None = None) -> dict:
    """The claims of a token whose signature was checked: TokenError if it is too old."""
    try:
        claims = json.loads(_unb64(token.partition(".")[0]))
        issued = float(claims["issued"])
        if not {"sha256", "name", "answer"} <= claims.keys():
            raise KeyError("a claim is missing")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TokenError(NOT_OURS, 403) from e
    age = (time.time() if now is None else now) - issued
    if age > KEPT_S or age < -SKEW_S:
        raise TokenError(
            f"the prediction is older than {KEPT_S / 60:g} minutes; predict again to give feedback",
            410,
        )
    return claims


def same_video(claims: dict, video: bytes) -> None:
    if not hmac.compare_digest(
        hashlib.sha256(video).hexdigest().encode(), str(claims["sha256"]).encode()
    ):
        raise TokenError(
            "the video sent is not the one that was predicted; send that video, or predict again",
            422,
        )


def explicit_key(path: str | None) -> bytes | None:
    """The operator's key: the file's bytes (`--token-key-file`), else ENV_KEY; None for
    neither. SystemExit if it is shorter than KEY_BYTES (a guessable key forges tokens)."""
    if path:
        with open(path, "rb") as f:
            key, where = f.read().strip(), "--token-key-file"
    elif os.environ.get(ENV_KEY):
        key, where = os.environ[ENV_KEY].strip().encode(), ENV_KEY
    else:
        return None
    if len(key) < KEY_BYTES:
        raise SystemExit(f"{where}: the token key must be at least {KEY_BYTES} bytes")
    return key


class Keys:
    """The token key: `explicit`, else the store's shared key, read on first use and kept. All
    methods block (the store is S3 or disk): call them off the event loop."""

    def __init__(self, explicit: bytes | None, store=None):
        self._key, self._store = explicit, (None if explicit else store)
        self._lock = threading.Lock()
        self._failed_until = 0.0
        self._read_at = 0.0

    @property
    def enabled(self) -> bool:
        return self._key is not None or self._store is not None

    def get(self) -> bytes:
        """The key; KeyUnavailable while the store cannot give it (retried every RETRY_AFTER_S,
        so that predictions during an outage do not each wait out its timeouts)."""
        if self._key is not None:
            return self._key
        with self._lock:
            if self._key is not None:
                return self._key
            if self._store is None:
                raise KeyUnavailable("this app keeps no feedback: it issues no tokens")
            if time.monotonic() < self._failed_until:
                raise KeyUnavailable("the feedback store is unreachable")
            return self._read()

    def _read(self) -> bytes:
        try:
            key = self._store.shared_key(KEY_NAME, KEY_BYTES)
        except Exception as e:
            self._failed_until = time.monotonic() + RETRY_AFTER_S
            log.warning("the token key cannot be read from the feedback store: %r", e)
            raise KeyUnavailable("the feedback store is unreachable") from e
        self._key, self._read_at = key, time.monotonic()
        return key

    def check(self, token: str) -> dict:
        """The claims of `token` if it is this app's and recent: else TokenError. After a
        signature that fails, the store's key is read once more (at most every REREAD_S): two
        replicas racing to create it on a store without conditional puts settle on the one the
        store kept."""
        ok = signed(self.get(), token)
        if not ok and self._store is not None and self._reread():
            ok = signed(self.get(), token)
        if not ok:
            raise TokenError(NOT_OURS, 403)
        return claims_of(token)

    def _reread(self) -> bool:
        """Whether the key changed on a fresh read (and so is worth another check)."""
        with self._lock:
            if time.monotonic() - self._read_at < REREAD_S:
                return False
            old = self._key
            try:
                return self._read() != old
            except KeyUnavailable:
                return False
