"""`hecate status` for scripts and monitoring: the Nagios-like check state of every case, its exit code
(with and without --json), "armed" only when armed, and the rich table on a TTY beside the plain text."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from hecate.adapters.store import StateStore
from hecate.cli import cli, render, status_table
from hecate.domain import check
from hecate.domain.check import CheckState
from hecate.domain.config import HecateConfig, Ups
from hecate.domain.ups import Snapshot, from_variables
from hecate.services import status
from hecate.services.monitor import Monitor

pytestmark = pytest.mark.timeout(30)

ANSI = re.compile(r"\x1b\[")
BOX = re.compile("[┏┃━│─└┘╇┡]")


def ups_row(**fields: Any) -> dict[str, Any]:
    return {"name": "pyr", "reachable": True, "stale": False, "phase": "on_mains", "status": "OL", "on_battery": False,
            "runtime_s": 900.0, "charge_pct": 100.0, "load_pct": 10.0, "protects_cluster": True,
            "below_threshold_polls": 0, "error": None, **fields}


def doc(*rows: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A healthy, armed coordinator's status document (the daemon's), with ``fields`` laid over it."""
    base: dict[str, Any] = {
        "host": "titan-db", "role": "coordinator", "source": "daemon", "armed": True,
        "ups": list(rows) or [ups_row()],
        "budget": {"samples": [], "seconds": 300.0, "source": "default", "safety_factor": 1.1, "threshold_s": 330.0},
        "trigger": {"debounce_polls": 3, "deadtime_s": 15, "shutdown_triggered": False, "decision": None},
        "alerts": [], "warnings": [], "state_writes": [], "runs": {"recent": [], "count": 0}, "policy": None,
        "shutdown_task": {"running": False, "restarts": 0},
    }
    return {**base, **fields}


DECISION = {"ups": "pyr", "reason": "low_battery", "detail": "OB LB", "at": None, "runtime_s": 42.0,
            "threshold_s": 330.0}
PEER = {"coordinator_url": "http://titan-db:9561", "key_id": "tethys-1", "forward_for_s": 60,
        "fallback_local_shutdown": True, "forwarding": False, "forwards": {}, "last": None}

CASES: list[tuple[str, dict[str, Any], bool, CheckState, list[str]]] = [
    # (case, document, daemon_down, state, a fragment of each reason, in order)
    ("on mains, armed, daemon", doc(), False, CheckState.ok, []),
    ("on battery above the threshold", doc(ups_row(phase="on_battery", status="OB", on_battery=True, runtime_s=900)),
     False, CheckState.warning, ["UPS pyr: on battery (runtime 900 s)"]),
    ("a UPS that protects nothing, on battery",
     doc(ups_row(), ups_row(name="lab", protects_cluster=False, phase="on_battery", on_battery=True, runtime_s=60)),
     False, CheckState.warning, ["UPS lab: on battery (runtime 60 s, does not protect the cluster)"]),
    ("an alert", doc(alerts=[{"ups": "pyr", "kind": "replace_battery", "message": "replace the battery"}]), False,
     CheckState.warning, ["alert: pyr: replace the battery"]),
    ("the daemon's own alert", doc(alerts=[{"ups": None, "kind": "not_listening", "message": "not listening"}]),
     False, CheckState.warning, ["alert: not listening"]),
    ("a failing state write", doc(state_writes=[{"what": "runs", "error": "ENOSPC", "active": True}]), False,
     CheckState.warning, ["alert: bookkeeping: runs writes fail (ENOSPC)"]),
    ("a state write that failed once, not now", doc(state_writes=[{"what": "runs", "error": "x", "active": False}]),
     False, CheckState.ok, []),
    ("a state-dir warning", doc(warnings=["runs.json was corrupt: moved aside"]), False, CheckState.warning,
     ["warning: runs.json was corrupt"]),
    ("not armed", doc(armed=False), False, CheckState.warning, ["not armed (shutdown.execute: false)"]),
    ("a peer not armed, its fallback on", doc(armed=False, role="peer", peer_forward=PEER), False,
     CheckState.warning, ["only recorded as a dry-run (the local fallback)"]),
    ("a peer not armed, no fallback: nothing to arm",
     doc(armed=False, role="peer", peer_forward={**PEER, "fallback_local_shutdown": False}), False, CheckState.ok, []),
    ("no daemon running, polled directly", doc(source="direct"), True, CheckState.warning,
     ["no daemon answered"]),
    ("the daemon's socket is root's: polled directly, no verdict on the daemon", doc(source="direct"), False,
     CheckState.ok, []),
    ("below the threshold, debouncing",
     doc(ups_row(phase="below_threshold", status="OB DISCHRG", on_battery=True, runtime_s=250,
                 below_threshold_polls=1)), False, CheckState.critical,
     ["UPS pyr: on battery at or below the threshold (runtime 250 s <= 330 s, 1 of 3 polls)"]),
    ("below the charge floor, debouncing",
     doc(ups_row(phase="below_threshold", status="OB DISCHRG", on_battery=True, runtime_s=900, charge_pct=28,
                 charge_floor_polls=2, time_on_battery_polls=0),
         trigger={"debounce_polls": 3, "deadtime_s": 15, "charge_floor_pct": 30, "max_on_battery_s": None,
                  "shutdown_triggered": False, "decision": None}), False, CheckState.critical,
     ["UPS pyr: on battery at or below the charge floor (charge 28 % <= 30 %, 2 of 3 polls)"]),
    ("past the time-on-battery limit, debouncing",
     doc(ups_row(phase="below_threshold", status="OB DISCHRG", on_battery=True, runtime_s=900, on_battery_for_s=601,
                 charge_floor_polls=0, time_on_battery_polls=1),
         trigger={"debounce_polls": 3, "deadtime_s": 15, "charge_floor_pct": None, "max_on_battery_s": 600,
                  "shutdown_triggered": False, "decision": None}), False, CheckState.critical,
     ["UPS pyr: on battery past the time-on-battery limit (601 s >= 600 s, 1 of 3 polls)"]),
    ("critical (LB)", doc(ups_row(phase="critical", status="OB LB", on_battery=True)), False, CheckState.critical,
     ["UPS pyr: critical (OB LB)"]),
    ("below the threshold on a UPS that protects nothing",
     doc(ups_row(name="statera"), ups_row(protects_cluster=False, phase="below_threshold", on_battery=True,
                                          runtime_s=20)), False,
     CheckState.warning, ["UPS pyr: on battery (runtime 20 s, does not protect the cluster)"]),
    ("a shutdown decided",
     doc(ups_row(phase="critical", status="OB LB", on_battery=True),
         trigger={"debounce_polls": 3, "deadtime_s": 15, "shutdown_triggered": True, "decision": DECISION}),
     False, CheckState.critical, ["shutdown decided (UPS pyr, low_battery)", "UPS pyr: critical"]),
    ("a dry-run decided", doc(armed=False, trigger={"debounce_polls": 3, "deadtime_s": 15, "shutdown_triggered": True,
                                                    "decision": DECISION}),
     False, CheckState.critical, ["shutdown decided (UPS pyr, low_battery): a dry-run, only recorded", "not armed"]),
    ("a peer's trigger decided",
     doc(trigger={"debounce_polls": 3, "deadtime_s": 15, "shutdown_triggered": True,
                  "decision": {**DECISION, "ups": "statera", "reason": "peer", "peer": {"name": "tethys"}}}),
     False, CheckState.critical, ["shutdown decided (peer tethys, peer)"]),
    ("a shutdown running", doc(shutdown_task={"running": True, "restarts": 0}), False, CheckState.critical,
     ["a shutdown is running"]),
    ("a peer forwarding its trigger", doc(role="peer", peer_forward={**PEER, "forwarding": True}), False,
     CheckState.critical, ["forwarding a shutdown trigger to the coordinator"]),
    ("neither daemon nor upsd", doc(ups_row(reachable=False, phase="unknown", status=None, error="connection refused"),
                                    source="direct", alerts=[{"ups": "pyr", "message": "upsd unreachable"}]),
     True, CheckState.unknown, ["neither the daemon nor upsd answered", "alert: pyr: upsd unreachable",
                                "no daemon answered"]),
    ("no daemon, no UPS configured", doc(source="direct", ups=[]), True, CheckState.unknown,
     ["neither the daemon nor upsd answered", "no daemon answered"]),
    ("the daemon answers, upsd does not: unknown", doc(
        ups_row(reachable=False, phase="lost", status=None, error="connection refused"),
        alerts=[{"ups": "pyr", "message": "upsd unreachable"}]),
     False, CheckState.unknown, ["the daemon has current data for no UPS that protects the cluster: the power state "
                                 "is unknown (pyr: connection refused)", "alert: pyr: upsd unreachable"]),
    ("the daemon answers, its data is stale: unknown", doc(ups_row(stale=True, phase="lost"),
                                                           alerts=[{"ups": "pyr", "message": "no current data"}]),
     False, CheckState.unknown, ["current data for no UPS that protects the cluster: the power state is unknown "
                                 "(pyr: stale)", "alert: pyr: no current data"]),
    ("the daemon answers, only a UPS that protects nothing is read: unknown", doc(
        ups_row(reachable=False, phase="lost", status=None), ups_row(name="lab", protects_cluster=False)),
     False, CheckState.unknown, ["current data for no UPS that protects the cluster: the power state is unknown "
                                 "(pyr: not read)"]),
    ("the daemon answers, no UPS protects the cluster: unknown", doc(ups_row(protects_cluster=False)),
     False, CheckState.unknown, ["the power state is unknown (no UPS has ups[].protects_cluster)"]),
    ("the daemon answers, one protecting UPS of two is read", doc(
        ups_row(reachable=False, phase="lost", status=None), ups_row(name="statera")),
     False, CheckState.ok, []),
    ("a stale UPS is upsd answering", doc(ups_row(stale=True, phase="lost"), source="direct"), False, CheckState.ok,
     []),
    ("critical outranks unknown", doc(ups_row(reachable=False), source="direct", shutdown_task={"running": True}),
     False, CheckState.critical, ["a shutdown is running", "neither the daemon nor upsd answered"]),
]


@pytest.mark.parametrize(("document", "daemon_down", "state", "fragments"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_every_case_has_its_state_and_reasons(document: dict[str, Any], daemon_down: bool, state: CheckState,
                                              fragments: list[str]) -> None:
    verdict = check.evaluate(document, daemon_down=daemon_down)
    assert verdict.state is state
    assert len(verdict.reasons) == len(fragments), verdict.reasons
    for reason, fragment in zip(verdict.reasons, fragments, strict=True):
        assert fragment in reason.message
        assert "runtime 900 s <= 330 s" not in reason.message  # the runtime is above: not what is debouncing
    assert [r.state for r in verdict.reasons] == sorted((r.state for r in verdict.reasons),
                                                         key=check.SEVERITY.index)  # the worst first
    if fragments:
        assert verdict.reasons[0].state is state


def test_exit_codes_are_nagios_states() -> None:
    assert {s.value: s.code for s in CheckState} == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
    verdict = check.evaluate(doc(armed=False))
    assert verdict.as_dict() == {"state": "warning", "code": 1, "reasons": [
        {"state": "warning", "message": "not armed (shutdown.execute: false): a shutdown decision is only recorded "
                                        "as a dry-run"}]}
    json.dumps(verdict.as_dict())  # --json carries it as it is


class Reader:
    """upsd's answers for a real monitor: one reading per UPS name."""

    def __init__(self, readings: dict[str, dict[str, str]]) -> None:
        self.readings = readings

    async def read(self, ups: Ups, timeout: float) -> Snapshot:
        return from_variables(ups.name, self.readings[ups.name], time.monotonic())


def real_document(tmp_path: Path, execute: bool, **readings: dict[str, str]) -> dict[str, Any]:
    config = HecateConfig.model_validate({"state_dir": str(tmp_path), "ups": [{"name": n} for n in readings],
                                         "shutdown": {"execute": execute}, "trigger": {"debounce_polls": 2}})

    async def nothing(*_: object) -> None: ...

    monitor = Monitor(config, Reader(readings), StateStore(tmp_path), nothing)
    asyncio.run(monitor.poll_once())
    return status.document(monitor, "direct")


MAINS = {"ups.status": "OL", "battery.runtime": "900", "battery.charge": "100", "ups.load": "7"}


@pytest.mark.parametrize(("execute", "reading", "state"), [
    (True, MAINS, CheckState.ok),
    (False, MAINS, CheckState.warning),
    (True, {**MAINS, "ups.status": "OB DISCHRG"}, CheckState.warning),
    (True, {**MAINS, "ups.status": "OB DISCHRG", "battery.runtime": "200"}, CheckState.critical),
    (True, {**MAINS, "ups.status": "OB LB", "battery.runtime": "200"}, CheckState.critical),
])
def test_the_real_document_reads_as_documented(tmp_path: Path, execute: bool, reading: dict[str, str],
                                               state: CheckState) -> None:
    assert check.evaluate(real_document(tmp_path, execute, pyr=reading)).state is state


def test_the_text_says_armed_only_when_armed() -> None:
    assert "Trigger:   armed (debounce 3 polls, deadtime 15 s)" in render.status_text(doc())
    dry = render.status_text(doc(armed=False))
    assert "armed" not in dry
    assert ("Trigger:   dry-run: decisions are only recorded, nothing is shut down (shutdown.execute: false; "
            "debounce 3 polls, deadtime 15 s)") in dry
    decided = doc(armed=False, trigger={"debounce_polls": 3, "deadtime_s": 15, "shutdown_triggered": True,
                                        "decision": DECISION})
    assert ("Trigger:   SHUTDOWN decided — UPS pyr, low_battery: OB LB (dry-run: decisions are only recorded)"
            in render.status_text(decided))
    peer = render.status_text(doc(armed=False, role="peer", peer_forward=PEER))
    assert "Trigger:   dry-run: the local fallback is only recorded, nothing is shut down" in peer


def test_the_check_line_names_the_worst_findings() -> None:
    document = doc(ups_row(phase="critical", status="OB LB", on_battery=True), armed=False,
                   alerts=[{"ups": "pyr", "message": "replace the battery"}])
    document["check"] = check.evaluate(document).as_dict()
    lines = render.status_text(document).splitlines()
    assert lines[:3] == ["Check:     CRITICAL (exit 2): UPS pyr: critical (OB LB) (and 2 more findings)",
                         "Hecate on titan-db (coordinator) — daemon", ""]  # the verdict first, as monitors show it
    healthy = doc()
    healthy["check"] = check.evaluate(healthy).as_dict()
    assert render.status_text(healthy).splitlines()[0] == "Check:     OK (exit 0)"


HOSTILE = "OB [bold]LB[/x] \x1b[2J"


def shown(document: dict[str, Any], *, terminal: bool) -> str:
    console = Console(file=io.StringIO(), force_terminal=terminal, width=120, color_system="standard",
                      highlight=False)
    status_table.show(document, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_a_terminal_gets_a_rich_table_and_a_pipe_the_plain_text() -> None:
    document = doc(ups_row(phase="below_threshold", status=HOSTILE, on_battery=True, runtime_s=250,
                           below_threshold_polls=1),
                   ups_row(name="lab", protects_cluster=False), armed=False)
    document["check"] = check.evaluate(document).as_dict()
    plain = shown(document, terminal=False)
    assert plain == render.status_text(document) + "\n"  # byte for byte what scripts always read
    assert not ANSI.search(plain)
    assert not BOX.search(plain)
    header = "UPS          state            status          runtime threshold  charge   load"
    assert header in plain.splitlines()
    assert "lab          on_mains         OL                900 s     330 s   100 %   10 %  (does not protect the " \
           "cluster)" in plain

    tty = shown(document, terminal=True)
    assert ANSI.search(tty)  # colours
    assert BOX.search(tty)  # a drawn table
    bare = ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", tty))
    assert re.search(r"│ pyr\s+│ below \(1/3\)\s+│ OB \[bold\]LB\[/x\]\s+│\s+250 s │", bare), bare  # markup literal
    assert re.search(r"│ lab \*\s+│", bare)
    assert "* does not protect the cluster" in bare
    assert "Check:     CRITICAL (exit 2)" in bare
    assert "Trigger:   dry-run: decisions are only recorded" in bare
    assert "\x1b[2J" not in tty  # upsd's escape never reaches the terminal
    for line in render.detail_lines(document):  # everything under the table is there too
        assert line.split(" (")[0] in bare


def write_config(tmp_path: Path, **extra: Any) -> Path:
    """A UPS where nothing listens and no daemon socket: `hecate status` can reach neither."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({"host_name": "titan-db", "state_dir": str(tmp_path / "state"),
                                    "ups": [{"name": "pyr", "host": "127.0.0.1", "port": port}],
                                    "metrics": {"socket": str(tmp_path / "run" / "hecate.sock")}, **extra}))
    return path


def test_neither_daemon_nor_upsd_is_unknown_with_and_without_json(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert text.exit_code == 3, text.output
    assert "Check:     UNKNOWN (exit 3): neither the daemon nor upsd answered" in text.output
    assert not BOX.search(text.output)  # not a terminal: plain
    ran = CliRunner().invoke(cli, ["status", "--config", str(config), "--json"])
    assert ran.exit_code == 3, ran.output
    out = json.loads(ran.output)
    assert out["armed"] is False
    assert (out["check"]["state"], out["check"]["code"]) == ("unknown", 3)
    assert [r["state"] for r in out["check"]["reasons"]] == ["unknown", "warning", "warning", "warning"]
    assert out["check"]["reasons"][-1]["message"].startswith("no daemon answered")


@pytest.mark.parametrize("args", [["--config", "{missing}"], ["--config", "{bad}"], ["--no-such-flag"]])
def test_bad_usage_or_configuration_is_unknown_not_critical(tmp_path: Path, args: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ups: 12\n")
    argv = [a.format(missing=tmp_path / "missing.yaml", bad=bad) for a in args]
    ran = CliRunner().invoke(cli, ["status", *argv])
    assert ran.exit_code == 3, ran.output
    assert CliRunner().invoke(cli, ["config", "validate", "--config", str(bad)]).exit_code == 2  # others keep 2


def test_a_document_without_optional_parts_still_has_a_state() -> None:
    minimal = copy.deepcopy(doc())
    for key in ("shutdown_task", "state_writes", "armed"):
        del minimal[key]
    assert check.evaluate(minimal).state is CheckState.warning  # "armed" absent: not known to be armed
