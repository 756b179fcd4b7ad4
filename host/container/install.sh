#!/bin/sh
# The container image's install steps, kept out of the Dockerfile so that the tests run exactly
# what the image build runs (the Dockerfile's RUN lines only call this script):
#   wheels SRC OUT     build stage: wheels of the product in SRC (pyproject.toml, README.md,
#                      controller/) and of every dependency, into OUT (needs the package index)
#   venv WHEELS VENV   runtime stage: a venv at VENV holding the product and its dependencies
#                      only, installed offline from WHEELS; checks that `hecate` runs
#   account [ROOT]     runtime stage: the unprivileged user the image runs as (uid and gid
#                      10001, no login) and the directories it owns, in the system tree ROOT (/)
# Nothing is cached: pip keeps no cache, so no layer carries one.
set -eu

HECATE_UID=10001
HECATE_GID=10001

die() {
    echo "install.sh: $*" >&2
    exit 2
}

pip_quiet() {
    "$@" --no-cache-dir --disable-pip-version-check --no-input --quiet
}

wheels() {
    [ "$#" -eq 2 ] || die "usage: wheels SRC OUT"
    [ -f "$1/pyproject.toml" ] || die "$1 has no pyproject.toml"
    pip_quiet python3 -m pip wheel --wheel-dir "$2" "$1"
    ls "$2"/hecate-*.whl >/dev/null || die "no hecate wheel in $2"
}

venv() {
    [ "$#" -eq 2 ] || die "usage: venv WHEELS VENV"
    [ -d "$1" ] || die "no wheel directory $1"
    [ ! -e "$2" ] || die "$2 exists: the image's venv is made fresh"
    python3 -m venv "$2"
    # The product only, from the wheels alone: no index, so nothing else can come in.
    pip_quiet "$2/bin/python" -m pip install --no-index --find-links "$1" hecate
    "$2/bin/hecate" --version
}

account() {
    [ "$#" -le 1 ] || die "usage: account [ROOT]"
    root=${1:-/}
    groupadd --root "$root" --system --gid "$HECATE_GID" hecate
    # --no-log-init: a high uid would otherwise grow a sparse lastlog/faillog into the layer.
    useradd --root "$root" --uid "$HECATE_UID" --gid "$HECATE_GID" --no-create-home --no-log-init \
        --home-dir /var/lib/hecate --shell /usr/sbin/nologin --comment "Hecate" hecate
    # The state dir and the daemon's socket dir (the defaults of hecate.yaml) are the user's own and
    # private, as Hecate requires; the run modes that need the host's mount them over these.
    install -d -m 0700 -o "$HECATE_UID" -g "$HECATE_GID" "$root/var/lib/hecate" "$root/run/hecate"
    install -d -m 0755 "$root/etc/hecate"
}

[ "$#" -ge 1 ] || die "usage: install.sh wheels SRC OUT | venv WHEELS VENV | account [ROOT]"
step=$1
shift
case "$step" in
    wheels | venv | account) "$step" "$@" ;;
    *) die "unknown step: $step" ;;
esac
