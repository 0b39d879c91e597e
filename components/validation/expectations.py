"""The Great Expectations suites of validation, declared in code, and how they are run.

Two suites, each over a pandas table built by components/validation/validate.py:

- `metadata`: one row per metadata instance (raw values as found, plus typed copies the
  numeric checks read: a value of the wrong type is null there and fails its type check).
- `probe`: one row per instance whose video could be looked for (what the file really is).

Every row-level expectation carries meta {"reason": <quarantine reason>, "why": <sentence>};
the failing rows come back by their `row` column (result_format COMPLETE with unexpected index
columns), which is how a GX result becomes a reason on a video_id. Expectations without a
reason are table-level checks reported as such.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column as Col

from components.data.dataset import SPLITS, VIDEO_ID_PATTERN
from components.params import Thresholds  # declared with the other params.yaml sections

E = gx.expectations
ROW = "row"


def _row(expectation_cls, reason: str, why: str, **kwargs):
    return expectation_cls(meta={"reason": reason, "why": why}, **kwargs)


def metadata_suite(n_classes: int) -> gx.ExpectationSuite:
    last = n_classes - 1
    expectations = [
        _row(
            E.ExpectColumnValuesToBeNull,
            "bad_metadata",
            "unknown instance key",
            column="unknown_keys",
        ),
        *(
            _row(
                E.ExpectColumnValuesToNotBeNull,
                "bad_metadata",
                f"required key {k} is missing",
                column=k,
            )
            for k in ("video_id", "split", "frame_start", "frame_end")
        ),
        _row(
            E.ExpectColumnValuesToBeInTypeList,
            "bad_metadata",
            "video_id must be a string",
            column="video_id",
            type_list=["str"],
        ),
        _row(
            E.ExpectColumnValuesToMatchRegex,
            "bad_metadata",
            "video_id must be a plain file name",
            column="video_id",
            regex=VIDEO_ID_PATTERN,
        ),
        _row(
            E.ExpectColumnValuesToBeUnique,
            "duplicate_id",
            "video_id appears more than once",
            column="video_id",
        ),
        _row(
            E.ExpectColumnValuesToBeInSet,
            "bad_metadata",
            f"split must be one of {SPLITS}",
            column="split",
            value_set=list(SPLITS),
        ),
        *(
            _row(
                E.ExpectColumnValuesToBeInTypeList,
                "bad_metadata",
                f"{k} must be an integer",
                column=k,
                type_list=["int"],
            )
            for k in ("frame_start", "frame_end", "label", "signer_id", "variation_id")
        ),
        _row(
            E.ExpectColumnValuesToBeInTypeList,
            "bad_metadata",
            "fps must be a number",
            column="fps",
            type_list=["int", "float"],
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_metadata",
            "fps must be positive",
            column="fps_value",
            min_value=0,
            strict_min=True,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_label",
            f"label must be in [0, {last}]",
            column="label_value",
            min_value=0,
            max_value=last,
        ),
        _row(
            E.ExpectColumnPairValuesToBeEqual,
            "bad_label",
            "label must be the gloss's position in the metadata",
            column_A="label_value",
            column_B="gloss_index",
            ignore_row_if="either_value_is_missing",
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_frame_range",
            "frame_start must be >= 1",
            column="frame_start_value",
            min_value=1,
        ),
        _row(
            E.ExpectColumnPairValuesAToBeGreaterThanB,
            "bad_frame_range",
            "frame_end must be -1 or >= frame_start",
            column_A="frame_end_value",
            column_B="frame_start_value",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            row_condition=Col("frame_end_value") != -1,
        ),
        _row(
            E.ExpectColumnValuesToBeInTypeList,
            "bad_metadata",
            "bbox must be a list [xmin, ymin, xmax, ymax] or null",
            column="bbox",
            type_list=["list", "NoneType"],
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_metadata",
            "bbox must hold 4 numbers",
            column="bbox_numbers",
            min_value=4,
            max_value=4,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_metadata",
            "bbox coordinates must be >= 0",
            column="bbox_min",
            min_value=0,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_metadata",
            "bbox must have xmax > xmin",
            column="bbox_width",
            min_value=0,
            strict_min=True,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bad_metadata",
            "bbox must have ymax > ymin",
            column="bbox_height",
            min_value=0,
            strict_min=True,
        ),
        E.ExpectColumnDistinctValuesToContainSet(
            column="label_value",
            value_set=list(range(n_classes)),
            row_condition=Col("split") == "train",
            meta={"why": "every class has a training sample"},
        ),
    ]
    return gx.ExpectationSuite(name="metadata", expectations=expectations)


def probe_suite(th: Thresholds) -> gx.ExpectationSuite:
    expectations = [
        _row(
            E.ExpectColumnValuesToBeInSet,
            "missing_file",
            "the video file does not exist",
            column="exists",
            value_set=[True],
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "empty_file",
            "the video file is empty",
            column="bytes",
            min_value=1,
        ),
        _row(
            E.ExpectColumnValuesToBeInSet,
            "unreadable",
            "the file does not open or decode",
            column="readable",
            value_set=[True],
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "unreadable",
            "the file has no frame rate",
            column="fps",
            min_value=0,
            strict_min=True,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "too_few_frames",
            f"fewer than {th.min_frames} decodable frames",
            column="frames",
            min_value=th.min_frames,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "too_few_frames",
            f"fewer than {th.min_frames} frames in [frame_start, frame_end]",
            column="clip_frames",
            min_value=th.min_frames,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "low_resolution",
            f"shorter side below {th.min_short_side} px",
            column="short_side",
            min_value=th.min_short_side,
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "too_long",
            f"longer than {th.max_duration_s} s",
            column="duration_s",
            max_value=th.max_duration_s,
        ),
        _row(
            E.ExpectColumnPairValuesAToBeGreaterThanB,
            "bad_frame_range",
            "frame_start is after the file's last frame (at the file's own fps)",
            column_A="frames",
            column_B="clip_start",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        _row(
            E.ExpectColumnPairValuesAToBeGreaterThanB,
            "bad_frame_range",
            "frame_end is after the file's last frame (at the file's own fps)",
            column_A="frames",
            column_B="clip_end",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        _row(
            E.ExpectColumnValuesToBeBetween,
            "bbox_outside",
            f"bbox reaches more than {th.bbox_tolerance} px past the frame",
            column="bbox_overflow",
            max_value=th.bbox_tolerance,
        ),
    ]
    return gx.ExpectationSuite(name="probe", expectations=expectations)


@dataclass
class Outcome:
    """One expectation's result, reduced to what the report needs."""

    suite: str
    expectation: str
    column: str | None
    success: bool
    reason: str | None
    why: str
    rows: list[dict]  # failing rows: {"row": n, <checked column>: value, ...}
    observed: object = None


def run_suites(
    tables: list[tuple[gx.ExpectationSuite, pd.DataFrame]], docs_dir: Path
) -> list[Outcome]:
    """Validate each table with its suite in one ephemeral context; Data Docs into docs_dir."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(docs_dir).resolve()),  # GX wants it absolute
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    ctx.add_data_docs_site(site_name="sign2text", site_config=site)
    source = ctx.data_sources.add_pandas("sign2text")
    outcomes: list[Outcome] = []
    for suite, df in tables:
        batch = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("all")
        vd = gx.ValidationDefinition(name=suite.name, data=batch, suite=ctx.suites.add(suite))
        vd = ctx.validation_definitions.add(vd)
        result = vd.run(
            batch_parameters={"dataframe": df},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]},
        )
        for r in result.results:
            cfg = r.expectation_config
            if r.exception_info and r.exception_info.get("raised_exception"):
                # A suite that cannot evaluate is a bug in how the table was built, not bad data.
                raise RuntimeError(f"{suite.name}: {cfg.type} raised: {r.exception_info}")
            kwargs = cfg.kwargs
            column = kwargs.get("column") or f"{kwargs.get('column_A')}/{kwargs.get('column_B')}"
            outcomes.append(
                Outcome(
                    suite=suite.name,
                    expectation=cfg.type,
                    column=column,
                    success=bool(r.success),
                    reason=(cfg.meta or {}).get("reason"),
                    why=(cfg.meta or {}).get("why", cfg.type),
                    rows=list(r.result.get("unexpected_index_list") or []),
                    observed=r.result.get("observed_value"),
                )
            )
    ctx.build_data_docs(site_names=["sign2text"])
    return outcomes
