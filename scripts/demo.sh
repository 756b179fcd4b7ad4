#!/usr/bin/env bash
# The demo: a whole power-loss cycle on the lab (real upsd + dummy-ups, real sshd nodes, the
# emulated k3s + Flux cluster). Mains fails, the runtime drains through the threshold, Hecate
# decides and shuts the cluster down in order -- agents, then servers, the coordinator last.
# Mains returns, the nodes boot (k3s disabled at boot, so Hecate orders the start), and
# `hecate startup --execute` brings the cluster back in stages, through the Flux/Gitea
# deadlock the cold start left behind. The demo prints the timeline of both halves.
# The nodes are booted systemd machines where this host can boot them (root, systemd-nspawn):
# real sshd, sudo, k3s units and `systemctl poweroff`, each machine's journal in the timeline;
# otherwise (or with HECATE_LAB_DEMO_NODES=light) the light nodes, which emulate them.
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
MACHINES=""
[ "$NODES" = machines ] && MACHINES="--machines"

step "Bringing the lab up: UPS Pyrphoros, 3 k3s servers, 4 agents ($NODES nodes), the emulated k3s + Flux cluster"
start=$EPOCHREALTIME
hecate lab up --dir "$DIR" --ups pyrphoros --servers 3 --agents 4 $MACHINES
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
    hecate status --config "$CONFIG" --json 2>/dev/null | grep -q '"source": "daemon"' && break
    sleep 0.2
done
for _ in $(seq 100); do ls "$DIR"/state/bootstrap/hecate-snapshot.yaml >/dev/null 2>&1 && break; sleep 0.2; done
hecate status --config "$CONFIG"
grep -c '^kind:' "$DIR/state/bootstrap/hecate-snapshot.yaml" | xargs echo "objects in the bootstrap cache:"

step "Mains fails; the battery drains through the threshold (1.1 x 300 s default budget = 330 s)"
hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OB DISCHRG" battery.runtime=600 battery.charge=80
for runtime in 480 360 320 300 280; do
    sleep 1
    hecate lab ups-set --dir "$DIR" pyrphoros battery.runtime=$runtime >/dev/null
    echo "battery.runtime=$runtime"
done

step "Hecate decides and shuts the cluster down (waiting for the coordinator's power-off)"
for _ in $(seq 300); do [ -s "$DIR/coordinator-poweroff" ] && break; sleep 0.2; done
sleep 0.5
hecate status --config "$CONFIG"
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
