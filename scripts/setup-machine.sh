#!/usr/bin/env bash
# Install the Debian packages the lab and the tests run for real (NUT upsd + dummy-ups +
# upsc/upsmon, OpenSSH sshd, iproute2, promtool, systemd-nspawn and sudo for the lab's machines)
# and create what sshd needs.
# Idempotent: does nothing when everything is present, unless --update is given
# (CI passes it so a fresh machine always starts with `apt-get update`).
set -euo pipefail

PACKAGES=(nut-server nut-client openssh-server openssh-client iproute2 prometheus make systemd-container sudo)
need_apt=0
[ "${1:-}" = "--update" ] && need_apt=1
for bin in /lib/nut/upsd /lib/nut/dummy-ups /usr/bin/upsc /usr/sbin/upsmon /usr/sbin/sshd \
           /usr/bin/ssh-keygen /usr/sbin/ip /usr/bin/promtool /usr/bin/make /usr/bin/systemd-nspawn /usr/bin/sudo; do
    [ -x "$bin" ] || need_apt=1
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ "$need_apt" -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    # policy-rc.d keeps the packages' own services (sshd, upsd, prometheus) from being started:
    # the lab runs its own instances and nothing else may listen.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    $SUDO rm -f /usr/sbin/policy-rc.d
fi
# sshd refuses to start without its privilege-separation directory.
$SUDO mkdir -p /run/sshd
