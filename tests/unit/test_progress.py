"""A run's end as people and the daemon's log see it: the summary of what was not done."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest
from rich.console import Console

from hecate.cli.progress import RichProgress
from hecate.domain.runs import NotDone, RunKind, RunRecord, RunResult, StepNotDone
from hecate.services.progress import JsonLines


def record(*rows: StepNotDone) -> RunRecord:
    start = datetime(2026, 11, 27, tzinfo=UTC)
    return RunRecord(id="20261127T000000Z-abcd", kind=RunKind.shutdown, dry_run=False, started_at=start,
                     finished_at=start, duration_s=31.2, result=RunResult.degraded if rows else RunResult.success,
                     not_done=list(rows))


ROWS = (StepNotDone(stage="flux-suspend", action="flux-suspend", target="flux", status=NotDone.skipped,
                    detail="Kubernetes API unreachable, flux-suspend skipped"),
        StepNotDone(stage="killall", action="killall", target="titan-a1", status=NotDone.failed,
                    detail="titan-a1 is down: not tried again"))


def test_the_cli_ends_a_degraded_run_with_a_table_of_what_was_not_done() -> None:
    out = io.StringIO()
    RichProgress(Console(file=out, width=200, highlight=False)).run_finished(record(*ROWS))
    text = out.getvalue()
    assert "Not done in shutdown run 20261127T000000Z-abcd" in text
    lines = text.splitlines()
    flux = next(line for line in lines if "flux-suspend" in line)
    for word in ("flux", "skipped", "Kubernetes API unreachable"):
        assert word in flux
    killall = next(line for line in lines if "titan-a1" in line)
    for word in ("killall", "failed", "is down"):
        assert word in killall
    assert lines[-1].endswith("shutdown run 20261127T000000Z-abcd: degraded in 31.2s: 2 steps not done (above)")


def test_a_why_with_brackets_prints_literally_in_the_summary() -> None:
    # e.g. an API message quoting a field, or anything a node printed: never rich markup, never a crash
    row = StepNotDone(stage="scale-down", action="scale-down", target="apps", status=NotDone.failed,
                      detail="refused [field spec.replicas] [/x]")
    out = io.StringIO()
    RichProgress(Console(file=out, width=200, highlight=False)).run_finished(record(row))
    assert "refused [field spec.replicas] [/x]" in out.getvalue()


def test_a_successful_run_ends_on_one_line() -> None:
    out = io.StringIO()
    RichProgress(Console(file=out, width=200, highlight=False)).run_finished(record())
    assert "Not done" not in out.getvalue()
    assert out.getvalue().rstrip().endswith("shutdown run 20261127T000000Z-abcd: success in 31.2s")


def test_the_daemon_logs_one_line_per_step_not_done_then_the_end(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hecate.run"):
        JsonLines().run_finished(record(*ROWS))
    events = [json.loads(r.getMessage()) for r in caplog.records]
    assert [(e["event"], e.get("target")) for e in events] == [("not-done", "flux"), ("not-done", "titan-a1"),
                                                                ("run-end", None)]
    assert events[0]["status"] == "skipped"
    assert events[1]["stage"] == "killall"
    assert (events[2]["result"], events[2]["not_done"]) == ("degraded", 2)
