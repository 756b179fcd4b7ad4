#!/usr/bin/env bash
# Disruptive drills: break something on purpose, run the startup, prove it recovered.
#
#   scripts/hecate-drills.sh list
#   scripts/hecate-drills.sh run NAME [--execute] [--config FILE]
#   scripts/hecate-drills.sh run all [--execute] [--config FILE]     (every drill, in order)
#
# Without --execute a drill only says what it would break. The config defaults to
# $HECATE_CONFIG, else /etc/hecate/hecate.yaml; drills act on whatever cluster it points at.
set -euo pipefail

HECATE="${HECATE:-hecate}"
command -v "$HECATE" >/dev/null || HECATE="$(dirname "$0")/../.venv/bin/hecate"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
case "$1" in
    list) "$HECATE" drill list ;;
    run)
        [ $# -ge 2 ] || usage
        name="$2"; shift 2
        args=("$@")
        if ! printf '%s\n' "${args[@]:-}" | grep -q -- '^--config'; then
            args+=(--config "${HECATE_CONFIG:-/etc/hecate/hecate.yaml}")
        fi
        if [ "$name" = all ]; then
            status=0
            for drill in $("$HECATE" drill list | awk '{print $1}'); do
                "$HECATE" drill run "$drill" "${args[@]}" || status=1
            done
            exit "$status"
        fi
        exec "$HECATE" drill run "$name" "${args[@]}"
        ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
