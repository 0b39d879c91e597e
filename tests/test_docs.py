"""The README is a map and docs/ holds the rest: the README stays short and links every page;
every relative link in them resolves, every #anchor is a heading there, every section a file
cites by name ("docs/serving.md, \"Sentence mode\"") exists, every path they name in backticks
exists, and every `sign2text` / `make` line in their sh blocks parses (tests/test_readme.py runs
the README's cheap blocks too)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from sign2text.cli import parse_args
from tests.test_readme import commands, makefile_targets, readme_blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "manifests" / "README.md"]
MAX_README_LINES = 300
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITE = re.compile(r"(docs/[\w-]+\.md),?\s+\"([^\"]+)\"")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no headings inside code
    return [m.group(1) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)]


def test_the_readme_is_a_map_and_links_every_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    linked = {Path(m) for m in LINK.findall(README.read_text())}
    assert DOCS and not [p.name for p in DOCS if p.relative_to(ROOT) not in linked]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_resolves_to_a_file_and_a_heading(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto: leave the repository
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and anchor not in {slug(h) for h in headings(file)}:
            bad.append(f"{target}: no heading #{anchor} in {_rel(file)}")
    assert not bad, bad


def test_every_cited_section_exists():
    """Code, manifests and docs cite docs sections by name; a renamed section breaks them."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    bad, cites = [], 0
    for rel in files.stdout.split():
        path = ROOT / rel
        if path.suffix not in (".py", ".md", ".yaml", ".yml", "") or not path.is_file():
            continue
        for doc, section in CITE.findall(path.read_text(errors="replace")):
            section = re.sub(r"\s*\n\s*#*\s*", " ", section).strip()  # cites wrap in comments
            cites += 1
            target = ROOT / doc
            if not target.is_file() or section not in headings(target):
                bad.append(f"{rel}: {doc}, {section!r}")
    assert cites >= 5 and not bad, bad


@pytest.mark.parametrize("page", [README, *DOCS], ids=_rel)
def test_every_path_a_page_names_exists(page):
    tops = "components|model|pipelines|sign2text|app|tools|tests|manifests|docs"
    paths = set(re.findall(rf"`((?:{tops})/[\w./-]*?)(?::\w+)?`", page.read_text()))
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "<" not in p)
    assert not missing, missing


@pytest.mark.parametrize("page", DOCS, ids=_rel)
def test_every_sign2text_line_in_the_docs_parses(page):
    targets, bad = makefile_targets(), []
    for block in readme_blocks(page.read_text()):
        if block.lang != "sh":
            continue
        for line, tokens in commands(block):
            for k, tok in enumerate(tokens):
                if tok == "make":
                    args = [t for t in tokens[k + 1 :] if "=" not in t and not t.startswith("-")]
                    bad += [f"{line}: no make target {t!r}" for t in args[:1] if t not in targets]
            if tokens[0] != "sign2text":
                continue
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    parse_args([t.strip("[]") for t in tokens[1:]])
            except SystemExit as e:
                if e.code:
                    bad.append(f"{line}: {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, [f"{_rel(page)}:{b}" for b in bad]
