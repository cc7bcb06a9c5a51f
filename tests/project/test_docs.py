"""The README and the documentation site: every relative link in README.md points to a file
of the checkout (mkdocs build --strict checks docs/ itself), and the site's copy of the
mission grid's figure is the report's."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links and images outside code, without URLs or anchors alone."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_link_of_the_readme_points_to_a_file() -> None:
    links = relative_links((REPO / "README.md").read_text())
    assert links, "the README links to docs/"
    missing = [t for t in links if not (REPO / t.split("#")[0]).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_readme_links_every_page_of_the_site() -> None:
    linked = {t.split("#")[0] for t in relative_links((REPO / "README.md").read_text())}
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md") if p.name != "index.md"}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"


def test_the_sites_figure_is_the_reports() -> None:
    name = "mae_vs_labels_mission_acquisition.png"
    report = REPO / "reports" / "mission_acquisition" / "plots" / name
    assert (REPO / "docs" / "img" / name).read_bytes() == report.read_bytes(), (
        f"copy {report.relative_to(REPO)} to docs/img/ again"
    )


def test_relative_links_ignore_urls_code_and_anchors() -> None:
    text = "[a](docs/a.md) [b](https://x.org) [c](#c) `[d](e.md)` ![f](img/f.png)"
    assert relative_links(text) == ["docs/a.md", "img/f.png"]
