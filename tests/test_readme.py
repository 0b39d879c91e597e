"""The README works as typed by a newcomer.

A ```sh block right after the line `<!-- test: run -->` is run: all such blocks, in README
order, as one script in one fresh bash (a newcomer's terminal) in a copy of the checkout, with
HOME an empty temp dir and PATH the system's alone, so `sign2text` is found only if a block
activates .venv the way the README says. Those blocks must stay cheap (CI, 2 cores). Every
other ```sh block needs a trained model, a cluster, docker or credentials; it is checked
without running: each `sign2text ...` line must parse with the CLI's own parser and each
`make TARGET` must be a Makefile target.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sign2text.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARK = "<!-- test: run -->"
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
# Not copied into the newcomer's checkout: what `make setup` / `make demo` create.
NOT_SOURCES = {".venv", ".git", "data", "artifacts", ".pytest_cache", ".ruff_cache", ".dvc"}


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    run: bool
    code: str


def readme_blocks(text: str) -> list[Block]:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.groups()
        before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"README.md:{i + 1}: fence never closed"
        body = [ln.removeprefix(indent) for ln in lines[i + 1 : end]]  # list items indent them
        out.append(Block(i + 1, lang, before == RUN_MARK, "\n".join(body) + "\n"))
        i = end + 1
    return out


BLOCKS = readme_blocks(README.read_text())
SH = [b for b in BLOCKS if b.lang == "sh"]


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """(README line, tokens) of each command line, continuations joined, comments dropped."""
    out, lines = [], block.code.replace("\\\n", " ").splitlines()
    for k, line in enumerate(lines):
        if tokens := shlex.split(line, comments=True):
            out.append((block.line + 1 + k, tokens))
    return out


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def test_run_markers_mark_sh_blocks():
    text = README.read_text()
    marks = [ln.strip() for ln in text.splitlines() if re.match(r"\s*<!--\s*test", ln)]
    assert all(m == RUN_MARK for m in marks), marks  # a typo would silently skip
    run = [b for b in BLOCKS if b.run]
    assert len(run) == len(marks) >= 2, "every marker sits right above a block"
    assert all(b.lang == "sh" for b in run)


def test_every_sign2text_line_parses_and_every_make_target_exists():
    targets, bad = makefile_targets(), []
    for block in SH:
        for line, tokens in commands(block):
            for k, tok in enumerate(tokens):
                if tok == "make":
                    args = [t for t in tokens[k + 1 :] if "=" not in t and not t.startswith("-")]
                    bad += [
                        f"README.md:{line}: no make target {t!r}"
                        for t in args[:1]
                        if t not in targets
                    ]
            if tokens[0] != "sign2text":
                continue
            argv = [t.strip("[]") for t in tokens[1:]]  # "[--resume]": optional, still valid
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    parse_args(argv)
            except SystemExit as e:
                if e.code:
                    bad.append(f"README.md:{line}: {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, "\n".join(bad)


def checkout_copy(dest: Path) -> Path:
    """The sources as a fresh clone has them (mtimes kept, so make sees .venv as current)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): copy the tree
        top = lambda d, names: NOT_SOURCES & set(names) if Path(d) == ROOT else set()  # noqa: E731
        return Path(shutil.copytree(ROOT, dest, ignore=top))
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file() and rel.split("/", 1)[0] not in NOT_SOURCES:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_run_blocks_succeed_in_a_fresh_shell(tmp_path):
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):
        pytest.skip("tests are not running from a virtualenv, which the README's .venv is")
    work = checkout_copy(tmp_path / "clone")
    (work / ".venv").symlink_to(venv, target_is_directory=True)
    (tmp_path / "home").mkdir()
    env = {
        "HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        # The shared .venv may be an editable install of another checkout (git worktrees):
        # make this checkout's code the one the console scripts import.
        "PYTHONPATH": str(work),
    }
    current = subprocess.run(
        ["make", "-q", "setup"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    if current.returncode == 1:  # `make test` runs setup first, so CI never gets here
        pytest.skip(".venv is older than pyproject.toml or a lock: run `make setup`")
    assert current.returncode == 0, current.stderr
    script = ["set -eo pipefail -x"]  # -x: the log shows each command; `: README.md:N` each block
    script += [f": README.md:{b.line}\n{b.code}" for b in SH if b.run]
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"a README block failed:\n{done.stdout[-6000:]}"


def test_every_project_path_the_readme_names_exists():
    """The README's tree and "Follow one video" table point newcomers at files: a move that
    forgets them leaves readers lost."""
    text = (ROOT / "README.md").read_text()
    tops = "sign2text|model|pipelines|tools|tests|manifests"
    paths = set(re.findall(rf"`((?:{tops})/[\w./-]*?)(?::\w+)?`", text))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "<" not in p)
    assert not missing, missing
