"""The README is a front page, the docs pages hold the rest, and their links hold together."""

import re
from pathlib import Path

import pytest

from helpers import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 320
#: the line of .ci/run after which the README's test command stands, verbatim
CI_MARKER = "# --- the README's test command, verbatim ---"

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside one is no link)."""
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def _anchors(path: Path) -> set:
    seen: dict = {}
    out = set()
    for line in _prose(_text(path)).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _relative_links(path: Path):
    for target in _LINK.findall(_prose(_text(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        yield target


def test_readme_is_a_front_page():
    n = len(_text(README).splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (at most {MAX_README_LINES})"


def test_the_docs_pages_exist():
    names = {p.name for p in DOCS}
    for page in ("taxonomy", "engines", "planning", "tensor-parallelism", "measuring", "cache",
                 "quality", "json", "accuracy", "extending", "architecture"):
        assert f"{page}.md" in names, page


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(path):
    links = list(_relative_links(path))
    assert links or path != README
    for target in links:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.is_file(), f"{path.relative_to(ROOT)}: {target} points to no file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{path.relative_to(ROOT)}: {target}: no such heading"


def test_readme_links_every_docs_page():
    links = {t.partition("#")[0] for t in _relative_links(README)}
    for page in DOCS:
        assert f"docs/{page.name}" in links, page.name


def test_readme_test_command_is_the_one_ci_runs():
    ci = _text(ROOT / ".ci" / "run").splitlines()
    command = ci[ci.index(CI_MARKER) + 1]
    assert "pytest" in command
    blocks = re.findall(r"^```bash\n(.*?)^```", _text(README), re.M | re.S)
    assert any(command in block.splitlines() for block in blocks), \
        "README.md's test command is not the one .ci/run runs"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_a_quoted_median_error_comes_with_its_p90_and_worst(path):
    """A median alone reads like a bound: wherever the docs quote a median percentage, its p90
    and worst follow (tests/benchmarks/accuracy_quotes.py computes them from the committed
    results)."""
    text = re.sub(r"\s+", " ", _prose(_text(path)))
    for m in re.finditer(r"\bmedian\b[^%]{0,40}?\d+(?:\.\d+)? ?%", text):
        tail = text[m.start():m.start() + 160]
        assert "p90" in tail and "worst" in tail, f"{path.name}: {tail[:100]!r} quotes a median alone"
