"""The validation report users open: one self-contained HTML page rendered from report.json.

GX Data Docs load Bootstrap, jQuery and fonts from public CDNs, so on an air-gapped cluster their
index is an empty skeleton, and the KFP UI, which shows a single file, gets an index whose links
lead nowhere. This page needs nothing but itself: styles inline, no script, no reference off the
page. Everything taken from the dataset (ids, glosses, details) is escaped: it is untrusted input.
"""

from __future__ import annotations

import html
from pathlib import Path

from model.files import write_atomic

REPORT_HTML = "report.html"

# System fonts only: a web font would be a fetch. Ids and details may be long unbroken strings.
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.6em;margin:0 0 .3em}h2{font-size:1.25em;margin:1.6em 0 .4em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.3em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td code,td li{overflow-wrap:anywhere}
th{background:#f2f2f2}td.n{text-align:right}
ul{margin:0;padding-left:1.2em}code{font-family:ui-monospace,Menlo,Consolas,monospace}
.ok{color:#17692a;font-weight:600}.bad{color:#a31515;font-weight:600}
.verdict{padding:.5em .8em;border-left:4px solid;background:#fafafa}
.none{color:#777;font-style:italic}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


class _Num(str):
    """A cell's (escaped) HTML that is a number: right-aligned."""


def _n(value) -> _Num:
    return _Num(_e(value))


def _table(head: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
    """rows hold already-escaped cell HTML."""
    ident = f' id="{table_id}"' if table_id else ""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if isinstance(c, _Num) else f"<td>{c}</td>" for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table{ident}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _list(items) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _video_id(vid) -> str:
    return '<span class="none">(no video_id)</span>' if vid is None else f"<code>{_e(vid)}</code>"


def _summary(report: dict) -> str:
    quarantined, warnings = report.get("quarantined") or [], report.get("warnings") or []
    if report.get("failure"):
        verdict = f'<p class="verdict bad">Dataset rejected: {_e(report["failure"])}</p>'
    else:
        verdict = (
            f'<p class="verdict ok">Dataset accepted: {_e(report.get("valid", 0))} of '
            f"{_e(report.get('total', 0))} samples valid</p>"
        )
    rows = [
        ["samples", _n(report.get("total", 0))],
        ["valid", _n(report.get("valid", 0))],
        ["quarantined", _n(len(quarantined))],
        ["warnings", _n(len(warnings))],
    ]
    probe = report.get("probe") or {}
    rows += [[_e(f"videos {k} (probe)"), _n(v)] for k, v in probe.items()]
    rows += [[_e(f"valid in {k}"), _n(v)] for k, v in (report.get("splits") or {}).items()]
    return verdict + _table(["", "count"], rows, "summary")


def _reasons(report: dict) -> str:
    counts = sorted((report.get("reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if not counts:
        return '<p class="none">No sample quarantined.</p>'
    return _table(["reason", "samples"], [[_e(r), _n(n)] for r, n in counts], "reasons")


def _quarantined(report: dict) -> str:
    rows = [
        [
            _video_id(q.get("video_id")),
            _e(", ".join(q.get("reasons") or [])),
            _e(q.get("gloss")),
            _e(q.get("split")),
            _e(q.get("where")),
            _list(q.get("details") or []),
        ]
        for q in report.get("quarantined") or []
    ]
    if not rows:
        return '<p class="none">None.</p>'
    head = ["video_id", "reasons", "gloss", "split", "where", "details"]
    return _table(head, rows, "quarantined")


def _warnings(report: dict) -> str:
    rows = [
        [_video_id(w.get("video_id")), _e(w.get("reason")), _e(w.get("detail"))]
        for w in report.get("warnings") or []
    ]
    if not rows:
        return '<p class="none">None.</p>'
    return _table(["video_id", "reason", "detail"], rows, "warnings")


def _status(success, ok: str, bad: str) -> str:
    return f'<span class="ok">{ok}</span>' if success else f'<span class="bad">{bad}</span>'


def _result(r: dict) -> list[str]:
    column = f"<code>{_e(r.get('column'))}</code>"
    reason = _e(r.get("reason") or "-")
    status = _status(r.get("success"), "pass", "fail")
    return [_e(r.get("why")), column, reason, status, _n(r.get("failing_rows", 0))]


def _suites(report: dict) -> str:
    suites = report.get("suites") or {}
    if not suites:
        return '<p class="none">The suites did not run (see the verdict above).</p>'
    out = []
    for name, s in suites.items():
        status = _status(s.get("success"), "passed", "failed")
        out.append(f"<h3>{_e(name)}: {status}, {_e(s.get('expectations', 0))} expectations</h3>")
        rows = [_result(r) for r in s.get("results") or []]
        head = ["expectation", "column", "quarantine reason", "result", "failing rows"]
        out.append(_table(head, rows, f"suite-{_e(name)}") if rows else _list(s.get("failed", [])))
    return "".join(out)


def render(report: dict, docs: str | None) -> str:
    """The page for report.json's content. docs: a relative link to the Data Docs' index, or
    None where they are not beside this page (the KFP HTML artifact is a single file)."""
    thresholds = report.get("thresholds") or {}
    thresholds = {**thresholds, "max_bad_fraction": report.get("max_bad_fraction")}
    if docs:
        more = f'<a href="{_e(docs)}">{_e(docs)}</a>.'
    else:
        more = (
            "not beside this page; where the suites ran, they are in <code>docs/</code> of the "
            "validation output (in Kubeflow: this step's validation Dataset artifact)."
        )
    more += " They load their styles from public CDNs and render bare without internet access."
    sections = [
        f"<h1>Validation report</h1><p>Dataset: <code>{_e(report.get('dataset', '?'))}</code></p>",
        _summary(report),
        "<h2>Quarantined by reason</h2>",
        _reasons(report),
        f"<h2>Quarantined samples ({len(report.get('quarantined') or [])})</h2>",
        _quarantined(report),
        "<h2>Warnings</h2>",
        _warnings(report),
        "<h2>Expectation suites</h2>",
        _suites(report),
        "<h2>Thresholds</h2>",
        _table(["threshold", "value"], [[_e(k), _n(v)] for k, v in thresholds.items()]),
        f"<p>Full Great Expectations Data Docs: {more}</p>",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>sign2text validation report</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_report_html(path: Path, report: dict, docs: str | None) -> Path:
    """Write the page to `path` atomically, never through a symlink (write_atomic)."""
    path = Path(path)
    write_atomic(path, render(report, docs).encode("utf-8"))
    return path
