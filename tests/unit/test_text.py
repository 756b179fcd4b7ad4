"""Outside text made safe to print: the sanitiser, and each boundary that applies it."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from hecate.adapters.kube.errors import KubeError
from hecate.adapters.nut import NutError
from hecate.adapters.ssh import CommandResult, SshError
from hecate.cli import render
from hecate.cli.progress import RichProgress
from hecate.domain import kubeobjects, text
from hecate.domain.journal import StepStatus
from hecate.domain.plan import Action, Step
from hecate.domain.ups import Flag, failed, from_variables
from hecate.services.executor import StepOutcome

HOSTILE = "OB\x1b[2J\x1b[H\x1b]0;owned\x07 LB\x9b31m\u202e\x00"


def printable(value: str) -> bool:
    return value.isprintable() and "\x1b" not in value


@pytest.mark.parametrize(("raw", "clean"), [
    ("OB\x1b[2J LB", "OB LB"),  # CSI: the whole sequence goes, not only its ESC
    ("a\x1b[38;5;196mred\x1b[0m", "ared"),
    ("x\x1b]0;window title\x07y", "xy"),  # OSC ended by BEL
    ("x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\y", "xlinky"),  # OSC 8 hyperlink, ended by ST
    ("x\x1bPq#0;2;0;0;0\x1b\\y", "xy"),  # DCS (sixel)
    ("x\x9b2Jy\x9d0;t\x9cz", "xyz"),  # 8-bit CSI and OSC (C1 controls)
    ("bell\x07 del\x7f nul\x00 bs\x08", "bell del nul bs"),
    ("bidi\u202eevil\u2066", "bidievil"),  # format characters that reorder what one reads
    ("tab\there\r\nand\vhere\u00a0nbsp", "tab here  and here nbsp"),
    ("café — ok ✓", "café — ok ✓"),  # printable Unicode is kept
    ("unterminated \x1b]0;title", "unterminated "),
    ("trailing \x1b", "trailing "),
    ("", ""),
])
def test_control_characters_and_escape_sequences_are_stripped(raw: str, clean: str) -> None:
    assert text.clean(raw) == clean


def test_multiline_keeps_line_breaks_only() -> None:
    assert text.clean("one\r\ntwo\rthree\x1b[1A\x1b[2K\nfour\tfive", multiline=True) == "one\ntwo\nthree\nfour five"


def test_long_values_are_cut_at_the_limit_and_marked() -> None:
    assert text.clean("x" * 5000) == "x" * (text.MAX_CHARS - 1) + text.ELLIPSIS
    assert len(text.clean("y" * 300, text.MAX_VALUE_CHARS)) == text.MAX_VALUE_CHARS
    assert text.clean("z" * 5000, None) == "z" * 5000
    assert text.clean("short", 10) == "short"
    assert text.clean(12.5) == "12.5"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400) | st.binary(max_size=400).map(
    lambda b: b.decode("latin-1")), st.integers(min_value=1, max_value=300))
def test_property_whatever_comes_in_is_printable_and_bounded(raw: str, limit: int) -> None:
    out = text.clean(raw, limit)
    assert printable(out)
    assert len(out) <= limit
    assert text.clean(out, limit) == out  # idempotent: cleaning twice changes nothing
    multi = text.clean(raw, None, multiline=True)
    assert all(printable(line) for line in multi.split("\n"))


# -- the boundaries ------------------------------------------------------------------------------


def test_upsd_values_are_parsed_raw_and_kept_cleaned() -> None:
    snap = from_variables("pyr", {"ups.status": "OB LB \x1b[2JOL\x1b[0m", "ups.model": "M" * 900 + "\x1b[31m",
                                  "battery.runtime": "60"}, 0.0)
    assert snap.flags == {Flag.OB, Flag.LB}  # "\x1b[2JOL\x1b[0m" is not OL, as upsmon reads it
    assert snap.status == "OB LB OL"
    assert snap.unknown_tokens == ("OL",)
    assert len(snap.variables["ups.model"]) == text.MAX_VALUE_CHARS
    assert all(printable(v) for v in snap.variables.values())
    only_escapes = from_variables("pyr", {"ups.status": "OL \x1b[2J"}, 0.0)
    assert only_escapes.unknown_tokens == ("?",)  # still shown as not understood
    assert failed("pyr", 0.0, "ERR \x1b]0;x\x07stale", stale=True).error == "ERR stale"


def test_errors_quoting_upsd_the_api_or_a_node_are_clean() -> None:
    nut = NutError(f"data stale: {HOSTILE}", address="127.0.0.1:3493", ups="pyr", code="X\x1b[2J")
    assert printable(str(nut))
    assert str(nut) == "pyr@127.0.0.1:3493: data stale: OB LB (ERR X)"
    assert nut.code == "X\x1b[2J"  # kept as sent, for comparisons
    assert printable(str(KubeError(f"patch node/a: 422 Invalid: {HOSTILE}")))
    assert len(str(KubeError("m" * 100_000))) == text.MAX_CHARS
    assert printable(str(SshError(f"Indecipherable protocol version \"{HOSTILE}\"", node="a1")))


def test_flux_condition_messages_are_clean() -> None:
    obj: dict[str, Any] = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "X\x1b[2J",
                                                      "message": f"failed: {HOSTILE}"}]}}
    assert kubeobjects.flux_summary(obj)["message"] == "failed: OB LB"
    summary = kubeobjects.git_repository_summary(obj)
    assert (summary["reason"], summary["message"]) == ("X", "failed: OB LB")


def test_a_nodes_output_is_quoted_clean_and_step_details_too() -> None:
    result = CommandResult("a1", "systemctl stop k3s", 1, "", f"first\nJob failed {HOSTILE}\n\n", 0.1)
    assert result.last_line() == "Job failed OB LB"
    assert CommandResult("a1", "x", 1, "only stdout\x07\n", "  \n", 0.1).last_line() == "only stdout"
    outcome = StepOutcome("stop", Step(Action.stop_service, "a1", 5.0), StepStatus.failed, f"drain: pod {HOSTILE}")
    assert outcome.detail == "drain: pod OB LB"


def status_doc(**ups: Any) -> dict[str, Any]:
    row = {"name": "pyr", "reachable": True, "stale": False, "phase": "on_battery", "status": "OB",
           "runtime_s": 100.0, "charge_pct": 50.0, "load_pct": 10.0, "protects_cluster": True,
           "below_threshold_polls": 0, **ups}
    return {"host": "titan-db", "role": "coordinator", "source": "daemon", "ups": [row],
            "budget": {"samples": [], "seconds": 300.0, "source": "default", "safety_factor": 1.1,
                       "threshold_s": 330.0},
            "trigger": {"debounce_polls": 3, "deadtime_s": 15, "decision": None},
            "alerts": [{"ups": "pyr", "message": f"status not understood: {HOSTILE}"}],
            "warnings": [f"state: {HOSTILE}"], "runs": {"recent": [], "count": 0}, "policy": None}


def test_the_status_renderer_is_the_last_line_of_defence() -> None:
    # A document from whatever answered on the status endpoint, not only from our own adapters.
    out = render.status_text(status_doc(status=HOSTILE, name="pyr\x1b[8m"))
    assert all(printable(line) for line in out.splitlines())
    assert "OB LB" in out
    assert "Alert:     pyr: status not understood: OB LB" in out


def test_live_progress_prints_details_literally() -> None:
    buffer = io.StringIO()
    progress = RichProgress(Console(file=buffer, width=300, force_terminal=False, highlight=False))
    step = Step(Action.drain, "a1", 5.0)
    # "[/x]" is rich markup that closes nothing: printed raw it would raise and stop the run's progress.
    progress.step_finished(StepOutcome("drain", step, StepStatus.failed, "evict ns/[/x] [bold]p: 429 \x1b[2Jgone"))
    line = buffer.getvalue()
    assert "evict ns/[/x] [bold]p: 429 gone" in line
    assert printable(line.strip())
