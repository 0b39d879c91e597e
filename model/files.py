"""File and message helpers every part of the project shares, each written once: content hashes,
atomic writes and directory swaps, and URIs and messages with their secrets taken out.

They live in model/ (the serving image ships it alone, and components/ may import it, not the
other way round) and cost no heavy import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

# Environment variables whose values must never appear in an error message.
_SECRET_ENV_RE = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|ACCOUNT_KEY|CREDENTIAL)", re.I)


def display_uri(uri: str) -> str:
    """The URI without user info or query string (presigned URLs carry signatures there).

    Without a network location (a local path) it is returned as is: a "?" or "#" in a file
    name is no secret."""
    p = urlsplit(uri)
    if not p.netloc:
        return uri
    netloc = p.netloc.rsplit("@", 1)[-1]
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def redact_secrets(text: str) -> str:
    """`text` with the value of every secret-named environment variable replaced by ***."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_ENV_RE.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def hash_file(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes; read in chunks, as weights and shards run to gigabytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished directory `new` to `dest` (a sibling), replacing whatever is there.

    A reader sees the old tree or the new one, never a mix: a directory cannot be renamed over
    a non-empty one, so the old one is renamed aside first and deleted after."""
    new, dest = Path(new), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(dest)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the names in a directory durable (a rename or a new file in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, durable: bool = False
) -> None:
    """Write `data` (bytes, or a function that writes to the open file) to `path` via a temp
    file beside it and os.replace, so a reader sees the old file or the new one, never half.
    Never through a symlink: the temp file is created exclusively, and os.replace swaps a link
    at `path` itself instead of its target.

    `durable` fsyncs before the rename: for a file a crash must not lose, not for one that is
    rebuilt from such a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed write, or a planted link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
