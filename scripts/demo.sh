#!/usr/bin/env bash
# The demo: bring the lab up (real upsd + dummy-ups, three real sshd nodes, the emulated
# API), show it, take the UPS on battery, show it again, and tear everything down.
# Later issues extend this to the full power-loss cycle (shutdown and staged startup).
set -euo pipefail

DIR="${HECATE_LAB_DIR:-/tmp/hecate-demo}"
cleanup() { hecate lab down --dir "$DIR" >/dev/null 2>&1 || true; }
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

step "Mains fails: the UPS goes on battery and drains"
hecate lab ups-set --dir "$DIR" pyrphoros ups.status="OB DISCHRG" battery.runtime=240 battery.charge=58
hecate lab status --dir "$DIR"

step "Tearing the lab down"
start=$EPOCHREALTIME
hecate lab down --dir "$DIR"
echo "lab down in $(since "$start")"
trap - EXIT
