"""RFC 3339 times: one format for everything Hecate writes, read back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hecate.domain import timestamps


def test_whole_seconds_in_utc_with_a_z() -> None:
    paris = timezone(timedelta(hours=1))
    assert timestamps.rfc3339(datetime(2026, 11, 27, 4, 50, 0, 123456, tzinfo=paris)) == "2026-11-27T03:50:00Z"


def test_fraction_keeps_the_microseconds() -> None:
    when = datetime(2026, 11, 27, 3, 50, 0, 123456, tzinfo=UTC)
    assert timestamps.rfc3339(when, fraction=True) == "2026-11-27T03:50:00.123456Z"
    assert timestamps.rfc3339(when.replace(microsecond=0), fraction=True) == "2026-11-27T03:50:00.000000Z"


def test_a_time_without_a_zone_is_utc_and_none_stays_none() -> None:
    assert timestamps.rfc3339(datetime(2026, 11, 27, 3, 50)) == "2026-11-27T03:50:00Z"
    assert timestamps.rfc3339(None) is None


@pytest.mark.parametrize("text", ["2026-11-27T03:50:00Z", "2026-11-27T03:50:00+00:00", "2026-11-27T04:50:00+01:00",
                                  "2026-11-27T03:50:00"])
def test_parse_reads_z_offsets_and_zoneless_times(text: str) -> None:
    assert timestamps.parse(text) == datetime(2026, 11, 27, 3, 50, tzinfo=UTC)


def test_what_is_written_reads_back() -> None:
    when = datetime(2026, 11, 27, 3, 50, 0, 123456, tzinfo=UTC)
    assert timestamps.parse(timestamps.rfc3339(when, fraction=True)) == when


def test_parse_refuses_what_is_not_a_time() -> None:
    with pytest.raises(ValueError, match="Invalid isoformat"):
        timestamps.parse("yesterday")
