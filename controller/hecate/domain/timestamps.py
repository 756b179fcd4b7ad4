"""Times as Hecate writes them: RFC 3339, in UTC, with a ``Z``.

One formatter for every time Hecate puts in front of people or other programs -- the
status document, a run's trigger, the PowerPolicy's status and cache, file headers -- and
one parser to read them back, so no two places disagree on the zone or the precision.
Pure: the instant comes in as an argument.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def rfc3339(when: datetime, *, fraction: bool = False) -> str: ...
@overload
def rfc3339(when: None, *, fraction: bool = False) -> None: ...
@overload
def rfc3339(when: datetime | None, *, fraction: bool = False) -> str | None: ...


def rfc3339(when: datetime | None, *, fraction: bool = False) -> str | None:
    """``2026-11-27T03:50:00Z``: whole seconds, as ``metav1.Time`` wants; ``fraction`` adds
    the microseconds (``2026-11-27T03:50:00.123456Z``). A time without a zone is UTC;
    ``None`` stays ``None`` (a time not known yet)."""
    if when is None:
        return None
    utc = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset; one without a zone is taken as UTC).

    Raises ``ValueError`` when ``text`` is not a time.
    """
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
