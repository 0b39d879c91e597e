"""`ingest`: the dataset formats people have -> our layout (WLASL_v0.3.json + videos/).

Sources (one JSON file, told apart by content):

- WLASL's own `WLASL_v0.3.json` (or a folder holding it): glosses in frequency order, instances.
- a split file `nslt_N.json` ({video_id: {"subset", "action": [class_id, start, end]}}) with
  `wlasl_class_list.txt` (index<TAB>gloss) for the class names.
- a flat list of per-sample records (JSON list or JSON Lines): gloss, label, video_id,
  frame_start, frame_end, split, signer_id, variation_id, bbox (fps, source, url optional).

`top` keeps the first N glosses of the frequency-ordered list (WLASL100/300/1000/2000). Ingest
does not judge samples: whatever can be placed under a gloss is written as found (a class id the
source gave is kept as `label`), so validation reports it; what cannot be placed (no gloss, an
unknown class id) is listed in the summary. Videos are copied or hard-linked; the source is
only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from components.data.dataset import METADATA, VIDEO_ID_PATTERN, VIDEOS, write_ingested

NSLT_FPS = 25  # WLASL's split files index frames at 25 fps


class IngestError(ValueError):
    """The source cannot be read as any supported format."""


def read_class_list(path: Path) -> list[str]:
    """wlasl_class_list.txt: `index<TAB>gloss` lines, indices 0..N-1 in order."""
    glosses = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        idx, sep, gloss = line.partition("\t")
        if not sep or not idx.strip().isdigit() or int(idx) != len(glosses) or not gloss.strip():
            raise IngestError(f"{path}:{n}: expected '{len(glosses)}<TAB>gloss', got {line!r}")
        glosses.append(gloss.strip())
    return glosses


def _read_source(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path} is not UTF-8 text: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if path.suffix != ".jsonl":
            raise IngestError(f"{path} is not valid JSON: {e}") from e
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise IngestError(f"{path}:{n} is not valid JSON: {e}") from e
    return records


def detect_format(data: object) -> str:
    if isinstance(data, dict) and all(isinstance(v, dict) and "action" in v for v in data.values()):
        return "nslt"
    if isinstance(data, list) and data and all(isinstance(e, dict) for e in data):
        if all("instances" in e for e in data):
            return "wlasl"
        if not any("instances" in e for e in data):
            return "records"
    raise IngestError(
        "cannot tell the format: expected WLASL_v0.3.json (a list of {gloss, instances}), "
        "nslt_N.json ({video_id: {subset, action}}) or a list of per-sample records"
    )


Normalised = tuple[list[str], list[tuple[int, dict]], list[dict]]


def _from_wlasl(data: list[dict]) -> Normalised:
    glosses, instances, skipped = [], [], []
    for i, entry in enumerate(data):
        insts = entry.get("instances")
        if not isinstance(entry.get("gloss"), str) or not isinstance(insts, list):
            skipped.append({"where": f"entry #{i}", "reason": "no gloss name or instance list"})
            continue
        instances += [(len(glosses), inst) for inst in insts]
        glosses.append(entry["gloss"])
    return glosses, instances, skipped


def _class_id(v, n: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n else None


def _from_nslt(data: dict, classes: list[str]) -> Normalised:
    instances, skipped, used = [], [], 0
    for vid, rec in data.items():
        action = rec.get("action")
        parts = action if isinstance(action, list) else []
        cid = _class_id(parts[0], len(classes)) if parts else None
        if cid is None:
            skipped.append({"video_id": vid, "reason": f"bad class id in action {action!r}"})
            continue
        inst = {"video_id": vid, "split": rec.get("subset"), "label": cid, "fps": NSLT_FPS}
        inst |= {"frame_start": parts[1] if len(parts) > 1 else None}
        inst |= {"frame_end": parts[2] if len(parts) > 2 else None}
        instances.append((cid, inst))
        used = max(used, cid + 1)
    # nslt_100 with the 2000-line class list is WLASL100: the classes it uses, in list order.
    return classes[:used], instances, skipped


def _from_records(data: list[dict], classes: list[str] | None) -> Normalised:
    if classes is None:
        # Class ids as the records give them: each gloss at its most common label.
        votes: dict[str, Counter] = {}
        for r in data:
            if isinstance(r.get("gloss"), str) and _class_id(r.get("label"), 1 << 31) is not None:
                votes.setdefault(r["gloss"], Counter())[r["label"]] += 1
        classes = sorted(votes, key=lambda g: (votes[g].most_common(1)[0][0], g))
    index = {g: i for i, g in enumerate(classes)}
    instances, skipped = [], []
    for i, r in enumerate(data):
        gloss = r.get("gloss")
        if gloss is None and (cid := _class_id(r.get("label"), len(classes))) is not None:
            gloss = classes[cid]
        if gloss not in index:
            skipped.append(
                {"where": f"record #{i}", "video_id": r.get("video_id")}
                | {"reason": f"gloss {gloss!r} is not a known class"}
            )
            continue
        instances.append((index[gloss], {k: v for k, v in r.items() if k != "gloss"}))
    return classes, instances, skipped


def _place(src: Path, dst: Path, link: bool) -> str:
    if link:
        try:
            os.link(src, dst)
            return "linked"
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copy2(src, dst)
    return "copied"


def ingest(
    source: Path,
    out: Path,
    *,
    videos: Path | None = None,
    class_list: Path | None = None,
    top: int | None = None,
    link: bool = False,
    progress: bool = True,
) -> dict:
    """Write `source` (+ its videos) to `out` in our layout; return the summary (ingest.json)."""
    source, out = Path(source), Path(out)
    if source.is_dir():
        source = source / METADATA
    if not source.is_file():
        raise FileNotFoundError(f"source metadata not found: {source}")
    videos = Path(videos) if videos is not None else source.parent / VIDEOS
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if out.exists() and any(out.iterdir()):
        raise IngestError(f"{out} is not empty; ingest writes a fresh dataset folder")
    if out.resolve() in (source.parent.resolve(), videos.resolve()):
        raise IngestError(f"{out} is the source folder; ingest never writes into its source")

    data = _read_source(source)
    fmt = detect_format(data)
    classes = read_class_list(class_list) if class_list is not None else None
    if fmt == "nslt":
        if classes is None:
            raise IngestError(f"{source} is a split file: give the class list too")
        glosses, instances, skipped = _from_nslt(data, classes)
    elif fmt == "records":
        glosses, instances, skipped = _from_records(data, classes)
    else:
        glosses, instances, skipped = _from_wlasl(data)
    if top is not None:
        glosses = glosses[:top]
        instances = [(gi, inst) for gi, inst in instances if gi < len(glosses)]

    entries = [{"gloss": g, "instances": []} for g in glosses]
    for gi, inst in instances:
        entries[gi]["instances"].append(inst)
    ids = {i.get("video_id") for _, i in instances if isinstance(i, dict)}
    safe = sorted(v for v in ids if isinstance(v, str) and re.match(VIDEO_ID_PATTERN, v))

    (out / VIDEOS).mkdir(parents=True, exist_ok=True)
    placed: Counter = Counter()
    missing = []
    for vid in tqdm(safe, desc="ingest", unit="video", disable=not progress):
        src = videos / f"{vid}.mp4"
        if src.is_file():
            placed[_place(src, out / VIDEOS / f"{vid}.mp4", link)] += 1
        else:
            missing.append(vid)
    splits = Counter(str(i.get("split")) for _, i in instances if isinstance(i, dict))
    return write_ingested(
        out,
        entries,
        {"source": str(source), "format": fmt},
        splits=dict(splits),
        videos={"copied": placed["copied"], "linked": placed["linked"], "missing": missing},
        skipped=skipped,
    )
