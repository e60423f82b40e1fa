"""The README stays a short entrance: at most ~200 lines, its links resolve, and its figures are the latest
bench run's (docs/bench.json), as in docs/performance.md."""

from __future__ import annotations

import json
import re

from bench.harness import markdown_table
from persona.settings import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 200


def test_every_link_of_the_readme_resolves() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links and [link for link in links if not (ROOT / link).exists()] == []


def test_the_readme_and_docs_show_the_latest_bench_run() -> None:
    table = markdown_table(json.loads((ROOT / "docs" / "bench.json").read_text())).strip()
    assert table in README
    assert table in (ROOT / "docs" / "performance.md").read_text()


def test_the_readme_and_the_scaling_doc_show_the_latest_layouts_run() -> None:
    from bench.layouts import markdown_table as layouts_table
    table = layouts_table(json.loads((ROOT / "docs" / "layouts.json").read_text())).strip()
    assert table in README
    assert table in (ROOT / "docs" / "scaling.md").read_text()
