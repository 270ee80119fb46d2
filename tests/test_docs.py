"""The README and docs/ point at files that exist: every path they name in backticks, and every relative
link, so a moved module cannot leave the reading guide pointing at nothing."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "examples" / "book" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("autograd/", "tinygrad_llm/", "examples/", "benchmarks/", "tests/", "docs/", "scripts/")
PATH = re.compile(r"`((?:%s)[\w./-]*\.(?:py|md|png|sh))`" % "|".join(re.escape(t) for t in TOP))
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_and_relative_link_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = [p for p in PATH.findall(text) if not (ROOT / p).exists()]
    missing += [link for link in LINK.findall(text) if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names what is not there: {missing}"


def test_the_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    for word in ("[cpu-speed]", "[layout]", "target met", "session"):
        assert word not in "\n".join(lines)
