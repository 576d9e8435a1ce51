"""The README and docs/ as a reader meets them: every table renders as a table (parsed by a
CommonMark parser with tables, as a repository host renders them), every file they point to
exists in this repository, and they point to nothing a reader of it cannot open."""
import glob
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in DOCS]


def parse(path: Path):
    return MarkdownIt("commonmark").enable("table").parse(path.read_text())


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_every_table_renders(path):
    """A line starting with '|' outside a code block must belong to a rendered table: a blank
    line inside a table turns its second half into a paragraph of raw pipes."""
    tokens = parse(path)
    for i, t in enumerate(tokens):
        if t.type == "inline" and tokens[i - 1].type == "paragraph_open":
            raw = [ln for ln in t.content.splitlines() if ln.lstrip().startswith("|")]
            assert not raw, f"{path.name} line {t.map[0] + 1}: not a table: {raw[0]}"
    # and every row has as many cells as its table's header
    header, row = None, 0
    for t in tokens:
        if t.type == "thead_open":
            header = None
        elif t.type == "tr_open":
            row = 0
        elif t.type in ("th_open", "td_open"):
            row += 1
        elif t.type == "tr_close":
            if header is None:
                header = row
            assert row == header, f"{path.name}: a row of {row} cells under {header} columns"


# Paths as the docs write them: relative to the repository, or to the package directory.
PATH = re.compile(r"`((?:[\w.*-]+/)*[\w.*-]+\.(?:py|c|h|md|toml))`")


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_every_file_named_exists(path):
    missing = []
    for name in PATH.findall(path.read_text()):
        bases = [ROOT, ROOT / "src", ROOT / "src" / "pvpatch", ROOT / "src" / "pvpatch" / "_core",
                 ROOT / "src" / "pvpatch" / "hints", ROOT / "src" / "pvpatch" / "include"]
        if not any(glob.glob(str(b / name)) for b in bases):
            missing.append(name)
    assert not missing, f"{path.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_no_reference_a_reader_cannot_open(path):
    text = " ".join(path.read_text().split())
    for bad in ("DESIGN.md", "STYLE.md", "the issue", "shared/"):
        assert bad not in text, f"{path.name} refers to {bad!r}, which is not in the repository"
    # The RFC is cited by its LKML title wherever a document first mentions it.
    first = text.find("RFC")
    if first >= 0:
        assert "[RFC PATCH 00/26] Runtime paravirt patching" in text[first:first + 200], \
            f"{path.name}: the first mention of the RFC does not give its title"
