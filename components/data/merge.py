"""`data add`: the samples of one dataset folder (e.g. ingested feedback) added to another, the
one DVC versions (`data/`), so that `dvc add data` records them as a new data version.

Instances join their gloss's entry. A gloss the target lacks is refused unless `new_glosses`,
which appends it at the end: class ids are positions, so every existing id stays what it was
(a `label` an instance carries is rewritten to its gloss's new position).

A sample the target already has (same video id, same gloss, byte-identical video) is counted
and left as it is, so the whole feedback prefix can be ingested and added again each round
and only what is new joins. Refused as a whole, before anything is written: a video id the
target has with another gloss or other bytes (or twice in the source), an id that cannot name
a file, a source instance without its video.

Videos are copied first (each whole, through a rename) and the metadata written last,
atomically: a crash leaves at most unreferenced videos, and running the same add again takes
such a leftover, byte-identical, as already there.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from components.data.dataset import (
    CLASS_LIST,
    METADATA,
    VIDEO_ID_PATTERN,
    VIDEOS,
    read_metadata,
    write_json,
)

SHOWN = 10  # ids / glosses an error lists before "and N more"


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(map(repr, items[:SHOWN])) + more


def _copy_whole(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def add_samples(src: Path, dest: Path, *, new_glosses: bool = False) -> dict:
    """Add every instance of dataset `src` (and its videos) to dataset `dest`; return a summary."""
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        raise ValueError(f"{src} and {dest} are the same dataset")
    incoming, target = read_metadata(src), read_metadata(dest)
    index = {e["gloss"]: i for i, e in enumerate(target)}
    unknown = {e["gloss"] for e in incoming if e["gloss"] not in index and e.get("instances")}
    unknown = sorted(unknown, key=str)
    if unknown and not new_glosses:
        raise ValueError(
            f"{src} has glosses {dest} does not: {_listed(unknown)}; the model has no class for "
            "them. Add them as new classes with --new-glosses, or leave those samples out"
        )

    have = {str(i.get("video_id")): e["gloss"] for e in target for i in e.get("instances", [])}
    seen: Counter = Counter()
    bad, missing, clash, leftovers, present = [], [], [], set(), []
    adds: list[tuple[str, dict]] = []
    for entry in incoming:
        for inst in entry.get("instances", []):
            vid = inst.get("video_id") if isinstance(inst, dict) else None
            if not isinstance(vid, str) or not re.match(VIDEO_ID_PATTERN, vid):
                bad.append(str(vid))
                continue
            seen[vid] += 1
            video, there = src / VIDEOS / f"{vid}.mp4", dest / VIDEOS / f"{vid}.mp4"
            same = video.is_file() and there.is_file() and filecmp.cmp(video, there, False)
            if not video.is_file():
                missing.append(vid)
            elif vid in have:
                if have[vid] == entry["gloss"] and same:
                    present.append(vid)
                    continue
                clash.append(vid)
            elif there.exists():
                if same:
                    leftovers.add(vid)
                else:
                    clash.append(vid)
            adds.append((entry["gloss"], inst))
    clash += sorted(v for v, n in seen.items() if n > 1)
    if bad:
        raise ValueError(f"{src}: video ids that cannot name a file: {_listed(bad)}")
    if missing:
        raise ValueError(f"{src}: instances without their video in {VIDEOS}/: {_listed(missing)}")
    if clash:
        raise ValueError(
            f"video ids {dest} already has (or {src} repeats): {_listed(sorted(set(clash)))}; "
            "a video id names one file, so these cannot be added"
        )
    if not adds and not present:
        raise ValueError(f"{src} has no samples to add")

    if not adds:
        return _summary(src, dest, Counter(), [], 0, len(present))
    merged = [dict(e, instances=list(e.get("instances", []))) for e in target]
    for gloss in unknown:
        index[gloss] = len(merged)
        merged.append({"gloss": gloss, "instances": []})
    (dest / VIDEOS).mkdir(exist_ok=True)
    by_gloss: Counter = Counter()
    for gloss, inst in adds:
        vid = inst["video_id"]
        if vid not in leftovers:
            _copy_whole(src / VIDEOS / f"{vid}.mp4", dest / VIDEOS / f"{vid}.mp4")
        if "label" in inst:
            inst = inst | {"label": index[gloss]}
        merged[index[gloss]]["instances"].append(inst)
        by_gloss[gloss] += 1
    write_json(dest / METADATA, merged)
    if unknown and (dest / CLASS_LIST).is_file():
        lines = "".join(f"{i}\t{e['gloss']}\n" for i, e in enumerate(merged))
        (dest / CLASS_LIST).write_text(lines, encoding="utf-8")
    return _summary(src, dest, by_gloss, unknown, len(leftovers), len(present))


def _summary(src, dest, by_gloss: Counter, new: list, leftovers: int, present: int) -> dict:
    added = sum(by_gloss.values())
    return {
        "from": str(src),
        "to": str(dest),
        "added": added,
        "already_in_dataset": present,
        "by_gloss": dict(sorted(by_gloss.items())),
        "new_glosses": new,
        "videos": {"copied": added - leftovers, "already_there": leftovers},
    }
