"""The README stays an entry point, and no link in the docs points nowhere (issue 22).

Only markdown links `[text](target)` are checked (images too), not paths quoted as code: a
relative target must be an existing file or folder, and an anchor on a markdown file must name
one of its headings (GitHub's slugs).
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_LIMIT = 12288  # bytes
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return _CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def slugs(path: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_an_entry_point():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md: {size} bytes > {README_LIMIT}: move text to docs/"


def test_the_link_check_sees_links(tmp_path):
    assert links(REPO / "README.md")  # the pattern matches this README's links at all
    sample = tmp_path / "sample.md"
    sample.write_text("# A `b` heading\n[a](x.md#a-b-heading) `[b](not-a-link)` ![c](../y.png)\n"
                      "```\n[d](in-code)\n```\n")
    assert links(sample) == ["x.md#a-b-heading", "../y.png"]
    assert slugs(sample) == {"a-b-heading"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in links(doc):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)
