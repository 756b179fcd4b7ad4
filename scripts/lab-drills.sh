#!/usr/bin/env bash
# `make drills`: every drill, executed, against a fresh lab (1 UPS, 3 servers, 4 agents, seeded).
# Exit 0 only when every drill passed. The lab is torn down whatever happens.
set -euo pipefail

DIR="${HECATE_LAB_DIR:-/tmp/hecate-drills}"
cleanup() { hecate lab down --dir "$DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT

hecate lab up --dir "$DIR" --ups pyrphoros --servers 3 --agents 4
hecate lab seed --dir "$DIR"
"$(dirname "$0")/hecate-drills.sh" run all --execute --config "$DIR/hecate.yaml"
