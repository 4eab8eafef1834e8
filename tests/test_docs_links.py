"""The README and the manual (docs/, mkdocs.yml) hold together: every link resolves, the README stays a front page.

Checked without mkdocs: every relative link ([text](target), ![alt](target), with or without
#anchor) in README.md, docs/*.md and the generated leaderboard/LEADERBOARD.md names an existing file
or folder of the repository, and every #anchor into a markdown file names one of its headings by
GitHub's rule (what GitHub renders; mkdocs.yml makes the site's heading ids the same). A link that
starts with "/" is relative to the repository root, as GitHub reads it (mkdocs leaves it as is): the
manual links to the repository's other files so, since mkdocs --strict refuses a "../" link out of
docs/. Then: README.md has at most 250 lines, and
mkdocs.yml's nav lists every docs page and only existing ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 250
CHECKED = [REPO / "README.md", *sorted(DOCS.rglob("*.md")), REPO / "leaderboard" / "LEADERBOARD.md"]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text (code marks, emphasis and link targets
    dropped), lowercased, every character but letters, digits, `_`, `-` and spaces removed, each
    space a hyphen (not collapsed: "a → b" gives "a--b")."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file; repeated slugs get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken(path: Path, target: str) -> str | None:
    """Why a link from `path` does not resolve, or None."""
    if not target or target.startswith(EXTERNAL):
        return None if target else "an empty link"
    location, _, anchor = target.partition("#")
    if not location:
        resolved = path
    elif location.startswith("/"):
        resolved = REPO / location.lstrip("/")
    else:
        resolved = path.parent / location
    resolved = resolved.resolve()
    if not resolved.is_relative_to(REPO):
        return f"{location} is outside the repository"
    if path.is_relative_to(DOCS) and not location.startswith("/") and not resolved.is_relative_to(DOCS):
        return f"leaves docs/, which mkdocs --strict refuses: write it from the repository root, /{resolved.relative_to(REPO)}"
    if not resolved.exists():
        return f"{resolved.relative_to(REPO)} does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{resolved.relative_to(REPO)} has no heading #{anchor}"
    return None


@pytest.mark.parametrize("heading, slug", [
    ("Vision and language: text, `synth-it`, `crisismmd`", "vision-and-language-text-synth-it-crisismmd"),
    ("Does FD-CMKD's premise hold? (`leaderboard/ANALYSIS.md`)", "does-fd-cmkds-premise-hold-leaderboardanalysismd"),
    ("`cmkd_bench.registry`: `METHODS`, `DATASETS`, `BACKBONES`", "cmkd_benchregistry-methods-datasets-backbones"),
    ("NYU-Depth V2 (`nyuv2`)", "nyu-depth-v2-nyuv2"),
    ("synth-av audio → visual", "synth-av-audio--visual"),
    ("tuned: test miou/top1 (%) at the best-validation epoch, mean ± std over seeds",
     "tuned-test-mioutop1--at-the-best-validation-epoch-mean--std-over-seeds"),
    ("Your own data: `paired-npz`", "your-own-data-paired-npz"),
    ("What a method's stage is on a *text* model", "what-a-methods-stage-is-on-a-text-model"),
])
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_repeated_headings_are_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```bash\n# a comment, no heading\n```\n\n## Notes\n\n### Notes\n")
    assert anchors(page) == {"title", "notes", "notes-1"}


def test_links_are_found_outside_code_only(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[a](x.md) and ![b](img/y.png#z) and `[c](not-a-link.md)`\n\n```\n[d](nor-this.md)\n```\n"
                    "[e](/docs/index.md#contents \"title\")\n")
    assert [target for _, target in links(page)] == ["x.md", "img/y.png#z", "/docs/index.md#contents"]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(path: Path) -> None:
    problems = [f"{path.relative_to(REPO)}:{number}: ({target}) {why}"
                for number, target in links(path) if (why := broken(path, target))]
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml's !!python/... tags (the slugify function) read as None: only the structure matters here."""


_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages += nav_pages(value) if isinstance(value, list) else [value]
    return [page for page in pages if not str(page).startswith(EXTERNAL)]


def test_mkdocs_nav_lists_every_page_and_only_existing_ones() -> None:
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)
    assert (REPO / config.get("docs_dir", "docs")).resolve() == DOCS
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert not set(listed) - pages, f"nav entries without a page: {sorted(set(listed) - pages)}"
    assert not pages - set(listed), f"docs pages missing from mkdocs.yml's nav: {sorted(pages - set(listed))}"
