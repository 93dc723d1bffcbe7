"""Every relative link in README.md, docs/*.md and docs/results/*.md leads to a file that
exists and, with a ``#fragment``, to a heading of that page (the anchor GitHub gives it); so does every
``docs/PAGE.md#anchor`` that the code, the default budgets and the tests point at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "results").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) or ![alt](target); a target may carry a "title" after a space.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# docs/PAGE.md or docs/PAGE.md#anchor (docs/results/KIND.md#anchor too) as the code, its
# comments and the tests name a section; pages are named in lower case (README.md aside),
# so a placeholder in capitals (docs/results/KIND.md) names none.
DOC_REFERENCE = re.compile(r"\bdocs/((?:[a-z][\w-]*/)*(?:README|[a-z][\w-]*)\.md)(?:#([\w-]+))?")
SOURCES = sorted([*(ROOT / "densenet_opt").rglob("*.py"), *(ROOT / "densenet_opt").rglob("*.toml"),
                  *(ROOT / "tests").glob("*.py"), ROOT / "conftest.py", ROOT / "noxfile.py"])
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """``text`` without fenced code blocks (their lines are neither headings nor links)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, everything but letters,
    digits, ``_``, ``-`` and spaces dropped, spaces turned into ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(page.read_text())):
        slug = anchor(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page: Path) -> list[str]:
    """The targets of ``page``'s links outside code."""
    return LINK.findall(CODE_SPAN.sub("", prose(page.read_text())))


def broken(page: Path) -> list[str]:
    """``page``'s relative links whose file or heading does not exist, each with why."""
    problems = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            problems.append(f"{target}: no file {destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else destination}")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            problems.append(f"{target}: {destination.name} has no heading with the anchor #{fragment}")
    return problems


def broken_references(source: Path) -> list[str]:
    """``source``'s docs/PAGE.md#anchor references whose page or heading does not exist."""
    problems = []
    for page, fragment in DOC_REFERENCE.findall(source.read_text()):
        destination = ROOT / "docs" / page
        if not destination.is_file():
            problems.append(f"docs/{page}: no such page")
        elif fragment and fragment not in anchors(destination):
            problems.append(f"docs/{page}#{fragment}: {page} has no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


def test_every_docs_reference_in_the_code_resolves() -> None:
    problems = {str(source.relative_to(ROOT)): found for source in SOURCES
                if source != Path(__file__).resolve() and (found := broken_references(source))}
    assert problems == {}


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## How often it is wrong: `tools/x.py`\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\nGood: [a](other.md#how-often-it-is-wrong-toolsxpy), [b](other.md#same-1), [c](#page),\n"
        "[web](https://example.com/x#y), `[code](nowhere.md)`.\n\n```\n[fenced](nowhere.md)\n# not a heading\n```\n\n"
        "Bad: [d](missing.md), [e](other.md#below), [f](#not-a-heading).\n"
    )
    problems = broken(page)
    assert len(problems) == 3, problems
    assert problems[0].startswith("missing.md: no file")
    assert problems[1] == "other.md#below: other.md has no heading with the anchor #below"
    assert problems[2] == "#not-a-heading: page.md has no heading with the anchor #not-a-heading"


def test_github_anchors() -> None:
    assert anchor("How often it is wrong: `tools/false_alarm_rate.py`") == "how-often-it-is-wrong-toolsfalse_alarm_ratepy"
    assert anchor("The rule: a ratio, its interval, a verdict") == "the-rule-a-ratio-its-interval-a-verdict"
    assert anchor("Stacked techniques (`<transform>+<variant>`)") == "stacked-techniques-transformvariant"


def test_the_reference_checker_finds_a_missing_page_and_anchor(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("# see docs/numbers.md#budgets, docs/nowhere.md, docs/numbers.md#not-there, "
                      "docs/results/KIND.md (a placeholder) and docs/results/nowhere.md#x\n")
    assert broken_references(source) == ["docs/nowhere.md: no such page",
                                         "docs/numbers.md#not-there: numbers.md has no heading with that anchor",
                                         "docs/results/nowhere.md: no such page"]
