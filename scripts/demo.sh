#!/usr/bin/env bash
# The demo: a whole power-loss cycle on the lab (real upsd + dummy-ups, real sshd nodes, the
# emulated k3s + Flux cluster). Mains fails, the runtime drains through the threshold, Hecate
# decides and shuts the cluster down in order -- agents, then servers, the coordinator last.
# Mains returns, the nodes boot (k3s disabled at boot, so Hecate orders the start), and the
# staged startup brings the cluster back, through the Flux/Gitea deadlock the cold start left
# behind. The demo prints the timeline of both halves.
# Where this host can boot systemd machines (root, systemd-nspawn), every node AND the coordinator
# titan-db are machines, and Hecate is INSTALLED on titan-db with host/install.sh (release venv,
# systemd units, NUT on the UPS): the installed hecate.service decides and powers titan-db off with
# a real `systemctl poweroff`; at the next boot hecate-bootstrap.service runs the startup. Otherwise
# (or with HECATE_LAB_DEMO_NODES=light) the light nodes emulate hosts and the daemon runs here.
# Nothing touches this machine's own systemd or power: power verbs run only inside lab machines.
set -euo pipefail

DIR="${HECATE_LAB_DIR:-/tmp/hecate-demo}"
CONFIG="$DIR/hecate.yaml"
DAEMON_PID=""
cleanup() {
    if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
    hecate lab down --dir "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

NODES="${HECATE_LAB_DEMO_NODES:-auto}"
if [ "$NODES" = auto ]; then
    if why=$(python -c 'from hecate_lab import machines; import sys; w = machines.unavailable(); print(w or ""); sys.exit(1 if w else 0)'); then
        NODES=machines
    else
        NODES=light
        echo "(light nodes: $why)"
    fi
fi

drain() {  # mains fails; the battery drains through the threshold (1.1 x 300 s default budget = 330 s)
    hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OB DISCHRG" battery.runtime=600 battery.charge=80
    for runtime in 480 360 320 300 280; do
        sleep 1
        hecate lab ups-set --dir "$DIR" pyrphoros battery.runtime=$runtime >/dev/null
        echo "battery.runtime=$runtime"
    done
}

if [ "$NODES" = machines ]; then
    on_titan() { hecate lab exec --dir "$DIR" titan-db "$@"; }
    TCONFIG=/etc/hecate/hecate.yaml

    step "Bringing the lab up: UPS Pyrphoros, 3 k3s servers, 4 agents and the coordinator titan-db as booted systemd machines, the emulated k3s + Flux cluster"
    start=$EPOCHREALTIME
    hecate lab up --dir "$DIR" --ups pyrphoros --servers 3 --agents 4 --machines --coordinator
    hecate lab seed --dir "$DIR"
    echo "lab up in $(since "$start")"

    step "Installing Hecate on titan-db: host/install.sh (offline from the lab's wheels; NUT on the UPS's device)"
    start=$EPOCHREALTIME
    hecate lab install --dir "$DIR"
    echo "installed in $(since "$start")"

    step "Installing again changes nothing"
    hecate lab install --dir "$DIR" | tail -n 1

    step "The installed service on titan-db: hecate.service (Type=notify, watchdog) on the real NUT units"
    on_titan systemctl is-active hecate.service nut-server.service nut-driver@pyrphoros.service
    on_titan systemctl list-timers --all --no-pager hecate-update.timer
    on_titan hecate config validate --config "$TCONFIG"
    for _ in $(seq 100); do
        { on_titan hecate status --config "$TCONFIG" --json 2>/dev/null || true; } | grep -q '"phase": "on_mains"' && break
        sleep 0.2
    done
    on_titan hecate status --config "$TCONFIG" || true   # it exits with its check state (0 OK, 1 WARNING, ...)

    step "Startup on a healthy cluster changes nothing (what hecate-bootstrap.service runs at every boot)"
    on_titan hecate startup --config "$TCONFIG" --execute

    step "The shutdown plan the installed daemon would run (dry-run: touches nothing)"
    on_titan hecate shutdown --config "$TCONFIG"

    step "Mains fails; the battery drains through the threshold (1.1 x 300 s default budget = 330 s)"
    drain

    step "hecate.service on titan-db decides and shuts the cluster down; titan-db powers itself off last"
    for _ in $(seq 600); do on_titan true 2>/dev/null || break; sleep 0.2; done
    if on_titan true 2>/dev/null; then echo "titan-db did not power off" >&2; exit 1; fi
    python - "$DIR" <<'PY'
import json, sys
from pathlib import Path
from hecate_lab.testbed import Lab
runs = json.loads((Lab.load(Path(sys.argv[1])).coordinator_root / "var/lib/hecate/runs.json").read_text())
run = [r for r in runs if r["kind"] == "shutdown" and not r["dry_run"]][-1]
print(f"shutdown recorded on titan-db: {run['result']} in {run['duration_s']:.1f} s, trigger {run['trigger'].get('source')} "
      f"(UPS {run['trigger'].get('ups')}, runtime {run['trigger'].get('runtime_s')} s)")
for stage in run["stages"]:
    print(f"  {stage['name']:<22} {stage['result']:<9} {stage['duration_s']:6.2f} s")
PY

    step "Mains returns; the UPS recharges; every machine boots (k3s disabled at boot: Hecate orders the start)"
    hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OL CHRG" battery.runtime=1800 battery.charge=85
    hecate lab power-on --dir "$DIR"

    step "hecate-bootstrap.service on titan-db: servers, API, agents, nodes, foundation, Flux -- through the deadlock"
    for _ in $(seq 600); do
        [ "$(on_titan systemctl show -p ExecMainExitTimestampMonotonic --value hecate-bootstrap.service 2>/dev/null)" \
            -gt 0 ] 2>/dev/null && break
        sleep 0.2
    done
    on_titan systemctl show -p Result --value hecate-bootstrap.service | sed 's/^/hecate-bootstrap.service: /'
    on_titan journalctl -b -u hecate-bootstrap.service -o cat --no-pager | tail -n 40

    step "Timeline of both halves, from the UPS, the machines, the emulated cluster and Hecate's runs"
    hecate lab timeline --dir "$DIR"

    step "Tearing the lab down"
    hecate lab down --dir "$DIR"
    trap - EXIT
    exit 0
fi

step "Bringing the lab up: UPS Pyrphoros, 3 k3s servers, 4 agents (light nodes), the emulated k3s + Flux cluster"
start=$EPOCHREALTIME
hecate lab up --dir "$DIR" --ups pyrphoros --servers 3 --agents 4
hecate lab seed --dir "$DIR"
echo "lab up in $(since "$start")"
hecate config validate --config "$CONFIG"

step "Startup on a healthy cluster changes nothing (what hecate-bootstrap.service runs at every boot)"
hecate startup --config "$CONFIG" --execute

step "The shutdown plan Hecate would run (dry-run: touches nothing)"
hecate shutdown --config "$CONFIG"

step "hecate daemon watches the UPS and keeps the bootstrap cache fresh (shutdown.execute=true via the environment)"
HECATE_SHUTDOWN__EXECUTE=true hecate daemon --config "$CONFIG" 2> "$DIR/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do
    { hecate status --config "$CONFIG" --json 2>/dev/null || true; } | grep -q '"source": "daemon"' && break
    sleep 0.2
done
for _ in $(seq 100); do ls "$DIR"/state/bootstrap/hecate-snapshot.yaml >/dev/null 2>&1 && break; sleep 0.2; done
hecate status --config "$CONFIG" || true   # it exits with its check state (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
grep -c '^kind:' "$DIR/state/bootstrap/hecate-snapshot.yaml" | xargs echo "objects in the bootstrap cache:"

step "Mains fails; the battery drains through the threshold (1.1 x 300 s default budget = 330 s)"
drain

step "Hecate decides and shuts the cluster down (waiting for the coordinator's power-off)"
for _ in $(seq 300); do [ -s "$DIR/coordinator-poweroff" ] && break; sleep 0.2; done
sleep 0.5
hecate status --config "$CONFIG" || true   # CRITICAL (exit 2): the shutdown is decided
kill "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=""   # the coordinator is off now

step "Mains returns; the UPS recharges; the nodes boot (k3s disabled at boot: Hecate orders the start)"
hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OL CHRG" battery.runtime=1800 battery.charge=85
hecate lab power-on --dir "$DIR" --k3s-disabled

step "hecate startup --execute: servers, API, agents, nodes, foundation, Flux -- through the deadlock"
hecate startup --config "$CONFIG" --execute

step "Timeline of both halves, from the UPS, the nodes, the emulated cluster and Hecate's runs"
hecate lab timeline --dir "$DIR"

step "Tearing the lab down"
hecate lab down --dir "$DIR"
trap - EXIT
