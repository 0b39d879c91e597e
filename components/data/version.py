"""Version step: pin the dataset a pipeline run uses to its DVC content hash, then materialise it.

Two halves, so that Kubeflow's cache can key everything downstream on the hash, not on a git
revision (a new commit that leaves data.dvc alone must not retrain):

- `resolve_*` turns "what the user asked for" into the DVC md5 of the data folder. In a cluster
  that is the md5 recorded in `data.dvc` at a git revision of the project repository
  (`resolve_revision`); for a local run it is the same hash computed by DVC's own code over a
  local folder (`local_hash`).
- `materialise` writes the dataset for that hash (optionally the first N glosses only, as WLASL
  subsets are defined) into a step's output folder. In a cluster the files come straight from
  the DVC remote's content-addressed store (`fetch_from_remote`: read through DVC's own remote
  code, many files at once, each file's md5 checked, files already there kept); locally
  from the folder, after checking it still has the hash that was resolved.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from components.data.dataset import METADATA, VIDEOS

DIR_SUFFIX = ".dir"
log = logging.getLogger(__name__)


class DataVersionError(ValueError):
    """The requested data version cannot be resolved or does not match what was fetched."""


def local_hash(path: str | os.PathLike) -> str:
    """The md5 `dvc add` records for this folder (DVC's own hashing, so the two always agree)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as odb_dir:
        _, _, obj = build(HashFileDB(fs, odb_dir), str(path.resolve()), fs, "md5", dry_run=True)
    return obj.hash_info.value


def pointer_hash(text: str, source: str) -> str:
    """The folder md5 in a `.dvc` pointer file's text."""
    outs = (yaml.safe_load(text) or {}).get("outs") or []
    md5 = outs[0].get("md5") if outs and isinstance(outs[0], dict) else None
    if not isinstance(md5, str) or not md5.endswith(DIR_SUFFIX):
        raise DataVersionError(f"{source}: no folder md5 under outs[0] (is it a `dvc add` file?)")
    return md5


def resolve_revision(repo: str, rev: str, pointer: str = "data.dvc") -> str:
    """The dataset md5 recorded in `pointer` at git revision `rev` of `repo` (URL or path)."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        text = dvc.api.read(pointer, repo=repo, rev=rev or None)
    except (DvcException, SCMError, FileNotFoundError) as e:
        raise DataVersionError(f"cannot read {pointer} at {rev or 'HEAD'} of {repo}: {e}") from e
    return pointer_hash(text, f"{repo}@{rev or 'HEAD'}:{pointer}")


def resolve(*, local_path: str = "", repo: str = "", rev: str = "") -> str:
    """The dataset md5 of a local folder (local runs) or of `data.dvc` at `rev` of `repo`."""
    if local_path:
        return local_hash(local_path)
    if not repo:
        raise ValueError("no dataset source: give a data repository (git URL) or a local path")
    return resolve_revision(repo, rev)


# botocore client options that model/storage.py's s3_client sets (S3_*_TIMEOUT, S3_MAX_ATTEMPTS,
# anonymous access, addressing style) and DVC's S3 filesystem gets too.
_CLIENT_OPTIONS = ("connect_timeout", "read_timeout", "retries", "signature_version", "s3")
_FILE_MD5 = re.compile(r"[0-9a-f]{32}")
_DIR_MD5 = re.compile(r"[0-9a-f]{32}\.dir")


def remote_odb(remote: str):
    """DVC's object database for an S3 remote (s3://bucket/prefix): dvc-s3's filesystem and the
    layout DVC itself gives a remote (`dvc.data_cloud.Remote.odb`), with the endpoint, TLS,
    timeouts and attempts of model/storage.py's `s3_client` (docs/object-storage.md)."""
    from botocore.session import get_session
    from dvc.data_cloud import Remote
    from dvc.fs import get_cloud_fs

    from model.storage import s3_client_kwargs

    if not remote.startswith("s3://") or not remote[len("s3://") :].strip("/"):
        raise DataVersionError(f"data remote must be s3://bucket/prefix, got {remote!r}")
    kwargs = s3_client_kwargs()
    conf = {"url": remote, "endpointurl": kwargs.get("endpoint_url")}
    conf |= {
        "ssl_verify": kwargs.get("verify"),
        "region": get_session().get_config_variable("region"),
    }
    cls, config, path = get_cloud_fs({}, **{k: v for k, v in conf.items() if v is not None})
    fs = cls(**config)
    client = fs.fs_args.setdefault("config_kwargs", {})
    for option in _CLIENT_OPTIONS:
        value = getattr(kwargs["config"], option, None)
        if isinstance(value, dict):
            client[option] = {**client.get(option, {}), **value}
        elif value is not None:
            client[option] = value
    fs.fs.retries = 1  # s3fs's own retry loop off: botocore's attempts are the retries
    return Remote("data", path, fs, **config).odb


def _listing(odb, md5: str, out: Path, keep) -> list[tuple[PurePosixPath, str]]:
    """(relpath, md5) of the files of folder `md5` that keep(relpath) wants, from DVC's own
    parse of the folder's listing, itself checked against `md5`; refuses the whole listing if
    any path would land outside `out` or any md5 is not one (it makes an object key)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    from model.storage import _unsafe

    tree = Tree.load(odb, HashInfo("md5", md5))
    tree.digest()  # the md5 DVC computes for these entries
    if tree.hash_info.value != md5:
        raise DataVersionError(f"the listing of {md5} does not match its md5 in the remote")
    plan = []
    for parts, _, hash_info in tree:
        rel = "/".join(parts)
        why = _unsafe(out, rel, strict=True)
        if why:
            raise DataVersionError(f"unsafe path in the DVC listing: {rel!r} {why}")
        if hash_info is None or not _FILE_MD5.fullmatch(str(hash_info.value)):
            raise DataVersionError(f"{rel}: no md5 in the DVC listing")
        if keep(PurePosixPath(rel)):
            plan.append((PurePosixPath(rel), hash_info.value))
    return plan


def _fetch_file(odb, out: Path, rel: PurePosixPath, md5: str) -> bool:
    """Make out/rel the object `md5`: kept if already there with that md5, else downloaded to a
    temporary name beside it, checked, and renamed into place (so out/rel is only ever verified
    content). True if it was downloaded."""
    from botocore.exceptions import BotoCoreError
    from dvc_data.hashfile.hash import file_md5

    dest = out.joinpath(*rel.parts)
    try:
        # md5: DVC's content address (its own hashing), not a security boundary
        if dest.is_file() and file_md5(str(dest)) == md5:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{md5}.part")
        try:
            odb.fs.get_file(odb.oid_to_path(md5), str(part))
            if file_md5(str(part)) != md5:
                raise DataVersionError(f"{rel}: content does not match its md5 in the remote")
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
    except (OSError, BotoCoreError) as e:
        raise DataVersionError(f"{rel}: cannot fetch its object {md5}: {e}") from e
    return True


def fetch_from_remote(
    remote: str, md5: str, out: Path, keep=lambda rel: True, *, jobs: int | None = None
) -> int:
    """Fetch the folder `md5` from a DVC S3 remote (s3://bucket/prefix) into `out`; returns how
    many files it has there.

    Only files for which keep(relpath) is true are fetched, `jobs` at a time (default: DVC's
    for a remote, 4 per CPU). Each is checked against its md5; a
    file already in `out` with the right md5 is kept, not downloaded again, so a fetch that was
    interrupted resumes. Endpoint, keys, timeouts and retries come from the environment
    (docs/object-storage.md), as for model/storage.py's `s3_client`.
    """
    from botocore.exceptions import BotoCoreError
    from dvc_objects.errors import ObjectFormatError
    from dvc_objects.executors import ThreadPoolExecutor

    if not _DIR_MD5.fullmatch(md5):
        raise DataVersionError(f"not a DVC folder md5: {md5!r}")
    out = Path(out)
    odb = remote_odb(remote)
    try:
        plan = _listing(odb, md5, out, keep)
    except (OSError, ObjectFormatError, BotoCoreError) as e:
        raise DataVersionError(f"cannot fetch data {md5} from {remote}: {e}") from e
    workers = max(1, min(jobs or odb.fs.jobs, len(plan)))
    with ThreadPoolExecutor(max_workers=workers, cancel_on_error=True) as pool:
        fetched = sum(pool.imap_unordered(lambda item: _fetch_file(odb, out, *item), plan))
    log.info(
        "data %s: %d files, %d downloaded, %d already there",
        md5,
        len(plan),
        fetched,
        len(plan) - fetched,
    )
    return len(plan)


def _subset_metadata(meta_path: Path, subset: int) -> set[str] | None:
    """Keep the first `subset` glosses (0 = all); returns the video ids still referenced."""
    if subset <= 0:
        return None
    entries = json.loads(meta_path.read_text(encoding="utf-8"))[:subset]
    meta_path.write_text(json.dumps(entries), encoding="utf-8")
    return {str(i["video_id"]) for e in entries for i in e.get("instances", [])}


def materialise(
    md5: str, out: Path, *, subset: int = 0, local_path: str = "", remote: str = ""
) -> dict:
    """Write the dataset `md5` (first `subset` glosses; 0 = all) to `out`, from `local_path` if
    given, else from the DVC remote; returns a summary (the artifact's metadata)."""
    if subset < 0:
        raise ValueError(f"subset must be >= 0 (0 = all glosses), got {subset}")
    if not (local_path or remote):
        raise ValueError("no dataset source: give a DVC remote (s3://...) or a local path")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if local_path:
        found = local_hash(local_path)
        if found != md5:
            raise DataVersionError(f"{local_path} changed: its md5 is {found}, the run uses {md5}")
        shutil.copytree(local_path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(VIDEOS))
    else:
        fetch_from_remote(remote, md5, out, keep=lambda rel: rel.parts[0] != VIDEOS)
    keep_ids = _subset_metadata(out / METADATA, subset)

    def wanted(rel: PurePosixPath) -> bool:
        return rel.parts[0] == VIDEOS and (keep_ids is None or rel.stem in keep_ids)

    if local_path:
        src = Path(local_path) / VIDEOS
        videos = [p for p in sorted(src.iterdir()) if wanted(PurePosixPath(VIDEOS, p.name))]
        (out / VIDEOS).mkdir(exist_ok=True)
        for p in videos:
            shutil.copy2(p, out / VIDEOS / p.name)
        n = len(videos)
    else:
        n = fetch_from_remote(remote, md5, out, keep=wanted)
    return {"data_md5": md5, "subset": subset, "videos": n, "source": local_path or remote}
