"""Every relative link in the README and docs/ resolves: the file exists, and
a `#section` names a heading of that file (GitHub's anchor rule)."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces -> '-'."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def links(path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # not code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_readme_sections_named_in_code_exist():
    """A `README "Section"` in a comment or docstring names a heading or a
    bold paragraph lead of the README."""
    readme = (ROOT / "README.md").read_text()
    missing = []
    for path in [*ROOT.glob("lstm_jax/**/*.py"), ROOT / "pyproject.toml", ROOT / "Makefile"]:
        for name in re.findall(r'README "([^"]+)"', path.read_text()):
            if f"# {name}" not in readme and f"**{name}**" not in readme:
                missing.append(f'{path.relative_to(ROOT)}: README "{name}"')
    assert not missing, missing
