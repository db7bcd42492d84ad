"""Every relative link in README.md and docs/*.md leads somewhere.

A link's path (relative to the page) must be an existing file or folder of the repository; a link
to a heading (``page.md#anchor``, or ``#anchor`` on the same page) must name a heading of that page,
as GitHub makes anchors from headings. Links inside code are not links and are skipped; web
addresses are not checked (no network).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code spans."""
    out, in_block = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            out.append("")
            continue
        out.append("" if in_block else re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        m = None if in_block else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{where}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}: {dest.name} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = link_problems(page, page.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_the_check_finds_links_and_fails_on_broken_ones():
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert len(LINK.findall(_prose(text))) >= 20  # the map of the docs alone has a row per page
    assert "[docs/labelling.md](docs/labelling.md#agreement-with-reference-labels)" in text
    broken = {
        "[x](docs/labeling.md)": "no such file",
        "[x](docs/labelling.md#agreement-with-references)": "has no heading",
        "[x](#no-such-heading)": "has no heading",
        "![x](docs/img/nope.png)": "no such file",
    }
    for link, why in broken.items():
        problems = link_problems(readme, text + "\n" + link + "\n")
        assert len(problems) == 1 and why in problems[0], (link, problems)
    # a link inside code is not a link
    assert not link_problems(readme, text + "\n`[x](nope.md)`\n```\n[x](nope.md)\n```\n")


def test_anchors_are_githubs():
    page = "# rlaif\n## 2. `rlaif calibrate`\n## Best-of-N (`rlaif/pipeline/bon.py`)\n## Ties\n### Ties\n```\n# not a heading\n```\n"
    assert anchors(page) == {"rlaif", "2-rlaif-calibrate", "best-of-n-rlaifpipelinebonpy", "ties", "ties-1"}


def test_the_readme_maps_every_page():
    """README's "Map of the docs" has a row for every page of docs/, so a new page is findable."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Map of the docs", 1)[1].split("\n## ", 1)[0]
    rows = {m for line in section.splitlines() if line.startswith("| [") for m in re.findall(r"\]\(docs/([^)#]+)\)", line)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert rows == pages, f"missing from the map: {sorted(pages - rows)}; not pages: {sorted(rows - pages)}"
