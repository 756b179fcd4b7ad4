"""The README's reference tables are generated from the models and must not drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_reference_tables_match_the_models() -> None:
    spec = importlib.util.spec_from_file_location("update_docs", REPO / "scripts" / "update-docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (REPO / "README.md").read_text()
    assert module.render(readme) == readme, "README reference tables are stale: run `make docs`"
    assert "`trigger.safety_factor` | float | `1.1`" in readme
