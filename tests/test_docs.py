"""The docs hold together: the README is a door (≤ 200 lines) to one page per subject under docs/, and every
relative link in them resolves to a file of this repository (and to a heading, where a link names one)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "slurm" / "README.md"]
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, …


def _links(page: Path) -> list[str]:
    """Link targets of a Markdown page, outside code blocks and code spans."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces as hyphens."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    out = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _problems(page: Path) -> list[str]:
    problems = []
    for target in _links(page):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        where = f"{page.relative_to(ROOT)}: link ({target})"
        if path.startswith("/"):
            problems.append(f"{where} is absolute; link relative to the page")
            continue
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in resolved.parents and resolved != ROOT:
            problems.append(f"{where} leaves the repository; cite the source by its public address instead")
        elif not resolved.exists():
            problems.append(f"{where} names a file that does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    problems = _problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    outside = sorted(set(re.findall(r"(?:\.\./)+shared\b[^\s)`]*|/work/[^\s)`]*", text)))
    assert not outside, f"{page.relative_to(ROOT)} refers to paths outside the repository: {outside}"


def test_readme_is_a_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move a subject "
                                       "to its page under docs/ and link it")


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(ROOT / "README.md") if not _EXTERNAL.match(t)}
    unlinked = [p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"README.md links no page for {unlinked}: add each to its documentation table"


def test_the_link_checker_finds_a_broken_link_and_an_escape(tmp_path, monkeypatch):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A heading\n", encoding="utf-8")
    page.write_text("[ok](there.md) [ok](there.md#a-heading) [web](https://example.org) `[code](nowhere.md)`\n"
                    "[gone](missing.md) [anchor](there.md#nope) [out](../../elsewhere.txt)\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = _problems(page)
    assert [p.split(": link ")[1].split(")")[0] + ")" for p in problems] == [
        "(missing.md)", "(there.md#nope)", "(../../elsewhere.txt)"], problems
