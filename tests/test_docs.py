"""The design documents in docs/ are the ones the code cites, and no path of a build machine is written anywhere.

Section citations: every section sign in the code, tests, scripts, data tools and the README must name a document
of docs/ and a numbered heading of it. The accepted forms are ``docs/ALGORITHM.md <sign>7.4`` (the project's
convention), ``ALGORITHM.md <sign>7.4`` and ``ALGORITHM <sign>7.4``; ranges (``<sign>6.1-6.3``, ``<sign>4-<sign>6``,
``<sign>7.2-3``) check both ends. A bare sign refers to the document named last before it in the same file (a
module docstring that names the document once covers the rest of the module). Section numbers come from the
Markdown headings of the documents (``## 7. Title``, ``### 7.4 Title``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SIGN = "\u00a7"  # the section sign, spelled out so that this file does not cite anything itself

CITING = ["ivcprune", "tests", "scripts", "data_tools", "README.md"]
SCANNED_FOR_PATHS = CITING + ["docs", "setup.sh", "pyproject.toml"]
TEXT_SUFFIXES = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ".ini"}

# Written in pieces so that this file does not match itself.
MACHINE_PATHS = re.compile("|".join(re.escape(p) for p in (
    "/" + "home/", "/" + "Users/", "/" + "root/", "/" + "tmp/", "/" + "work/", "C:" + "\\Users",
)))

HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
NUMBER = r"(\d+(?:\.\d+)*)"
CITATION = re.compile(SIGN + r"\s*" + NUMBER + r"(?:\s*[-\u2013]\s*" + SIGN + r"?\s*" + NUMBER + r")?")
# An upper-case name right before a section sign: a document reference, known or not.
NAMED = re.compile(r"(?:docs/)?\b([A-Z][A-Z0-9_]*[A-Z0-9])(?:\.md)?\s*(?=" + SIGN + ")")
DOC_PATH = re.compile(r"\bdocs/([A-Za-z0-9_\-]+\.md)\b")


def documents() -> dict[str, set[str]]:
    """Document stem -> the section numbers of its headings."""
    docs = {}
    for path in sorted(DOCS.glob("*.md")):
        sections = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            m = HEADING.match(line)
            if m:
                sections.add(m.group(1))
        docs[path.stem] = sections
    return docs


def _files(roots: list[str]):
    for name in roots:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts \
                        and not any(p.endswith(".egg-info") for p in f.parts):
                    yield f


def _range_end(start: str, end: str) -> str:
    """'7.2-3' means 7.2 to 7.3: a shorter end replaces the last components of the start."""
    a, b = start.split("."), end.split(".")
    return ".".join(a[:len(a) - len(b)] + b) if len(b) < len(a) else end


def citations():
    """(file, line number, document or None, section) for every section sign in the citing files."""
    docs = documents()
    mention = re.compile(r"(?:docs/)?\b(" + "|".join(re.escape(d) for d in docs) + r")(?:\.md)?\b") if docs else None
    out = []
    for path in _files(CITING):
        if path.resolve() == Path(__file__).resolve():
            continue
        current = None  # the document named last in this file
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            marks = []  # (offset, document name) of every document reference on the line
            if mention is not None:
                marks += [(m.start(), m.group(1)) for m in mention.finditer(line)]
            marks += [(m.start(), m.group(1)) for m in NAMED.finditer(line)]
            marks.sort()
            for m in CITATION.finditer(line):
                before = [name for offset, name in marks if offset < m.start()]
                doc = before[-1] if before else current
                sections = [m.group(1)] + ([_range_end(m.group(1), m.group(2))] if m.group(2) else [])
                for section in sections:
                    out.append((path.relative_to(ROOT).as_posix(), number, doc, section))
            if marks:
                current = marks[-1][1]
    return out


def test_the_design_documents_exist():
    docs = documents()
    for name in ("ALGORITHM", "ARCHITECTURE", "HARNESS", "DEEPSEEK_VL2"):
        assert name in docs, f"docs/{name}.md is missing"
    assert docs["ALGORITHM"] >= {"2", "3", "4.1", "4.2", "4.3", "5", "6.2", "7.1", "7.11", "8", "9"}
    assert docs["HARNESS"] >= {"1", "2", "3", "5", "6.1", "6.5", "7", "8", "9", "10", "11", "13", "14"}


def test_the_architecture_document_has_a_module_layout_section():
    text = (DOCS / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert re.search(r"^## .*Module layout", text, re.M), "docs/ARCHITECTURE.md needs its 'Module layout' section"


def test_every_section_citation_resolves():
    docs = documents()
    found = citations()
    assert len(found) > 50, "the citation scan found suspiciously few citations"
    bad = []
    for file, line, doc, section in found:
        if doc is None:
            bad.append(f"{file}:{line}: {SIGN}{section} names no document (write docs/<NAME>.md {SIGN}{section})")
        elif doc not in docs:
            bad.append(f"{file}:{line}: {doc} {SIGN}{section}: there is no docs/{doc}.md")
        elif section not in docs[doc]:
            bad.append(f"{file}:{line}: docs/{doc}.md has no section {section}")
    assert not bad, "unresolved citations:\n" + "\n".join(bad)


def test_every_docs_path_exists():
    missing = []
    for path in _files(SCANNED_FOR_PATHS):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in DOC_PATH.finditer(line):
                if not (DOCS / m.group(1)).is_file():
                    missing.append(f"{path.relative_to(ROOT).as_posix()}:{number}: docs/{m.group(1)}")
    assert not missing, "paths to missing documents:\n" + "\n".join(missing)


def test_no_build_machine_paths():
    found = []
    for path in _files(SCANNED_FOR_PATHS):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATHS.search(line):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()[:120]}")
    assert not found, "paths of a build machine:\n" + "\n".join(found)


@pytest.mark.parametrize("text, expected", [
    (f"(docs/ALGORITHM.md {SIGN}7.2-3)", [("ALGORITHM", "7.2"), ("ALGORITHM", "7.3")]),
    (f"HARNESS.md {SIGN}4-{SIGN}6, ALGORITHM {SIGN}2 F7", [("HARNESS", "4"), ("HARNESS", "6"), ("ALGORITHM", "2")]),
    (f"NOPE {SIGN}3", [("NOPE", "3")]),
])
def test_the_citation_parser(tmp_path, monkeypatch, text, expected):
    (tmp_path / "docs").mkdir()
    for name in ("ALGORITHM", "HARNESS"):
        (tmp_path / "docs" / f"{name}.md").write_text("# t\n## 2. a\n## 4. b\n## 6. c\n## 7. d\n### 7.2 e\n### 7.3 f\n")
    (tmp_path / "README.md").write_text(text + "\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(module, "CITING", ["README.md"])
    assert [(doc, sec) for _, _, doc, sec in citations()] == expected
