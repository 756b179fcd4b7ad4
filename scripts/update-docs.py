#!/usr/bin/env python3
"""Regenerate the reference tables in README.md from the models (tests check they match)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hecate.domain.config import HecateConfig
from hecate.domain.reference import markdown_table
from hecate.domain.runs import RunRecord

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = {"config-reference": HecateConfig, "run-record-reference": RunRecord}


def render(text: str) -> str:
    for name, model in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the {name} markers")
        text = pattern.sub(lambda m, model=model: m.group(1) + markdown_table(model) + m.group(2), text)
    return text


if __name__ == "__main__":
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if wanted == current else "README.md reference tables are stale: run make docs")
    README.write_text(wanted)
