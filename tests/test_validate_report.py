"""The validation report page on its own: data from the dataset is shown as text, never run as
markup (checked in a real browser too), the page references nothing off itself, a rejected
dataset still gets a page, and writing it never follows a symlink. (tests/test_validate.py
opens the page of a real validation run in an offline browser.)"""

from __future__ import annotations

import html
from html.parser import HTMLParser

from components.validation.report import render, write_report_html
from tests.browser import external_requests, offline_chromium, open_page

TITLE = "sign2text validation report"
# What a hostile WLASL_v0.3.json could carry in ids, glosses and details.
SCRIPT = "<script>document.title='pwned'</script>"
IMG = '"><img src="https://evil.example/x.png" onerror="document.title=\'pwned\'">'
CSS = "</code><style>@import url(https://evil.example/x.css);</style>"
TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "span",
    "code",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "ul",
    "li",
    "a",
}


def hostile_report() -> dict:
    quarantined = [
        {
            "video_id": SCRIPT,
            "reasons": ["bad_metadata"],
            "details": [CSS],
            "gloss": IMG,
            "split": "train",
            "where": f"gloss #0 {IMG!r}",
        },
        {
            "video_id": None,
            "reasons": ["bad_metadata", "bad_label"],
            "details": ["x & y"],
            "gloss": "book",
            "split": "val",
            "where": "gloss #1",
        },
    ]
    suites = {
        "metadata": {
            "success": False,
            "expectations": 1,
            "failed": ["x"],
            "results": [
                {
                    "why": "video_id must be a plain file name",
                    "column": "video_id",
                    "reason": "bad_metadata",
                    "success": False,
                    "failing_rows": 2,
                }
            ],
        }
    }
    return {
        "dataset": "/data/" + SCRIPT,
        "total": 3,
        "valid": 1,
        "quarantined": quarantined,
        "warnings": [{"video_id": IMG, "reason": "fps_mismatch", "detail": CSS}],
        "reasons": {"bad_metadata": 2, "bad_label": 1},
        "splits": {"train": 1},
        "probe": {"decoded": 1, "cached": 2},
        "suites": suites,
        "failure": None,
        "thresholds": {"min_frames": 8},
        "max_bad_fraction": 0.5,
    }


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.style = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self.tags and self.tags[-1][0] == "style":
            self.style += data


def markup(page: str) -> _Markup:
    m = _Markup()
    m.feed(page)
    return m


def test_dataset_text_is_escaped_and_nothing_is_referenced_off_the_page():
    page = render(hostile_report(), docs="docs/index.html")
    m = markup(page)
    assert {t for t, _ in m.tags} <= TAGS  # no script, img, link, iframe from the data
    assert [t for t, _ in m.tags].count("style") == 1  # only the page's own
    assert "@import" not in m.style and "url(" not in m.style
    assert not any(k.startswith("on") or k == "src" for _, a in m.tags for k in a)
    assert [a["href"] for t, a in m.tags if t == "a"] == ["docs/index.html"]
    for text in (SCRIPT, IMG, CSS):
        assert html.escape(text) in page
    assert "(no video_id)" in page and "x &amp; y" in page


def test_hostile_text_shows_as_text_in_an_offline_browser(tmp_path):
    path = write_report_html(tmp_path / "report.html", hostile_report(), docs=None)
    with offline_chromium() as browser:
        open_page(browser, path)
        assert browser.title == TITLE  # no injected script ran
        text = browser.find_element("tag name", "body").text
        assert external_requests(browser) == {}
    for shown in (SCRIPT, IMG.strip('">'), "@import url(https://evil.example/x.css)"):
        assert shown in text
    assert "Dataset accepted: 1 of 3 samples valid" in text


def test_a_rejected_dataset_gets_a_page_without_suites_or_docs_link():
    report = {
        "dataset": "d",
        "total": 0,
        "valid": 0,
        "quarantined": [],
        "warnings": [],
        "failure": "metadata unreadable: not valid JSON",
        "thresholds": {},
    }
    page = render(report, docs=None)
    assert "Dataset rejected: metadata unreadable: not valid JSON" in page
    assert "suites did not run" in page and "No sample quarantined" in page
    assert "<a " not in page and "Dataset artifact" in page


def test_writing_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").symlink_to(victim)
    (out / ".report.html.tmp").symlink_to(victim)  # planted at the temporary name too
    write_report_html(out / "report.html", hostile_report(), docs=None)
    assert victim.read_text() == "keep"
    page = out / "report.html"
    assert not page.is_symlink() and page.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
