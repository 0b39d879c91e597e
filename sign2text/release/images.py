"""Stamping a release's image into the kustomize overlays (`make images`, `sign2text images stamp`).

Each overlay's kustomization.yaml has one `images:` entry for `sign2text-serving`; stamping sets
its newName to REGISTRY/sign2text-serving and its newTag to TAG, keeping the `-cuda` suffix of
an overlay that runs the CUDA build (prod). Edited as text so the files' comments survive.
"""

from __future__ import annotations

import re
from pathlib import Path

SERVING = "sign2text-serving"
COMPONENTS = "sign2text-components"
CUDA_SUFFIX = "-cuda"
# Docker's reference grammar, simplified: host[:port]/path components, and a tag.
_REGISTRY = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENTRY = re.compile(
    rf"(- name: {SERVING}\n(?P<indent>[ \t]+)newName: )\S+(\n(?P=indent)newTag: )(?P<tag>\S+)"
)


def image_ref(registry: str, name: str, tag: str) -> str:
    """REGISTRY/NAME:TAG, after checking REGISTRY and TAG are valid image reference parts."""
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(f"not a registry (lowercase host[:port][/path]): {registry!r}")
    max_tag = 128 - len(CUDA_SUFFIX)  # the CUDA build's tag must stay within Docker's 128
    if not _TAG.fullmatch(tag) or len(tag) > max_tag:
        raise ValueError(f"not an image tag ([A-Za-z0-9_.-], at most {max_tag} chars): {tag!r}")
    return f"{registry}/{name}:{tag}"


def stamp_overlays(manifests: Path, registry: str, tag: str) -> dict[str, str]:
    """Point every overlay at REGISTRY/sign2text-serving:TAG; returns {overlay: image}."""
    image_ref(registry, SERVING, tag)
    overlays = sorted((Path(manifests) / "overlays").glob("*/kustomization.yaml"))
    if not overlays:
        raise FileNotFoundError(f"no overlays/*/kustomization.yaml under {manifests}")
    stamped = {}
    for path in overlays:
        text = path.read_text()
        found = list(_ENTRY.finditer(text))
        if len(found) != 1:
            raise ValueError(
                f"{path}: expected one images: entry for {SERVING}, found {len(found)}"
            )
        suffix = CUDA_SUFFIX if found[0]["tag"].endswith(CUDA_SUFFIX) else ""
        new_tag = tag + suffix
        text = _ENTRY.sub(rf"\g<1>{registry}/{SERVING}\g<3>{new_tag}", text)
        path.write_text(text)
        stamped[path.parent.name] = f"{registry}/{SERVING}:{new_tag}"
    return stamped
