"""``hecate status`` on a terminal: the UPS table drawn by rich, in colour; plain text everywhere else.

Pipes, files and scripts get :func:`hecate.cli.render.status_text` unchanged -- no colours, no box
characters, stable columns -- so what they parse never depends on a terminal. A person at a TTY
gets the same lines around a rich table. Every string is cleaned (``hecate.domain.text``) and
printed as rich ``Text``, never parsed as markup: upsd's status could carry ``[bold]`` or ``[/x]``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hecate.cli import render
from hecate.domain import text

STATE_STYLE = {"on_mains": "green", "on_battery": "yellow", "below": "bold red", "critical": "bold red",
               "lost": "red", "unreachable": "red", "stale": "red", "unknown": "dim"}
"""The colour of a UPS's ``state`` cell, by its first word."""
CHECK_STYLE = {"OK": "bold green", "WARNING": "bold yellow", "CRITICAL": "bold red", "UNKNOWN": "bold magenta"}
LINE_STYLE = (("Trigger:   SHUTDOWN", "bold red"), ("Trigger:   dry-run", "yellow"),
              ("Trigger:   armed", "green"), ("Alert:", "yellow"), ("Warning:", "yellow"))
"""The style of a line under the table, by how it starts (the first match)."""


def show(doc: dict[str, Any], console: Console) -> None:
    """Print the status: a rich table when ``console`` is a terminal, :func:`render.status_text` otherwise."""
    if not console.is_terminal:
        console.file.write(render.status_text(doc) + "\n")
        return
    for line in render.head_lines(doc):
        console.print(_line(line))
    console.print(ups_table(doc))
    for line in render.detail_lines(doc):
        console.print(_line(line))


def ups_table(doc: dict[str, Any]) -> Table:
    """The UPS table (the columns of the plain text); a UPS that does not protect the cluster is marked ``*``."""
    rows = render.ups_rows(doc)
    others = not all(protects for _, protects in rows)
    table = Table(caption=f"* {render.NOT_PROTECTING}" if others else None, caption_justify="left")
    for name, align, _ in render.UPS_COLUMNS:
        table.add_column(name, justify="left" if align == "<" else "right")
    for cells, protects in rows:
        name, state, *rest = (text.clean(cell, text.MAX_VALUE_CHARS) for cell in cells)
        table.add_row(Text(name + ("" if protects else " *")),
                      Text(state, style=STATE_STYLE.get(state.split(" ")[0], "")),
                      *(Text(cell) for cell in rest))
    return table


def _line(line: str) -> Text:
    cleaned = text.clean(line, render.LINE_CHARS)
    words = cleaned.split()
    if words[:1] == ["Check:"] and len(words) > 1:
        return Text(cleaned, style=CHECK_STYLE.get(words[1], ""))
    return Text(cleaned, style=next((style for prefix, style in LINE_STYLE if cleaned.startswith(prefix)), ""))
