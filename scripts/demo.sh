#!/usr/bin/env bash
# The demo: bring the lab up (real upsd + dummy-ups, three real sshd nodes, the emulated
# API), show it, take the UPS on battery, show it again, and tear everything down.
# Later issues extend this to the full power-loss cycle (shutdown and staged startup).
set -euo pipefail

DIR="${HECATE_LAB_DIR:-/tmp/hecate-demo}"
DAEMON_PID=""
cleanup() {
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    hecate lab down --dir "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

step "Bringing the lab up: 1 UPS (Pyrphoros), 1 k3s server, 2 agents"
start=$EPOCHREALTIME
hecate lab up --dir "$DIR" --ups pyrphoros --servers 1 --agents 2
echo "lab up in $(since "$start")"

step "Hecate's configuration for the lab validates"
hecate config validate --config "$DIR/hecate.yaml"

step "Lab status: mains power"
hecate lab status --dir "$DIR"

step "hecate daemon starts watching the UPS"
hecate daemon --config "$DIR/hecate.yaml" 2> "$DIR/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 50); do hecate status --config "$DIR/hecate.yaml" --json 2>/dev/null | grep -q '"source": "daemon"' && break; sleep 0.2; done
hecate status --config "$DIR/hecate.yaml"

step "Mains fails: the UPS goes on battery, runtime drains below the threshold (1.1 x 300 s budget)"
hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OB DISCHRG" battery.runtime=240 battery.charge=58
sleep 4   # three polls on battery below the threshold: the debounce
hecate status --config "$DIR/hecate.yaml"

step "The daemon's log (the decision is recorded as a dry-run: the shutdown executor comes with issue #4)"
kill "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=""
cat "$DIR/daemon.log"

step "Tearing the lab down"
start=$EPOCHREALTIME
hecate lab down --dir "$DIR"
echo "lab down in $(since "$start")"
trap - EXIT
