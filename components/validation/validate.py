"""`validate`: Great Expectations over a dataset's metadata and its real video files.

    metadata -> `metadata` table -> suite      (schema, types, ids, splits, labels, ranges, bbox)
    videos   -> probes (parallel, cached) -> `probe` table -> suite  (file, decode, size, ranges)

Each failing row becomes a reason on its video_id. Outputs in out_dir (the dataset is only read):

    report.json   {"total", "valid", "quarantined": [{"video_id", "reasons", "details", ...}],
                   "warnings": [...], "reasons": {reason: count}, "failure": null | str, ...}
    valid.json    the samples that passed, as Sample.to_dict() records, for convert / evaluate;
                  frame ranges already in the file's own frames where fps_mismatch was fixed
    report.html   what users open: report.json as one self-contained page (no CDN, works offline)
    docs/         GX Data Docs (index.html; their styles come from public CDNs)

A bad sample is quarantined; only a dataset-level failure (metadata unreadable, too many bad
samples, a class with no training sample left) raises DatasetInvalid, after report.json is
written and with no valid.json.
"""

from __future__ import annotations

import difflib
import re
import shutil
from collections import Counter
from dataclasses import asdict, fields, replace
from pathlib import Path

import pandas as pd

from components.data.dataset import (
    METADATA,
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    VIDEO_ID_PATTERN,
    VIDEOS,
    DatasetError,
    read_metadata,
    sample_from_instance,
    write_json,
)
from components.infra.cpus import usable_cpus
from components.validation.probe import default_cache_dir, probe_files
from components.validation.report import REPORT_HTML, write_report_html

# The fixed vocabulary of report reasons, in the order a sample's reasons are listed.
REASONS = (
    "missing_file",
    "empty_file",
    "unreadable",
    "too_few_frames",
    "low_resolution",
    "too_long",
    "duplicate_id",
    "bad_label",
    "bad_metadata",
    "bad_frame_range",
    "bbox_outside",
    "fps_mismatch",  # a warning: the range is rescaled to the file's fps when that fits
)
DEFAULT_FPS = 25.0  # WLASL's frame indices assume 25 fps when an instance does not say
REPORT, VALID, DOCS = "report.json", "valid.json", "docs"
DOCS_MARK = ".sign2text-validate"  # in docs/: validate wrote it, so a later run may replace it


class DatasetInvalid(DatasetError):
    """The dataset as a whole fails validation (report.json says why)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _where(gi: int, gloss, ii: int) -> str:
    return f"{METADATA}: gloss #{gi} {gloss!r}, instance #{ii}"


def _unknown_keys(inst) -> str | None:
    if not isinstance(inst, dict):
        return f"<instance is a {type(inst).__name__}, not an object>"
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    unknown = []
    for k in sorted(set(inst) - set(known), key=str):
        near = difflib.get_close_matches(str(k), known, n=1)
        unknown.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return ", ".join(unknown) or None


def metadata_rows(entries: list[dict]) -> list[dict]:
    """One row per instance: the raw values, and typed copies (None where the type is wrong)."""
    rows = []
    for gi, entry in enumerate(entries):
        instances = entry.get("instances")
        for ii, inst in enumerate(instances if isinstance(instances, list) else []):
            raw = inst if isinstance(inst, dict) else {}
            r = {"row": len(rows), "gloss_index": gi, "gloss": entry["gloss"]}
            r["where"] = _where(gi, entry["gloss"], ii)
            r["instance"] = raw
            r["unknown_keys"] = _unknown_keys(inst)
            for k in REQUIRED_KEYS + ("label", "signer_id", "variation_id", "fps", "bbox"):
                r[k] = raw.get(k)
            if "label" not in raw:
                r["label"] = gi  # no class id of its own: the gloss's position is its label
            for k in ("frame_start", "frame_end", "label"):
                r[f"{k}_value"] = r[k] if _is_int(r[k]) else None
            fps = raw.get("fps", DEFAULT_FPS)
            r["fps_value"] = float(fps) if _is_num(fps) else None
            box = r["bbox"]
            r["bbox_numbers"] = sum(map(_is_num, box)) if isinstance(box, list) else None
            ok = isinstance(box, list) and len(box) == 4 and r["bbox_numbers"] == 4
            r["bbox_min"] = min(box) if ok else None
            r["bbox_width"] = box[2] - box[0] if ok else None
            r["bbox_height"] = box[3] - box[1] if ok else None
            rows.append(r)
    return rows


def _typed(df: pd.DataFrame, ints: tuple[str, ...], floats: tuple[str, ...]) -> pd.DataFrame:
    for c in ints:
        df[c] = df[c].astype("Int64")
    for c in floats:
        df[c] = df[c].astype("Float64")
    return df


def metadata_table(rows: list[dict]) -> pd.DataFrame:
    # Raw values keep their JSON types (object columns) for the type checks.
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "instance"} for r in rows], dtype=object)
    ints = ("row", "gloss_index", "frame_start_value", "frame_end_value", "label_value")
    return _typed(
        df, ints + ("bbox_numbers",), ("fps_value", "bbox_min", "bbox_width", "bbox_height")
    )


def file_range(r: dict, p: dict, fps_tolerance: float) -> tuple[int, int, bool] | None:
    """The metadata's [frame_start, frame_end] in the file's own frames (1-based, inclusive).

    WLASL indices assume the instance's fps (25). A file at another rate (a 30 fps download)
    holds the same time span in proportionally more frames, so the range is rescaled; the
    probe suite then checks it against the real frame count. Returns (start, end, rescaled), or
    None where the metadata range itself is unusable (already a metadata failure).
    """
    start, end, meta_fps = r["frame_start_value"], r["frame_end_value"], r["fps_value"]
    if start is None or end is None or start < 1 or (end != -1 and end < start):
        return None
    frames, fps = p["frames"], p["fps"]
    if not meta_fps or not fps or abs(fps - meta_fps) <= fps_tolerance:
        return start, frames if end == -1 else end, False
    scale = fps / meta_fps
    s = round((start - 1) * scale) + 1
    e = frames if end == -1 else round(end * scale)
    if e == frames + 1:
        e = frames  # rounding at the very last frame
    return s, e, True


def video_file(root: Path, video_id) -> Path | None:
    """Where the video of `video_id` is; None for an id that cannot name a file safely."""
    if not isinstance(video_id, str) or not re.match(VIDEO_ID_PATTERN, video_id):
        return None  # the metadata suite reports the id
    return root / VIDEOS / f"{video_id}.mp4"


def probe_rows(rows: list[dict], probes: dict[Path, dict], root: Path, th) -> list[dict]:
    out = []
    for r in rows:
        path = video_file(root, r["video_id"])
        if path is None:
            continue
        vid, p = r["video_id"], probes[path]
        readable = p.get("readable") if p["sha256"] else None
        q = {"row": r["row"], "video_id": vid, "exists": p["exists"], "bytes": p["bytes"]}
        q |= {"readable": readable, "error": p.get("error"), "sha256": p["sha256"]}
        for k in ("frames", "claimed_frames", "fps", "width", "height"):
            q[k] = p.get(k) if readable else None
        q["short_side"] = min(q["width"], q["height"]) if readable else None
        q["duration_s"] = q["frames"] / q["fps"] if readable and q["fps"] else None
        rng = file_range(r, p, th.fps_tolerance) if readable else None
        q["clip_start"], q["clip_end"] = rng[:2] if rng else (None, None)
        q["clip_frames"] = rng[1] - rng[0] + 1 if rng else None
        q["rescaled"] = bool(rng and rng[2])
        q["bbox_overflow"] = None
        if readable and r["bbox_width"] is not None:
            x0, y0, x1, y1 = r["bbox"]
            q["bbox_overflow"] = max(x1 - q["width"], y1 - q["height"])
        out.append(q)
    return out


def probe_table(rows: list[dict]) -> pd.DataFrame:
    cols = [
        "row",
        "video_id",
        "exists",
        "bytes",
        "readable",
        "error",
        "sha256",
        "frames",
        "claimed_frames",
        "fps",
        "width",
        "height",
        "short_side",
        "duration_s",
        "clip_start",
        "clip_end",
        "clip_frames",
        "rescaled",
        "bbox_overflow",
    ]
    df = pd.DataFrame(rows, columns=cols, dtype=object)
    ints = ("row", "bytes", "frames", "claimed_frames", "width", "height", "short_side")
    ints += ("clip_start", "clip_end", "clip_frames")
    df = _typed(df, ints, ("fps", "duration_s", "bbox_overflow"))
    for c in ("exists", "readable", "rescaled"):
        df[c] = df[c].astype("boolean")
    return df


def _rescaled(r: dict, q: dict) -> list[int]:
    """[frame_start, frame_end] in the file's frames; -1 (to the end) stays -1."""
    return [q["clip_start"], -1 if r["frame_end"] == -1 else q["clip_end"]]


def _rescale_note(r: dict, q: dict | None) -> str | None:
    """The fps_mismatch explanation, for a row whose range changed when rescaled."""
    if not q or not q["rescaled"]:
        return None
    old, new = [r["frame_start"], r["frame_end"]], _rescaled(r, q)
    if old == new:
        return None
    return (
        f"file is {q['fps']:g} fps, metadata indices assume {r['fps_value']:g} fps: "
        f"frame range {old} is {new} in the file's frames"
    )


def _suite_summary(outcomes) -> dict:
    out: dict = {}
    for o in outcomes:
        new = {"success": True, "expectations": 0, "failed": [], "results": []}
        s = out.setdefault(o.suite, new)
        s["expectations"] += 1
        result = {"why": o.why, "column": o.column, "reason": o.reason, "success": o.success}
        s["results"].append(result | {"failing_rows": len(o.rows)})
        if not o.success:
            s["success"] = False
            s["failed"].append(f"{o.why} [{o.column}]: {len(o.rows)} rows" if o.reason else o.why)
    return out


def _clear_docs(docs: Path) -> None:
    """Remove the Data Docs an earlier run wrote, and nothing else: a docs/ folder without
    validate's mark (or a link in its place) is the user's, and stops the run untouched."""
    if docs.is_symlink():
        raise ValueError(
            f"{docs} is a symbolic link; validate writes its Data Docs only into a "
            "folder of its own: remove the link or choose another --out"
        )
    if not docs.exists():
        return
    if not docs.is_dir() or (any(docs.iterdir()) and not (docs / DOCS_MARK).is_file()):
        raise ValueError(
            f"{docs} exists and was not written by `sign2text data validate`; it "
            "is left as it is: move it away or choose another --out"
        )
    shutil.rmtree(docs)


def _write_report(out_dir: Path, report: dict) -> None:
    write_json(out_dir / REPORT, report)
    index = out_dir / DOCS / "index.html"
    docs = f"{DOCS}/index.html" if index.is_file() else None  # none when the metadata failed
    write_report_html(out_dir / REPORT_HTML, report, docs)


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _detail(why: str, hit: dict) -> str:
    values = ", ".join(f"{k}={_plain(v)!r}" for k, v in hit.items() if k != "row")
    return f"{why} ({values})" if values else why


def validate(
    data_dir: Path,
    out_dir: Path,
    *,
    max_bad_fraction: float = 0.25,
    workers: int | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    **thresholds,
) -> dict:
    """Validate data_dir; write report.json, report.html, valid.json and docs/ to out_dir;
    return the report.

    thresholds: the fields of components.validation.expectations.Thresholds. cache_dir: where probe
    results are kept by content hash (default probe.default_cache_dir()).
    """
    from components.validation.expectations import (
        Thresholds,
        metadata_suite,
        probe_suite,
        run_suites,
    )

    names = {f.name for f in fields(Thresholds)}
    if unknown := sorted(set(thresholds) - names):
        raise ValueError(f"unknown validate thresholds {unknown}; known: {sorted(names)}")
    th = Thresholds(**thresholds)
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data_dir}")
    if out_dir.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(f"--out {out_dir} is inside the dataset {data_dir}; it is only read")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VALID).unlink(missing_ok=True)  # a stale list must not outlive a failed run
    _clear_docs(out_dir / DOCS)  # nor stale docs, which report.html links
    report = {"dataset": str(data_dir), "total": 0, "valid": 0, "quarantined": [], "warnings": []}
    report |= {"thresholds": asdict(th), "max_bad_fraction": max_bad_fraction, "failure": None}

    def fail(message: str) -> DatasetInvalid:
        report["failure"] = message
        _write_report(out_dir, report)
        return DatasetInvalid(f"{data_dir}: {message}")

    try:
        entries = read_metadata(data_dir)
    except DatasetError as e:
        raise fail(f"metadata unreadable: {e}") from e
    rows = metadata_rows(entries)
    paths = sorted({p for r in rows if (p := video_file(data_dir, r["video_id"]))})
    workers = workers or usable_cpus()
    probes, stats = probe_files(
        paths, workers=workers, progress=progress, cache_dir=cache_dir or default_cache_dir()
    )
    prows = probe_rows(rows, probes, data_dir, th)
    outcomes = run_suites(
        [
            (metadata_suite(len(entries)), metadata_table(rows)),
            (probe_suite(th), probe_table(prows)),
        ],
        out_dir / DOCS,
    )
    if (out_dir / DOCS).is_dir():
        (out_dir / DOCS / DOCS_MARK).write_text("written by sign2text data validate\n")

    found: dict[int, list[tuple[str, str]]] = {}
    for o in outcomes:
        if o.reason is None:
            continue
        for hit in o.rows:
            found.setdefault(int(hit["row"]), []).append((o.reason, _detail(o.why, hit)))
    by_row = {q["row"]: q for q in prows}
    valid, quarantined, warnings = [], [], []
    for r in rows:
        q = by_row.get(r["row"])
        hits = found.get(r["row"], [])
        note = _rescale_note(r, q)
        if note and any(reason == "bad_frame_range" for reason, _ in hits):
            hits.append(("bad_frame_range", note))
        if q and q["error"] and any(reason == "unreadable" for reason, _ in hits):
            hits.append(("unreadable", q["error"]))
        if hits:
            reasons = sorted({h[0] for h in hits}, key=REASONS.index)
            quarantined.append(
                {"video_id": r["video_id"], "reasons": reasons, "details": [h[1] for h in hits]}
                | {"gloss": r["gloss"], "split": r["split"], "where": r["where"]}
            )
            continue
        sample = sample_from_instance(r["gloss_index"], r["gloss"], r["instance"])
        if note:
            # The range now counts the file's own frames, at the file's rate.
            start, end = _rescaled(r, q)
            sample = replace(sample, frame_start=start, frame_end=end)
            sample = replace(sample, fps=float(q["fps"]))
            warnings.append({"video_id": r["video_id"], "reason": "fps_mismatch", "detail": note})
        valid.append(sample)

    report |= {"total": len(rows), "valid": len(valid), "quarantined": quarantined}
    report["warnings"] = warnings
    report["reasons"] = dict(Counter(x for q in quarantined for x in q["reasons"]))
    report["splits"] = dict(Counter(s.split for s in valid))
    report["probe"] = stats
    report["suites"] = _suite_summary(outcomes)

    if not rows:
        raise fail("the metadata lists no instances")
    bad = len(quarantined) / len(rows)
    if bad > max_bad_fraction:
        raise fail(
            f"{len(quarantined)} of {len(rows)} samples quarantined ({bad:.0%}), above "
            f"max_bad_fraction {max_bad_fraction:.0%}: {report['reasons']}"
        )
    trained = {s.label for s in valid if s.split == "train"}
    if empty := [f"{i} {e['gloss']!r}" for i, e in enumerate(entries) if i not in trained]:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise fail(f"no valid training sample left for class {', '.join(empty[:5])}{more}")
    write_json(out_dir / VALID, [s.to_dict() for s in valid])
    _write_report(out_dir, report)
    return report
