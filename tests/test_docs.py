"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: every page in the nav,
no broken link, the API reference rendered from the docstrings (mkdocstrings). mkdocs, mkdocs-material and
mkdocstrings are in the `dev` extra: without them this module FAILS, it never skips."""
import os
import subprocess
import sys

import mkdocs  # noqa: F401  (the dev extra: fail here, not skip)
import yaml

from runs import REPO


def test_site_builds_strict_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    nav = list(pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))
    assert "index.md" in nav and any(p.startswith("reference/") for p in nav)
    for page in nav:
        html = site / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert html.is_file(), page
    # the reference is generated from the code's docstrings
    sweep_page = (site / "reference" / "sweep" / "index.html").read_text()
    assert "run_hash" in sweep_page and "What identifies a run" in sweep_page
