"""The verdict of ``hecate status`` for scripts and monitoring: one Nagios-like state from the status document.

This is a purely computational function with no side-effects: :func:`evaluate` reads the status
document (docs/metrics.md, "Status") and returns the state, its exit code and every reason for
it, so a Nagios/Icinga check, a cron script or a person at the terminal get the same answer:

* **critical** (2): a shutdown is decided (also a dry-run's), running, or being forwarded to the
  coordinator; a protecting UPS is at or below its threshold, its charge floor or past its time on
  battery (debouncing: the reason names the count that runs) or critical (LB, FSD, deadtime).
* **unknown** (3): neither the daemon nor any upsd answered, or the daemon answered with current data for
  no protecting UPS (all unreachable or stale, or none polled yet): the power state cannot be determined.
* **warning** (1): an alert, a failing state-dir write or a state-dir warning; a UPS on battery
  above its threshold; not armed (a decision would only be recorded); no daemon running.
* **ok** (0): none of these.

The worst state wins, in that order (critical before unknown: what is known to be critical is
not hidden by what is not known). The reasons list every finding, the worst first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class CheckState(StrEnum):
    ok = "ok"
    warning = "warning"
    critical = "critical"
    unknown = "unknown"

    @property
    def code(self) -> int:
        """The exit code, as Nagios plugins use them."""
        return EXIT_CODES[self]


EXIT_CODES = {CheckState.ok: 0, CheckState.warning: 1, CheckState.critical: 2, CheckState.unknown: 3}
SEVERITY = (CheckState.critical, CheckState.unknown, CheckState.warning, CheckState.ok)
"""Which state wins when there are several findings: the first present."""


@dataclass(frozen=True)
class Reason:
    state: CheckState
    message: str


@dataclass(frozen=True)
class Check:
    state: CheckState
    reasons: tuple[Reason, ...] = ()

    @property
    def code(self) -> int:
        return self.state.code

    def as_dict(self) -> dict[str, Any]:
        """``check`` in ``hecate status --json``: ``state``, ``code`` and ``reasons[]`` (``state``, ``message``)."""
        return {"state": self.state.value, "code": self.code,
                "reasons": [{"state": r.state.value, "message": r.message} for r in self.reasons]}


def _seconds(value: object) -> str:
    return f"{value:.0f} s" if isinstance(value, int | float) else "?"


def _critical(doc: Mapping[str, Any]) -> list[str]:
    found = []
    armed = doc.get("armed") is True
    trigger = doc.get("trigger") or {}
    decision = trigger.get("decision")
    if decision or trigger.get("shutdown_triggered"):
        what = (f"peer {decision['peer'].get('name')}" if decision and decision.get("peer")
                else f"UPS {decision.get('ups')}" if decision else "latched")
        why = f", {decision.get('reason')}" if decision else ""
        found.append(f"shutdown decided ({what}{why})" + ("" if armed else ": a dry-run, only recorded"))
    if (doc.get("shutdown_task") or {}).get("running"):
        found.append("a shutdown is running")
    if (doc.get("peer_forward") or {}).get("forwarding"):
        found.append("forwarding a shutdown trigger to the coordinator")
    threshold = _seconds((doc.get("budget") or {}).get("threshold_s"))
    for u in doc.get("ups", []):
        if not u.get("protects_cluster", True):
            continue
        if u.get("phase") == "below_threshold":
            found.append(f"UPS {u.get('name')}: on battery {_debouncing(u, threshold, trigger)}")
        elif u.get("phase") == "critical":
            found.append(f"UPS {u.get('name')}: critical ({u.get('status') or 'no status'})")
    return found


def _debouncing(u: Mapping[str, Any], threshold: str, trigger: Mapping[str, Any]) -> str:
    """What a debouncing UPS is below -- the runtime threshold, the charge floor, the time on battery -- and its
    count: every trigger whose count is running (the runtime's when none is)."""
    of = f"of {trigger.get('debounce_polls')} polls"
    found = []
    if u.get("charge_floor_polls"):
        found.append(f"at or below the charge floor (charge {_number(u.get('charge_pct'), ' %')} <= "
                     f"{_number(trigger.get('charge_floor_pct'), ' %')}, {u.get('charge_floor_polls')} {of})")
    if u.get("time_on_battery_polls"):
        found.append(f"past the time-on-battery limit ({_seconds(u.get('on_battery_for_s'))} >= "
                     f"{_seconds(trigger.get('max_on_battery_s'))}, {u.get('time_on_battery_polls')} {of})")
    if u.get("below_threshold_polls") or not found:
        found.insert(0, f"at or below the threshold (runtime {_seconds(u.get('runtime_s'))} <= {threshold}, "
                        f"{u.get('below_threshold_polls')} {of})")
    return " and ".join(found)


def _number(value: object, unit: str) -> str:
    return f"{value:g}{unit}" if isinstance(value, int | float) else "?"


def _unknown(doc: Mapping[str, Any]) -> list[str]:
    if doc.get("source") == "daemon":
        protecting = [u for u in doc.get("ups", []) if u.get("protects_cluster", True)]
        if any(u.get("reachable") and not u.get("stale") for u in protecting):
            return []
        errors = "; ".join(f"{u.get('name')}: {u.get('error') or ('stale' if u.get('stale') else 'not read')}"
                           for u in protecting)
        return ["the daemon has current data for no UPS that protects the cluster: the power state is unknown"
                + (f" ({errors})" if errors else " (no UPS has ups[].protects_cluster)")]
    if any(u.get("reachable") for u in doc.get("ups", [])):
        return []
    errors = "; ".join(f"{u.get('name')}: {u.get('error') or 'not read'}" for u in doc.get("ups", []))
    return ["neither the daemon nor upsd answered: the power state is unknown" + (f" ({errors})" if errors else "")]


def _warning(doc: Mapping[str, Any], daemon_down: bool) -> list[str]:
    found = []
    for u in doc.get("ups", []):
        below = u.get("protects_cluster", True) and u.get("phase") in ("below_threshold", "critical")
        if (u.get("on_battery") or u.get("phase") == "on_battery") and not below:
            found.append(f"UPS {u.get('name')}: on battery (runtime {_seconds(u.get('runtime_s'))}"
                         + (")" if u.get("protects_cluster", True) else ", does not protect the cluster)"))
    found += [f"alert: {a['ups'] + ': ' if a.get('ups') else ''}{a.get('message')}" for a in doc.get("alerts", [])]
    found += [f"alert: bookkeeping: {w.get('what')} writes fail ({w.get('error')})"
              for w in doc.get("state_writes", []) if w.get("active")]
    found += [f"warning: {w}" for w in doc.get("warnings", [])]
    peer = doc.get("peer_forward")
    # A peer's decisions are forwarded whatever shutdown.execute says; it arms only the local fallback.
    needs_arming = doc.get("role") != "peer" or bool(peer and peer.get("fallback_local_shutdown"))
    if doc.get("armed") is not True and needs_arming:
        found.append("not armed (shutdown.execute: false): a shutdown decision is only recorded as a dry-run"
                     + (" (the local fallback)" if doc.get("role") == "peer" else ""))
    if daemon_down:
        found.append("no daemon answered: the UPSes were polled once, nothing is watching them")
    return found


def evaluate(doc: Mapping[str, Any], *, daemon_down: bool = False) -> Check:
    """The check state of a status document.

    ``daemon_down``: no daemon listens on the status socket (``hecate status`` then polled the UPSes
    itself). Not set when the socket is only not ours to use (root's), so an unprivileged check
    does not warn about a daemon it cannot ask.
    """
    findings = {CheckState.critical: _critical(doc), CheckState.unknown: _unknown(doc),
                CheckState.warning: _warning(doc, daemon_down)}
    reasons = tuple(Reason(state, message) for state in SEVERITY if state in findings for message in findings[state])
    return Check(reasons[0].state if reasons else CheckState.ok, reasons)
