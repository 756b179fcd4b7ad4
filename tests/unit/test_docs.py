"""The documentation must not drift from the code: the generated reference tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def update_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_docs", REPO / "scripts" / "update-docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_tables_match_the_models() -> None:
    module = update_docs()
    wanted = module.pages()
    assert set(wanted) == {REPO / "docs" / "configuration.md", REPO / "docs" / "runs.md"}
    for page, text in wanted.items():
        assert page.read_text() == text, f"{page.relative_to(REPO)}: reference table is stale: run `make docs`"
    assert "`trigger.safety_factor` | float | `1.1`" in (REPO / "docs" / "configuration.md").read_text()
