"""The user docs hold together: every relative link resolves, and no commit hash stands in the prose.

Checked files: README.md, CHANGELOG.md and every ``docs/**/*.md``.

Links: every inline markdown link or image ``[text](target)`` whose target is
relative (not ``http(s)://``, ``mailto:`` or another scheme, and not a bare
``#anchor`` inside the same page) must name an existing file or folder,
relative to the file that holds the link. A ``path.md#anchor`` target must
also name a heading of that file, slugged the way GitHub slugs headings.
Links inside fenced code blocks and inline code spans are examples, not links,
and are skipped.

Hashes: README.md and docs/ describe the code as built, with dates and
machines for measurements; the history (and its commit ids) lives in git and
CHANGELOG.md. A word of 7 to 40 lower-case hex digits with at least one digit
and one letter is taken for a commit hash unless it is allow-listed below.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

LINKED_FILES = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *(REPO_ROOT / "docs").rglob("*.md")]
)
HASH_CHECKED_FILES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])

# Hex words that are not commit ids:
# - "6726825d" is part of the file name torch-fidelity gives its Inception
#   weights, ``weights-inception-2015-12-05-6726825d.pth`` (torch hub names a
#   weight file after the first hex digits of its sha256). The docs name that
#   file so users can place it; it is a file name, not a revision.
HEX_ALLOWED = frozenset({"6726825d"})

FENCE = re.compile(r"^(\s*)(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) or ![alt](target), target optionally in <...> and followed by a "title".
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\(\s*(?P<target><[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEX_WORD = re.compile(r"\b[0-9a-f]{7,40}\b")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    lines = []
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(2)
            elif match.group(2) == fence:
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def strip_inline_code(text: str) -> str:
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation other than - and _ dropped,
    spaces to '-'."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
    title = re.sub(r"<[^>]+>", "", title)  # inline HTML tags
    title = title.strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def heading_anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group("title"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code, bare '#anchor' links excluded."""
    lines = prose_lines(path.read_text(encoding="utf-8"))
    # Join the prose back so that a link whose text wraps over two lines is still found.
    numbers = []
    joined = []
    for number, line in lines:
        numbers.extend([number] * (len(line) + 1))
        joined.append(line)
    text = strip_inline_code("\n".join(joined))
    links = []
    for match in LINK.finditer(text):
        target = match.group("target").strip()
        if target.startswith("<") and target.endswith(">"):
            target = target[1:-1].strip()
        if not target or target.startswith("#") or SCHEME.match(target) or target.startswith("//"):
            continue
        links.append((numbers[match.start()], target))
    return links


def broken_link(source: Path, target: str) -> str | None:
    """Why ``target`` (as written in ``source``) does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    file_part = unquote(file_part.split("?", 1)[0])
    resolved = (source.parent / file_part).resolve()
    if not resolved.exists():
        return f"{file_part} does not exist (looked for {resolved})"
    if anchor:
        if resolved.is_dir() or resolved.suffix.lower() != ".md":
            return None  # anchors into non-markdown files are not checked
        anchor = unquote(anchor).lower()
        if anchor not in heading_anchors(resolved):
            return f"{_rel(resolved)} has no heading with the anchor #{anchor}"
    return None


def test_the_checked_files_exist():
    names = {_rel(p) for p in LINKED_FILES}
    assert {"README.md", "CHANGELOG.md", "docs/design.md", "docs/vtp-method.md"} <= names


@pytest.mark.parametrize("path", LINKED_FILES, ids=_rel)
def test_every_relative_link_resolves(path: Path):
    problems = [
        f"{_rel(path)}:{number}: ({target}) {why}"
        for number, target in relative_links(path)
        if (why := broken_link(path, target)) is not None
    ]
    assert not problems, "broken relative links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", HASH_CHECKED_FILES, ids=_rel)
def test_no_commit_hashes(path: Path):
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for match in HEX_WORD.finditer(line):
            word = match.group(0)
            if word in HEX_ALLOWED or word.isdigit() or word.isalpha():
                continue
            found.append(f"{_rel(path)}:{number}: {word}")
    assert not found, "commit hashes in user docs (history belongs in git and CHANGELOG.md):\n" + "\n".join(
        found
    )


# ----------------------------------------------------------------------------- the checker itself


def test_github_slugs():
    assert github_slug("Stage 2: generators on cached latents, and sampling") == (
        "stage-2-generators-on-cached-latents-and-sampling"
    )
    assert (
        github_slug("The tiny recipe (`configs/stage2/tiny.yaml`)") == "the-tiny-recipe-configsstage2tinyyaml"
    )
    assert github_slug("Resume: exact, by construction") == "resume-exact-by-construction"
    assert github_slug("CPU vs GPU / what_is left") == "cpu-vs-gpu--what_is-left"
    assert github_slug("See [the docs](docs/x.md)") == "see-the-docs"


def test_the_checker_finds_broken_links_and_skips_code(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section: here\n\n## A section: here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "See [other](other.md#a-section-here), [second](other.md#a-section-here-1),\n"
        "[wrapped\ntext](other.md), ![img](missing.png), [bad anchor](other.md#nope),\n"
        "[web](https://example.com/x), [self](#local), [mail](mailto:a@b.c), `[code](nowhere.md)`.\n"
        "```\n[fenced](nowhere.md)\n# not a heading\n```\n"
    )
    links = relative_links(page)
    assert [target for _, target in links] == [
        "other.md#a-section-here",
        "other.md#a-section-here-1",
        "other.md",
        "missing.png",
        "other.md#nope",
    ]
    assert [number for number, _ in links] == [1, 1, 2, 3, 3]
    verdicts = {target: broken_link(page, target) for _, target in links}
    assert verdicts["other.md#a-section-here"] is None
    assert verdicts["other.md#a-section-here-1"] is None
    assert verdicts["other.md"] is None
    assert "does not exist" in verdicts["missing.png"]
    assert "no heading" in verdicts["other.md#nope"]
    assert "not-a-heading" not in heading_anchors(page)


def test_the_hex_pattern():
    words = HEX_WORD.findall("commit 2e5d7e0 and 693cbf0deadbeef, 2026-12-04, not deadbeef or 1234567")
    flagged = [w for w in words if not (w.isdigit() or w.isalpha() or w in HEX_ALLOWED)]
    assert flagged == ["2e5d7e0", "693cbf0deadbeef"]
