"""The project's DVC remote (`storage`, s3://sign2text/dvc) against a real S3 server on loopback:
`dvc push`, then a wiped workspace and cache, then `dvc pull` gives back every byte; and wrong
credentials fail fast with a clear 403, not a hang.

The endpoint comes from `AWS_ENDPOINT_URL` in the environment only (the remote section is copied
verbatim from the project's `.dvc/config`, which has no endpoint): botocore >= 1.31 reads that
variable itself, so this also checks that dvc-s3 honours it.

Note: the `s3_env` fixture points `AWS_CONFIG_FILE` at /dev/null, which dvc-s3 rejects ("The
specified config file (/dev/null) could not be found": botocore wants a regular file), so the
environment here is built from `s3_server` with an empty config file instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from configobj import ConfigObj

from components.data.synth import synthesize
from tests.s3 import S3Server, s3_server_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
TIMEOUT_S = 60


def _env(server: S3Server, tmp: Path, **over: str) -> dict[str, str]:
    empty = tmp / "aws-empty.cfg"
    empty.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        AWS_ENDPOINT_URL=server.endpoint,
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION=server.region,
        AWS_MAX_ATTEMPTS="1",  # fail fast: no retries
        AWS_RETRY_MODE="standard",
        AWS_CONFIG_FILE=str(empty),  # keep a developer's ~/.aws out of the picture
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",  # never probe 169.254.169.254
    )
    env.update(over)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check:
        assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _project_remote() -> tuple[str, dict[str, str]]:
    """The default remote's name and section, exactly as committed in the project."""
    conf = ConfigObj(str(ROOT / ".dvc" / "config"))
    name = conf["core"]["remote"]
    section = dict(conf[f'remote "{name}"'])
    return name, section


def _repo(tmp: Path, env: dict[str, str]) -> Path:
    """A git + dvc repo whose .dvc/config carries the project's remote section."""
    repo = tmp / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo, env)
    _run([DVC, "init", "-q"], repo, env)
    name, section = _project_remote()
    conf = ConfigObj(str(repo / ".dvc" / "config"))
    conf.setdefault("core", {})
    conf["core"]["analytics"] = "false"
    conf["core"]["remote"] = name
    conf[f'remote "{name}"'] = section
    conf.write()
    return repo


def _remote_repo(server: S3Server, tmp: Path) -> tuple[dict[str, str], Path, dict[str, str]]:
    """A repo (`_repo`) whose remote's bucket exists on `server`: (env, repo, remote section)."""
    env = _env(server, tmp)
    repo = _repo(tmp, env)
    _, section = _project_remote()
    server.make_bucket(_bucket(section["url"]))
    return env, repo, section


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _bucket(url: str) -> str:
    return url.removeprefix("s3://").split("/", 1)[0]


def test_project_remote_is_s3_without_endpoint_or_secrets():
    name, section = _project_remote()
    assert name == "storage"
    assert section["url"] == "s3://sign2text/dvc"
    assert set(section) == {"url"}, f"endpoint/credentials belong in env or config.local: {section}"


def test_push_wipe_pull_restores_every_byte(s3_server, tmp_path):
    env, repo, section = _remote_repo(s3_server, tmp_path)
    synthesize(repo / "data", classes=3, per_class=6, signers=4, progress=False)
    before = _hashes(repo / "data")
    assert len(before) > 10
    _run([DVC, "add", "-q", "data"], repo, env)

    out = _run([DVC, "push"], repo, env)
    assert "pushed" in out.stdout + out.stderr
    # The objects landed on the loopback server: AWS_ENDPOINT_URL alone routed dvc-s3 there.
    prefix = section["url"].removeprefix("s3://").split("/", 1)[1]
    keys = s3_server.keys(_bucket(section["url"]), prefix)
    assert any(k.endswith(".dir") for k in keys), keys

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([DVC, "pull"], repo, env)
    assert _hashes(repo / "data") == before


def test_wrong_credentials_fail_fast_with_403(s3_server, tmp_path):
    env, repo, section = _remote_repo(s3_server, tmp_path)
    (repo / "data").mkdir()
    (repo / "data" / "only-here.bin").write_bytes(os.urandom(4096))
    _run([DVC, "add", "-q", "data"], repo, env)

    bad = _env(s3_server, tmp_path, AWS_SECRET_ACCESS_KEY=secrets.token_urlsafe(24))
    t0 = time.monotonic()
    r = _run([DVC, "push"], repo, bad, check=False)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert re.search(r"403|forbidden|access denied|credential", out, re.I), out
    assert took < 30, f"took {took:.1f} s"
