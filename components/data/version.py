"""Version step: pin the dataset a pipeline run uses to its DVC content hash, then materialise it.

Two halves, so that Kubeflow's cache can key everything downstream on the hash, not on a git
revision (a new commit that leaves data.dvc alone must not retrain):

- `resolve_*` turns "what the user asked for" into the DVC md5 of the data folder. In a cluster
  that is the md5 recorded in `data.dvc` at a git revision of the project repository
  (`resolve_revision`); for a local run it is the same hash computed by DVC's own code over a
  local folder (`local_hash`).
- `materialise` writes the dataset for that hash (optionally the first N glosses only, as WLASL
  subsets are defined) into a step's output folder. In a cluster the files come straight from
  the DVC remote's content-addressed store (`fetch_from_remote`, each file's md5 checked); locally
  from the folder, after checking it still has the hash that was resolved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from components.data.dataset import METADATA, VIDEOS
from model.files import hash_file

DIR_SUFFIX = ".dir"


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


def _object_key(prefix: str, md5: str) -> str:
    return f"{prefix.strip('/')}/files/md5/{md5[:2]}/{md5[2:]}".lstrip("/")


def _safe_relpath(relpath: str) -> PurePosixPath:
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataVersionError(f"unsafe path in the DVC listing: {relpath!r}")
    return rel


def fetch_from_remote(remote: str, md5: str, out: Path, keep=lambda rel: True) -> int:
    """Download the folder `md5` from a DVC 3 S3 remote (s3://bucket/prefix) into `out`.

    Only files for which keep(relpath) is true are fetched; each is checked against its md5.
    Endpoint, keys, timeouts and retries come from the environment (docs/object-storage.md), read
    by model/storage.py's `s3_client`.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from model.storage import s3_client

    if not remote.startswith("s3://"):
        raise DataVersionError(f"data remote must be s3://bucket/prefix, got {remote!r}")
    bucket, _, prefix = remote[len("s3://") :].partition("/")
    s3 = s3_client()
    try:
        body = s3.get_object(Bucket=bucket, Key=_object_key(prefix, md5))["Body"].read()
        entries = json.loads(body)
        count = 0
        for entry in entries:
            rel = _safe_relpath(entry["relpath"])
            if not keep(rel):
                continue
            dest = out.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, _object_key(prefix, entry["md5"]), str(dest))
            # md5: DVC's content address, not a security boundary
            if hash_file(dest, "md5") != entry["md5"]:
                raise DataVersionError(f"{rel}: content does not match its md5 in the remote")
            count += 1
    except (ClientError, BotoCoreError) as e:
        raise DataVersionError(f"cannot fetch data {md5} from {remote}: {e}") from e
    return count


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
