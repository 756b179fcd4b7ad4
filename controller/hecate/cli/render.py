"""Plain-text rendering of the status document for people and scripts (``hecate status``).

The document quotes upsd (status, errors), the API and the state dir; every line is cleaned
(``hecate.domain.text``) before it reaches the terminal -- whatever the adapters already did,
and whatever a daemon answering on the status endpoint sent.
"""

from __future__ import annotations

from typing import Any

from hecate.cli.runtime_lines import runtime_lines
from hecate.domain import text

LINE_CHARS = 2 * text.MAX_CHARS
"""Longest line printed (a line holds one message and its labels)."""


def _num(value: float | None, unit: str = "", fmt: str = "{:g}") -> str:
    return "-" if value is None else fmt.format(value) + unit


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def policy_line(policy: dict[str, Any] | None) -> str:
    """Which policy is in force: ``Policy:    cache — PowerPolicy titan generation 3, cached 2 h ago (...)``."""
    if not policy:
        return "Policy:    hecate.yaml"
    if policy["source"] == "host":
        return f"Policy:    hecate.yaml ({policy['detail']})"
    what = f"PowerPolicy {policy['name']} generation {policy['generation']}, cached {_age(policy['age_s'])} ago"
    if policy["source"] == "cluster":
        return f"Policy:    cluster — {what}"
    return f"Policy:    {policy['source']} — {what} ({policy['detail']})"


FALLBACK_TEXT = {"ran": "the local shutdown ran", "dry_run": "the local shutdown was recorded as a dry-run",
                 "disabled": "no local shutdown (peer.fallback_local_shutdown: false)",
                 "power_back": "no local shutdown (mains was back)"}


def peer_lines(peer: dict[str, Any] | None) -> list[str]:
    """A peer's forwarding: ``Peer:`` where to; ``Forward:`` the last trigger sent and what came of it."""
    if peer is None:
        return []
    fallback = "local fallback on" if peer["fallback_local_shutdown"] else "local fallback OFF"
    lines = [f"Peer:      forwards to {peer['coordinator_url']} (key {peer['key_id']}, for at most "
             f"{peer['forward_for_s']:g} s, {fallback})"]
    last = peer["last"]
    if last is None:
        return [*lines, "Forward:   no trigger sent yet"]
    answer = f"HTTP {last['status']}" + (f" {last['answer']}" if last["answer"] else "") if last["status"] else ""
    why = "; ".join(filter(None, [answer, last["error"]]))
    state = "forwarding" if last["result"] == "forwarding" else last["result"].upper()
    lines.append(f"Forward:   {last['started_at'][:19]} {state} after {last['attempts']} attempt(s)"
                 + (f" ({why})" if why else "") + f" — {last['reason']}: {last['detail']}")
    if last["fallback"]:
        lines.append(f"Fallback:  {FALLBACK_TEXT.get(last['fallback'], last['fallback'])}"
                     + (f" (run {last['fallback_run']})" if last["fallback_run"] else ""))
    return lines


def _fsd_lines(ups: list[dict[str, Any]]) -> list[str]:
    """One line per UPS whose upsd has FSD set, or on which Hecate sets it (``ups[].set_fsd``)."""
    lines = []
    for u in ups:
        by = u.get("fsd_set_by_hecate")
        by_hecate = f"set by Hecate (shutdown {by['run']})" if by else ""
        if u.get("fsd"):
            lines.append(f"FSD:       {u['name']}: set in upsd, {by_hecate or 'not by Hecate'}")
        elif by:
            lines.append(f"FSD:       {u['name']}: not set in upsd now; last {by_hecate}")
        elif u.get("set_fsd"):
            lines.append(f"FSD:       {u['name']}: Hecate sets it when it shuts down (set_fsd)")
    return lines


UPS_COLUMNS = (("UPS", "<", 12), ("state", "<", 16), ("status", "<", 14), ("runtime", ">", 8),
               ("threshold", ">", 9), ("charge", ">", 7), ("load", ">", 6))
"""The UPS table's columns: name, alignment and width of the plain text (stable: scripts read it)."""
NOT_PROTECTING = "does not protect the cluster"


def ups_rows(doc: dict[str, Any]) -> list[tuple[list[str], bool]]:
    """Each UPS's cells (as :data:`UPS_COLUMNS`) and whether it protects the cluster."""
    budget, trig = doc["budget"], doc["trigger"]
    rows = []
    for u in doc["ups"]:
        state = u["phase"] if u["reachable"] and not u["stale"] else ("stale" if u["stale"] else "unreachable")
        if u["phase"] == "below_threshold":
            polls = max(u["below_threshold_polls"], u.get("charge_floor_polls", 0), u.get("time_on_battery_polls", 0))
            state = f"below ({polls}/{trig['debounce_polls']})"
        rows.append(([u["name"], state, u["status"] or "-", _num(u["runtime_s"], " s"),
                      _num(budget["threshold_s"], " s", "{:.0f}"), _num(u["charge_pct"], " %"),
                      _num(u["load_pct"], " %")], u["protects_cluster"]))
    return rows


def head_lines(doc: dict[str, Any]) -> list[str]:
    """The check's verdict when the document has one (first: the line a Nagios-style monitor shows); whose
    status this is, and where it comes from."""
    lines = []
    check = doc.get("check")
    if check:  # the worst findings; the others are the Alert/Warning lines below (all: --json's check.reasons)
        worst = [r["message"] for r in check["reasons"] if r["state"] == check["state"]]
        others = len(check["reasons"]) - len(worst)
        lines.append(f"Check:     {check['state'].upper()} (exit {check['code']})" + "".join(
            [": " + "; ".join(worst) if worst else "", f" (and {others} more findings)" if others else ""]))
    source = "daemon" if doc["source"] == "daemon" else "polled directly (no daemon answered)"
    return [*lines, f"Hecate on {doc['host'] or '?'} ({doc['role']}) — {source}", ""]


def status_text(doc: dict[str, Any]) -> str:
    lines = head_lines(doc)
    header = " ".join(f"{name:{align}{width}}" for name, align, width in UPS_COLUMNS)
    lines += [header, "-" * len(header)]
    for cells, protects in ups_rows(doc):
        lines.append(" ".join(f"{cell:{align}{width}}" for cell, (_, align, width) in zip(cells, UPS_COLUMNS,
                                                                                           strict=True))
                     + ("" if protects else f"  ({NOT_PROTECTING})"))
    lines += detail_lines(doc)
    return "\n".join(text.clean(line, LINE_CHARS) for line in lines)


def detail_lines(doc: dict[str, Any]) -> list[str]:
    """Everything under the UPS table: FSD, budget, policy, trigger, peers, alerts, warnings, last runs."""
    budget, trig = doc["budget"], doc["trigger"]
    lines = _fsd_lines(doc["ups"]) + runtime_lines(doc["ups"], trig)
    samples = ", ".join(f"{s:.4g}" for s in budget["samples"])
    measured = f" from {len(budget['samples'])} shutdowns: {samples} s" if samples else ", no measured shutdown yet"
    scaled = f"{budget['safety_factor']:g} x budget = {budget['safety_factor'] * budget['seconds']:.0f} s"
    if budget.get("threshold_basis") == "floor":
        threshold = (f"the floor {budget['threshold_s']:.0f} s (min_budget_s {budget['min_budget_s']:g} s + margin "
                     f"{budget['floor_s'] - budget['min_budget_s']:g} s), above {scaled}")
    else:
        threshold = scaled
        target = budget.get("target_s")
        if target is not None and target < budget["seconds"]:
            threshold += f"; the budget falls towards {target:.4g} s, at most halfway per run"
    lines += ["", f"Budget:    {budget['seconds']:.4g} s ({budget['source']}{measured}); threshold = {threshold}"]
    lines.append(policy_line(doc.get("policy")))
    decision, armed = trig["decision"], doc.get("armed") is True
    # A peer forwards its decisions whatever shutdown.execute says: that arms only its local fallback.
    recorded = "the local fallback is only recorded" if doc["role"] == "peer" else "decisions are only recorded"
    dry_run = "" if armed else f" (dry-run: {recorded})"
    if decision:
        if decision.get("peer"):
            lines.append(f"Trigger:   SHUTDOWN decided — peer {decision['peer']['name']} (UPS {decision['ups']}), "
                         f"{decision['peer']['reason']}: {decision['peer']['detail'] or '-'}{dry_run}")
        else:
            lines.append(f"Trigger:   SHUTDOWN decided — UPS {decision['ups']}, {decision['reason']}: "
                         f"{decision['detail']}{dry_run}")
    else:
        watch = f"debounce {trig['debounce_polls']} polls, deadtime {trig['deadtime_s']:g} s"
        lines.append(f"Trigger:   armed ({watch})" if armed else
                     f"Trigger:   dry-run: {recorded}, nothing is shut down (shutdown.execute: false; {watch})")
    lines += peer_lines(doc.get("peer_forward"))
    listening = [f"{lst['address']} ({lst['kind']})" for lst in doc.get("listeners", []) if lst["listening"]]
    if listening:
        lines.append(f"Serving:   {', '.join(listening)}")
    hosts = sorted(doc.get("hosts", []), key=lambda h: (h["poweroff_order"], h["name"]))
    if hosts:
        lines.append("Hosts:     " + ", ".join(
            f"{h['name']} (order {h['poweroff_order']}, {h['stop_commands']} stop commands"
            + ("" if h["poweroff"] else ", no power-off") + ")" for h in hosts) + ": after the nodes")
    lines += _peer_lines(doc.get("peer_listener"))
    for alert in doc["alerts"]:
        lines.append(f"Alert:     {alert['ups'] + ': ' if alert['ups'] else ''}{alert['message']}")
    for failure in doc.get("state_writes", []):
        if failure["active"]:
            lines.append(f"Alert:     bookkeeping: {failure['what']} writes fail since {failure['since'][:19]} "
                         f"({failure['errors']} failed; {failure['error']}): {failure['consequence']}")
    for warning in doc["warnings"]:
        lines.append(f"Warning:   {warning}")
    runs = doc["runs"]["recent"]
    lines += ["", f"Last runs ({doc['runs']['count']} recorded):" if runs else "Last runs: none recorded"]
    for r in runs:
        what = "dry-run " if r["dry_run"] else ""
        if r["trigger"].get("source") == "peer":
            trigger = f" (peer {r['trigger'].get('peer')}: {r['trigger'].get('reason')})"
        else:
            trigger = (r["trigger"].get("ups") and f" ({r['trigger'].get('ups')}: {r['trigger'].get('reason')})") or ""
        lines.append(f"  {r['started_at'][:19]}  {what}{r['kind']:<9} {r['result'] or 'in flight':<9} "
                     f"{_num(r['duration_s'], ' s', '{:.1f}')}{trigger}")
    return lines


def _peer_lines(listener: dict[str, Any] | None) -> list[str]:
    """The trigger listener for peer hosts and, per trusted key, the last trigger its peer sent."""
    if not listener:
        return []
    state = "listening" if listener["listening"] else f"NOT listening ({listener['error'] or 'not bound yet'})"
    refused = sum(n for r, n in listener["requests"].items() if r != "accepted")
    lines = [f"Peers:     trigger listener {listener['listen']} {state}; {listener['requests'].get('accepted', 0)} "
             f"accepted, {refused} refused"]
    for key in listener["keys"]:
        last = listener["last_trigger"].get(key["name"])
        seen = f"last trigger {last['at'][:19]} {last['result']} (key {last['key_id']})" if last else "no trigger yet"
        usable = "" if key["key_ok"] else " KEY REFUSED"
        lines.append(f"  {key['name']:<14} key {key['key_id']}{usable}: {seen}")
    return lines
