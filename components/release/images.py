"""Stamping a release's images into the kustomize overlays (`make images`, `images stamp`).

Each overlay's kustomization.yaml has one `images:` entry for each of STAMPED (the serving image
and the web app's); stamping sets its newName to REGISTRY/NAME and its newTag to TAG, keeping the
`-cuda` suffix of an entry that names the CUDA build (prod's serving image). Edited as text so
the files' comments survive.
"""

from __future__ import annotations

import re
from pathlib import Path

SERVING = "sign2text-serving"
COMPONENTS = "sign2text-components"
APP = "sign2text-app"
# The images the overlays name (the components image is named by the compiled pipeline).
STAMPED = (SERVING, APP)
CUDA_SUFFIX = "-cuda"
# Tag suffixes of the serving image's other builds; an overlay entry naming one keeps it.
BUILD_SUFFIXES = (CUDA_SUFFIX, "-onnx")
# Docker's reference grammar, simplified: host[:port]/path components, and a tag.
_REGISTRY = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _entry(name: str) -> re.Pattern[str]:
    """An overlay's `images:` entry for `name`: its newName and newTag lines."""
    return re.compile(
        rf"(- name: {re.escape(name)}\n(?P<indent>[ \t]+)newName: )\S+"
        rf"(\n(?P=indent)newTag: )(?P<tag>\S+)"
    )


def image_ref(registry: str, name: str, tag: str) -> str:
    """REGISTRY/NAME:TAG, after checking REGISTRY and TAG are valid image reference parts."""
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(f"not a registry (lowercase host[:port][/path]): {registry!r}")
    max_tag = 128 - max(map(len, BUILD_SUFFIXES))  # each build's tag within Docker's 128
    if not _TAG.fullmatch(tag) or len(tag) > max_tag:
        raise ValueError(f"not an image tag ([A-Za-z0-9_.-], at most {max_tag} chars): {tag!r}")
    return f"{registry}/{name}:{tag}"


def stamp_overlays(manifests: Path, registry: str, tag: str) -> dict[str, list[str]]:
    """Point every overlay at REGISTRY/NAME:TAG for each of STAMPED; returns {overlay: images}.

    Every overlay is checked before any is written: a missing or doubled entry changes nothing.
    """
    image_ref(registry, SERVING, tag)
    overlays = sorted((Path(manifests) / "overlays").glob("*/kustomization.yaml"))
    if not overlays:
        raise FileNotFoundError(f"no overlays/*/kustomization.yaml under {manifests}")
    new_texts, stamped = {}, {}
    for path in overlays:
        text, images = path.read_text(), []
        for name in STAMPED:
            entry = _entry(name)
            found = list(entry.finditer(text))
            if len(found) != 1:
                raise ValueError(
                    f"{path}: expected one images: entry for {name}, found {len(found)}"
                )
            suffix = next((s for s in BUILD_SUFFIXES if found[0]["tag"].endswith(s)), "")
            new_tag = tag + suffix
            text = entry.sub(lambda m, n=name, t=new_tag: f"{m[1]}{registry}/{n}{m[3]}{t}", text)
            images.append(f"{registry}/{name}:{new_tag}")
        new_texts[path], stamped[path.parent.name] = text, images
    for path, text in new_texts.items():
        path.write_text(text)
    return stamped
