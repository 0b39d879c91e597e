"""The app's state across replicas, piece by piece: prediction tokens (app/tokens.py), the token
key kept in the feedback store and created once under concurrency (app/feedback_store.py), and
the live WebSocket's limits (app/live.py), the last two against the app in-process (Starlette's
TestClient) with a local feedback store. Two real replicas behind a proxy:
tests/test_app_replicas.py."""

from __future__ import annotations

import argparse
import json
import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app import live, tokens
from app.feedback_store import FeedbackStore, _S3Target
from app.main import create_app
from components.release.local_deploy import free_port
from tests.s3 import s3_env_fixture, s3_server_fixture  # noqa: F401

VIDEO, OTHER = b"\x00\x00\x00\x18ftypmp42 a video", b"\x00\x00\x00\x18ftypmp42 another"
SAID = {"mode": "word", "predicted": ["go"], "scores": [0.9], "model": {"name": "sign2text"}}


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    """The app's arguments: a model URL nothing answers, feedback to a local folder."""
    args = {
        "model_url": f"http://127.0.0.1:{free_port()}",
        "feedback": str(tmp_path / "store"),
        "spool": str(tmp_path / "spool"),
        "allow_private_urls": False,
        "max_video_mb": 1,
        "token_key_file": None,
    }
    return argparse.Namespace(**(args | kw))


def _store_key(tmp_path: Path) -> bytes:
    return FeedbackStore(tmp_path / "store", tmp_path / "spool-k").shared_key(tokens.KEY_NAME)


def _feedback(client: TestClient, token: str, video: bytes = VIDEO, **form):
    data = {"token": token, "verdict": "wrong", "gloss": "go"} | form
    return client.post("/api/feedback", data=data, files={"file": ("sign.mp4", video)})


# ---- tokens ----------------------------------------------------------------------------------


def test_a_token_is_checked_by_signature_age_and_video():
    key = b"k" * 32
    token = tokens.issue(key, VIDEO, "sign.mp4", SAID)
    claims = tokens.Keys(key).check(token)
    tokens.same_video(claims, VIDEO)
    assert claims["answer"] == SAID and claims["name"] == "sign.mp4"

    body, mac = token.split(".")
    forged = json.loads(tokens._unb64(body)) | {"answer": SAID | {"predicted": ["up"]}}
    tampered = tokens._b64(json.dumps(forged).encode()) + "." + mac
    for bad in (tampered, body + "." + mac[:-2] + "AA", body, "", "not.a token", "é.é"):
        with pytest.raises(tokens.TokenError) as e:
            tokens.Keys(key).check(bad)
        assert e.value.status == 403 and "predict again" in str(e.value)
    with pytest.raises(tokens.TokenError) as e:  # another app's key
        tokens.Keys(b"x" * 32).check(token)
    assert e.value.status == 403

    old = tokens.issue(key, VIDEO, "sign.mp4", SAID, now=time.time() - tokens.KEPT_S - 1)
    with pytest.raises(tokens.TokenError) as e:
        tokens.Keys(key).check(old)
    assert e.value.status == 410 and "older than 60 minutes" in str(e.value)
    with pytest.raises(tokens.TokenError) as e:
        tokens.same_video(claims, OTHER)
    assert e.value.status == 422 and "not the one that was predicted" in str(e.value)


def test_feedback_answers_each_refusal_with_its_status(tmp_path):
    """Through the endpoint: the right status and a message saying what to do; a good token
    stores the record the token carries, whatever the client claims."""
    with TestClient(create_app(_args(tmp_path))) as client:
        key = _store_key(tmp_path)
        good = tokens.issue(key, VIDEO, "sign.mp4", SAID)
        old = tokens.issue(key, VIDEO, "sign.mp4", SAID, now=time.time() - 2 * tokens.KEPT_S)
        foreign = tokens.issue(b"f" * 32, VIDEO, "sign.mp4", SAID)
        cases = [
            (good[:-3] + "abc", VIDEO, 403, "not one this app issued"),
            (foreign, VIDEO, 403, "not one this app issued"),
            (old, VIDEO, 410, "predict again"),
            (good, OTHER, 422, "not the one that was predicted"),
        ]
        for token, video, status, phrase in cases:
            r = _feedback(client, token, video)
            assert (r.status_code, phrase in r.json()["error"]) == (status, True), r.text
        r = client.post("/api/feedback", data={"token": good, "verdict": "wrong", "gloss": "go"})
        assert r.status_code == 400 and "video" in r.json()["error"]
        r = _feedback(client, good, predicted='["up"]')
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    (record,) = (tmp_path / "store" / "records").iterdir()
    saved = json.loads(record.read_text())
    assert (saved["predicted"], saved["gloss"], saved["verdict"]) == (["go"], "go", "wrong")
    assert (tmp_path / "store" / saved["video"]).read_bytes() == VIDEO


def test_an_explicit_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(tokens.ENV_KEY, raising=False)
    assert tokens.explicit_key(None) is None
    (tmp_path / "key").write_text("f" * 64 + "\n")
    assert tokens.explicit_key(str(tmp_path / "key")) == b"f" * 64
    monkeypatch.setenv(tokens.ENV_KEY, "e" * 40)
    assert tokens.explicit_key(None) == b"e" * 40
    monkeypatch.setenv(tokens.ENV_KEY, "short")
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        tokens.explicit_key(None)
    keys = tokens.Keys(b"e" * 40, FeedbackStore(tmp_path / "store", tmp_path / "spool"))
    assert keys.get() == b"e" * 40 and not (tmp_path / "store" / "keys").exists()


# ---- the key kept in the store ---------------------------------------------------------------


def _race(make_store, n: int = 8) -> list[bytes]:
    """n stores (as n replicas would hold) asking for the key at the same moment."""
    stores = [make_store(i) for i in range(n)]
    barrier, got = threading.Barrier(n), [None] * n

    def ask(i):
        barrier.wait()
        got[i] = stores[i].shared_key(tokens.KEY_NAME)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    return got


def test_the_local_key_is_made_once_under_a_race(tmp_path):
    got = _race(lambda i: FeedbackStore(tmp_path / "store", tmp_path / f"spool-{i}"))
    assert len(set(got)) == 1 and len(got[0]) == tokens.KEY_BYTES
    (key,) = (tmp_path / "store" / "keys").iterdir()  # no temp file left behind
    assert key.name == tokens.KEY_NAME and key.read_bytes() == got[0]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_s3_key_is_made_once_under_a_race(s3_env, tmp_path):
    bucket = s3_env.make_bucket()
    got = _race(lambda i: FeedbackStore(f"s3://{bucket}/fb", tmp_path / f"spool-{i}"), n=4)
    assert len(set(got)) == 1 and len(got[0]) == tokens.KEY_BYTES
    assert s3_env.keys(bucket) == [f"fb/keys/{tokens.KEY_NAME}"]
    assert s3_env.get_bytes(bucket, f"fb/keys/{tokens.KEY_NAME}") == got[0]


def test_a_store_without_conditional_puts_settles_on_the_key_it_kept(s3_env, tmp_path, monkeypatch):
    """Two replicas' first writes race on a store that ignores If-None-Match: each uses what it
    read back; a token of the other's fails once, and the replica re-reads the store's key."""
    bucket = s3_env.make_bucket()
    real = _S3Target._call

    def unconditional(self, method, **kw):
        if kw.pop("IfNoneMatch", None):
            raise ClientError({"Error": {"Code": "NotImplemented"}}, "PutObject")
        return real(self, method, **kw)

    monkeypatch.setattr(_S3Target, "_call", unconditional)
    monkeypatch.setattr(tokens, "REREAD_S", 0.0)
    a = FeedbackStore(f"s3://{bucket}/fb", tmp_path / "a")
    keys_a = tokens.Keys(None, a)
    first = keys_a.get()  # A wrote and read back its key...
    s3_env.put_bytes(bucket, f"fb/keys/{tokens.KEY_NAME}", b"b" * 32)  # ...then B's landed
    keys_b = tokens.Keys(None, FeedbackStore(f"s3://{bucket}/fb", tmp_path / "b"))
    assert first != keys_b.get() == b"b" * 32
    token = tokens.issue(keys_b.get(), VIDEO, "v.mp4", SAID)
    assert keys_a.check(token)["answer"] == SAID  # A re-read the store's key
    with pytest.raises(tokens.TokenError):  # and A's early token is refused everywhere now
        keys_b.check(tokens.issue(first, VIDEO, "v.mp4", SAID))


def test_while_the_store_cannot_give_the_key_predictions_go_without_a_token(tmp_path, caplog):
    """The key is asked for once per RETRY_AFTER_S, not on every prediction; what the client is
    told names neither the key nor where it is kept; the key itself is never logged."""

    class Down:
        calls = 0

        def shared_key(self, name, size):
            Down.calls += 1
            raise ConnectionRefusedError("store down")

    keys = tokens.Keys(None, Down())
    for _ in range(3):
        with pytest.raises(tokens.KeyUnavailable) as e:
            keys.get()
        assert str(e.value) == "the feedback store is unreachable"
    assert Down.calls == 1

    store = FeedbackStore(tmp_path / "store", tmp_path / "spool")
    (tmp_path / "store" / "keys").mkdir(parents=True)
    (tmp_path / "store" / "keys" / tokens.KEY_NAME).write_bytes(b"short")  # not a key
    with pytest.raises(tokens.KeyUnavailable) as e:
        tokens.Keys(None, store).get()
    assert tokens.KEY_NAME not in str(e.value) and "keys/" not in str(e.value)
    (tmp_path / "store" / "keys" / tokens.KEY_NAME).unlink()
    with caplog.at_level(logging.DEBUG):
        with TestClient(create_app(_args(tmp_path))) as client:
            r = _feedback(client, tokens.issue(b"f" * 32, VIDEO, "v.mp4", SAID))
            assert r.status_code == 403
            key = _store_key(tmp_path)
    for shown in (key, key.hex().encode(), tokens._b64(key).encode()):
        assert shown not in caplog.text.encode()


# ---- the live WebSocket's limits -------------------------------------------------------------


def _closed(ws) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as e:
        ws.receive_json()
    return e.value.code, e.value.reason


@pytest.fixture
def app_client(tmp_path):
    with TestClient(create_app(_args(tmp_path))) as client:
        yield client


def test_live_refuses_what_breaks_its_limits_saying_why(app_client):
    frame = 4 * 4 * 3
    with app_client.websocket_connect("/api/live/ws") as ws:
        ws.send_bytes(bytes(frame))  # frames before their size
        assert _closed(ws) == (live.POLICY, live.SIZE_FIRST)
    with app_client.websocket_connect("/api/live/ws") as ws:
        ws.send_text(json.dumps({"width": live.LIVE_SIDE + 1, "height": 4}))
        assert _closed(ws)[0] == live.POLICY
    with app_client.websocket_connect("/api/live/ws") as ws:
        ws.send_text(json.dumps({"width": 4, "height": 4}))
        ws.send_bytes(bytes(frame))  # one frame: nothing to read yet
        assert ws.receive_json() == {"final": [], "pending": []}
        ws.send_bytes(bytes(frame * (live.LIVE_CHUNK + 1)))
        code, reason = _closed(ws)
    assert (
        code == live.TOO_BIG and reason == f"at most {live.LIVE_CHUNK} frames of 4 x 4 per message"
    )
    with app_client.websocket_connect("/api/live/ws") as ws:
        ws.send_text(json.dumps({"width": 4, "height": 4}))
        ws.send_bytes(bytes(frame + 1))
        assert _closed(ws) == (live.POLICY, "a message is whole 4 x 4 RGB frames")
    evil = {"origin": "https://elsewhere.example", "host": "testserver"}
    with app_client.websocket_connect("/api/live/ws", headers=evil) as ws:
        assert _closed(ws) == (live.POLICY, "live sessions are for the app's own page")
    with app_client.websocket_connect(
        "/api/live/ws", headers={"origin": "http://testserver"}
    ) as ws:
        ws.send_text(json.dumps({"width": 4, "height": 4}))
        ws.send_bytes(bytes(frame))
        assert ws.receive_json() == {"final": [], "pending": []}


def test_live_says_the_model_is_down_and_goes_on(app_client):
    with app_client.websocket_connect("/api/live/ws") as ws:
        ws.send_text(json.dumps({"width": 4, "height": 4}))
        for _ in range(2):
            ws.send_bytes(bytes(2 * 4 * 4 * 3))
            out = ws.receive_json()
            assert out["final"] == [] and "cannot be reached" in out["error"]


def test_live_closes_idle_sessions_and_refuses_past_the_limit(app_client, monkeypatch):
    monkeypatch.setattr(live, "IDLE_S", 0.5)
    with app_client.websocket_connect("/api/live/ws") as ws:
        assert _closed(ws) == (1000, "nothing for 0.5 s: live session closed")

    monkeypatch.setattr(live, "IDLE_S", 30.0)
    monkeypatch.setattr(live, "MAX_SESSIONS", 2)
    size = json.dumps({"width": 4, "height": 4})
    with app_client.websocket_connect("/api/live/ws") as one:
        with app_client.websocket_connect("/api/live/ws") as two:
            for ws in (one, two):  # both open and answering
                ws.send_text(size)
                ws.send_bytes(bytes(48))
                assert ws.receive_json() == {"final": [], "pending": []}
            with app_client.websocket_connect("/api/live/ws") as three:
                assert _closed(three) == (
                    live.TRY_AGAIN,
                    "2 live sessions here already; try again soon",
                )
        with app_client.websocket_connect("/api/live/ws") as again:  # a place came free
            again.send_text(size)
            again.send_bytes(bytes(48))
            assert again.receive_json() == {"final": [], "pending": []}
