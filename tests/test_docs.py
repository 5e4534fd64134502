"""The front door: a short README whose pictures exist, docs whose relative links all
resolve (anchors included), and the Space's front matter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    text = "\n".join(lines)
    for must in ("python app.py", "python -m pytest -q", "hf upload ", "docs/captioner.md", "docs/training.md"):
        assert must in text, must


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_picture_resolves(page):
    links = LINK.findall(page.read_text())
    for is_image, target in links:
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if is_image:
            assert resolved.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".svg") and resolved.stat().st_size
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


def test_the_readme_shows_the_caption_tab():
    pictures = [t for is_image, t in LINK.findall((ROOT / "README.md").read_text()) if is_image]
    assert "docs/images/caption-tab.png" in pictures and "docs/images/caption-tab-phone.png" in pictures


def test_the_space_front_matter_is_valid():
    import gradio

    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    front = dict(line.split(": ", 1) for line in text.split("---\n")[1].strip().splitlines())
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert front["sdk_version"] == gradio.__version__
    assert (ROOT / front["app_file"]).is_file()
