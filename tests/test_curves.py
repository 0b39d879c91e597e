"""Training curves on their own: the per-epoch files DVC reads and the KFP UI's HTML page."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

from components.training.curves import curves_html, write_curves

HISTORY = [
    {"epoch": 1, "loss": 1.6, "lr": 0.002, "val_top1": 0.25, "val_top5": 0.75, "seconds": 3.0},
    {"epoch": 2, "loss": 1.1, "lr": 0.001, "val_top1": 0.5, "val_top5": 1.0, "seconds": 2.9},
    {
        "epoch": 3,
        "loss": 0.9,
        "lr": 0.0005,
        "val_top1": 0.5,
        "val_top5": 1.0,
        "val_context_acc": 0.6,
        "seconds": 4.1,
    },
]


def test_write_curves_replaces_both_files_whole(tmp_path):
    h, m = tmp_path / "history.json", tmp_path / "metrics.json"
    write_curves(h, m, [])
    assert json.loads(h.read_text()) == [] and json.loads(m.read_text()) == {}
    for n in (1, 3):
        write_curves(h, m, HISTORY[:n])
        assert json.loads(h.read_text()) == HISTORY[:n]
        assert json.loads(m.read_text()) == HISTORY[n - 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "metrics.json"]


def test_curves_page_has_every_epoch_and_needs_nothing_external():
    page = curves_html(HISTORY)
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2  # loss; validation accuracy
    charts = [ElementTree.fromstring(s) for s in svgs]  # noqa: S314 - our own output
    ns = "{http://www.w3.org/2000/svg}"
    loss, acc = ([e.get("points").split() for e in c.iter(f"{ns}polyline")] for c in charts)
    assert [len(p) for p in loss] == [3]
    assert [len(p) for p in acc] == [3, 3, 1]  # top-1, top-5, context accuracy (last epoch)
    assert page.count("<tr>") == 1 + len(HISTORY) and "val_context_acc" in page
    # The UI shows it in a sandbox without network: no scripts, links or fetched resources.
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", page)
    assert "No epoch" in curves_html([])
