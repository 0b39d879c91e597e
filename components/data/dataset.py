"""The dataset layout every step reads: WLASL_v0.3.json + videos/<video_id>.mp4.

A `Sample` is one instance flattened with its label; `load_samples` is the only parser of the
metadata file, so convert, evaluate and validate agree on what a sample is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from model.files import write_atomic

METADATA = "WLASL_v0.3.json"
VIDEOS = "videos"
CLASS_LIST = "wlasl_class_list.txt"  # index<TAB>gloss, as WLASL ships it
INGEST_SUMMARY = "ingest.json"  # what `data ingest` made the folder from
SPLITS = ("train", "val", "test")
# An instance's keys: WLASL's own, plus `label` (the class id a split file or record list gave,
# kept by ingest so validation can check it against the gloss's position).
REQUIRED_KEYS = ("video_id", "split", "frame_start", "frame_end")
OPTIONAL_KEYS = (
    "bbox",
    "fps",
    "instance_id",
    "signer_id",
    "source",
    "url",
    "variation_id",
    "label",
)
# A video_id names a file under videos/: no separators, no leading dot.
VIDEO_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


class DatasetError(ValueError):
    """The dataset as a whole cannot be read."""


@dataclass(frozen=True)
class Sample:
    video_id: str
    label: int
    gloss: str
    split: str
    signer_id: int
    frame_start: int
    frame_end: int  # 1-based inclusive; -1 = to the end of the video
    bbox: tuple[int, int, int, int] | None
    fps: float
    instance_id: int = 0
    variation_id: int = 0
    source: str = ""

    def video_path(self, root: str | os.PathLike) -> Path:
        return Path(root) / VIDEOS / f"{self.video_id}.mp4"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox) if self.bbox is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if fields.get("bbox") is not None:
            fields["bbox"] = tuple(int(v) for v in fields["bbox"])
        return cls(**fields)


def load_glosses(root: str | os.PathLike) -> list[str]:
    return [entry["gloss"] for entry in read_metadata(root)]


def load_samples(root: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> list[Sample]:
    """All instances of the wanted splits, in metadata order (class id = gloss index)."""
    out = []
    for label, entry in enumerate(read_metadata(root)):
        for inst in entry.get("instances", []):
            if inst.get("split") in splits:
                out.append(sample_from_instance(label, entry["gloss"], inst))
    return out


def sample_from_instance(label: int, gloss: str, inst: dict) -> Sample:
    """One metadata instance of gloss number `label` -> Sample (defaults for optional keys)."""
    return Sample(
        video_id=str(inst["video_id"]),
        label=label,
        gloss=gloss,
        split=inst["split"],
        signer_id=int(inst.get("signer_id", -1)),
        frame_start=int(inst.get("frame_start", 1)),
        frame_end=int(inst.get("frame_end", -1)),
        bbox=tuple(int(v) for v in inst["bbox"]) if inst.get("bbox") else None,
        fps=float(inst.get("fps", 25)),
        instance_id=int(inst.get("instance_id", 0)),
        variation_id=int(inst.get("variation_id", 0)),
        source=str(inst.get("source", "")),
    )


def read_metadata(root: str | os.PathLike) -> list[dict]:
    """The parsed metadata file: a list of {"gloss", "instances"} entries (class id = position)."""
    path = Path(root) / METADATA
    if not path.is_file():
        raise DatasetError(f"{path} not found: a dataset is a folder with {METADATA} + {VIDEOS}/")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not all(isinstance(e, dict) and "gloss" in e for e in data):
        raise DatasetError(f"{path}: expected a list of {{'gloss', 'instances'}} entries")
    return data


def write_json(path: Path, obj, *, indent: int = 1) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    write_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode())


def write_ingested(
    out: Path, entries: list[dict], summary: dict, *, splits: dict, videos: dict, skipped: list
) -> dict:
    """Finish an ingest into `out`: the metadata (`entries`, {"gloss", "instances"} each, in
    class order), the class list, and INGEST_SUMMARY: `summary` (where from) with the counts
    every ingest reports. `videos` counts how they were placed, and `missing` lists the ids
    without one. Returns the summary."""
    glosses = [e["gloss"] for e in entries]
    write_json(out / METADATA, entries)
    (out / CLASS_LIST).write_text("".join(f"{i}\t{g}\n" for i, g in enumerate(glosses)))
    missing = videos.pop("missing")
    summary |= {
        "glosses": len(glosses),
        "instances": sum(len(e["instances"]) for e in entries),
        "splits": splits,
        "videos": videos | {"missing": len(missing)},
        "missing_videos": missing,
        "skipped": skipped,
    }
    write_json(out / INGEST_SUMMARY, summary)
    return summary


def read_reversed_pairs(root: str | os.PathLike) -> list[tuple[str, str]]:
    """Gloss pairs that are time-reversals of each other (bundled dataset only; else [])."""
    path = Path(root) / "reversed_pairs.json"
    if not path.is_file():
        return []
    return [tuple(p) for p in json.loads(path.read_text())["pairs"]]
