"""Text from outside made safe to print: no control characters, no escape sequences, bounded length.

upsd (status tokens, ``ERR`` texts, variable values), the Kubernetes API (messages, reasons,
names) and SSH (a node's stdout and stderr, a server's banner) are not Hecate's to trust,
and what they say ends up on root's terminal (``hecate status``, the live progress of a
run), in the journal and in ``runs.json``. A terminal escape sequence in there could clear
the screen, rewrite a line into "on mains", set the window title or, on some terminals,
do worse; a megabyte of text buries the message that mattered.

:func:`clean` is the one sanitiser: each adapter applies it where outside text becomes
Hecate's (an error message, a snapshot, a step's detail), and the CLI applies it again
as a last line of defence before printing. Pure.
"""

from __future__ import annotations

import re
from typing import Final

MAX_CHARS: Final = 1000
"""Longest message or detail kept (an error from upsd, the API or SSH, a step's detail)."""
MAX_VALUE_CHARS: Final = 256
"""Longest single value kept (a UPS variable: NUT's own limit for a value is 256 bytes)."""
ELLIPSIS: Final = "…"
"""Marks a cut: the text went on."""

# A whole escape sequence goes, not just its ESC: "[2J" left behind reads as noise, not as text.
# CSI (ESC [ or the 8-bit CSI 0x9b): parameters, intermediates, one final byte.
# OSC, DCS, SOS, PM, APC (ESC ] P X ^ _ or 0x9d 0x90 0x98 0x9e 0x9f): up to BEL or ST (ESC \ or 0x9c),
# or to the end of the text when unterminated. Any other ESC with the character after it.
_ESCAPES: Final = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])(?:[^\x07\x1b\x9c]*)(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\s\S]?"
)


def clean(value: object, limit: int | None = MAX_CHARS, *, multiline: bool = False) -> str:
    """``value`` as printable text of at most ``limit`` characters (None: no limit).

    Escape sequences are removed whole; every other character that is not printable (C0 and
    C1 controls, DEL, bidirectional overrides and other format characters, lone surrogates)
    is removed, except that whitespace (tab, line breaks, non-breaking and other spaces)
    becomes one space each -- or, with ``multiline``, line breaks stay ``\\n``. Text longer
    than ``limit`` is cut and ends in :data:`ELLIPSIS`.

    >>> clean("OB\\x1b[2J LB\\x07")
    'OB LB'
    """
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = _ESCAPES.sub("", text)
        if multiline:
            text = text.replace("\r\n", "\n")
        text = "".join(_keep(ch, multiline) for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - len(ELLIPSIS))] + ELLIPSIS
    return text


def _keep(ch: str, multiline: bool) -> str:
    if ch.isprintable():
        return ch
    if multiline and ch in "\n\r\x0b\x0c\x85\u2028\u2029":
        return "\n"
    if ch.isspace():
        return " "
    return ""
