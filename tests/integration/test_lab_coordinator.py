"""The lab's coordinator as a booted machine: what an installed Hecate meets there, seen from inside.

Hecate is installed in ``titan-db`` (host/install.sh) and runs there as real units, so the machine
must already give it what it needs: the kube API through the kubeconfig the lab put in its /etc,
SSH to the nodes with the placed key and known_hosts, the real NUT units serving the lab UPS's
``dummy-ups`` file, and a real ``systemctl poweroff`` that ends only that machine, after which it
boots again with its /usr/local, /opt and /etc (its enabled units) as they were. (The offline install
from the bound wheelhouse is test_installed_service's first test.) One lab for the module: 1 server,
1 agent and the coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import coordinator_lab_spec
from hecate_lab import machines
from hecate_lab.cli import lab as lab_cli
from hecate_lab.testbed import COORDINATOR_NAME, Lab, timeline

_why = machines.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.machines, pytest.mark.timeout(240),
              pytest.mark.skipif(_why is not None, reason=f"lab machines cannot boot here: {_why}")]

SSH_OPTIONS = ["-i", "/etc/hecate/id_ed25519", "-o", "UserKnownHostsFile=/etc/hecate/known_hosts",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=5"]


@pytest.fixture(scope="module")
def coord_lab(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Lab]:
    lab = Lab.up(tmp_path_factory.mktemp("coordinator") / "lab",
                 coordinator_lab_spec(wheelhouse))
    try:
        yield lab
    finally:
        lab.down()


def inside(lab: Lab, command: str, timeout: float = 60) -> str:
    """Run a shell command in the coordinator; its output, or a failure naming what it printed."""
    proc = lab.coordinator_run(["sh", "-c", command], timeout=timeout)
    assert proc.returncode == 0, f"`{command}` exited {proc.returncode}: {proc.stdout[-600:]} {proc.stderr[-900:]}"
    return proc.stdout


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.2)


def test_the_coordinator_reaches_the_kube_api_with_the_placed_kubeconfig(coord_lab: Lab) -> None:
    lab = coord_lab
    assert lab.coordinator is not None
    assert lab.coordinator.name == COORDINATOR_NAME
    assert COORDINATOR_NAME not in [n.name for n in lab.nodes]  # not a Kubernetes node
    assert COORDINATOR_NAME not in [n["name"] for n in lab.hecate_config()["cluster"]["nodes"]]
    kubeconfig = yaml.safe_load(inside(lab, "cat /etc/rancher/k3s/k3s.yaml"))
    assert kubeconfig["clusters"][0]["cluster"]["server"].startswith(f"http://{lab.bridge_address}:")
    names = inside(lab, "/usr/bin/kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml get nodes -o name").split()
    assert sorted(names) == ["node/titan-a1", "node/titan-s1"]


def test_the_coordinator_reaches_a_node_over_ssh_as_hecate_with_the_placed_identity(coord_lab: Lab) -> None:
    lab = coord_lab
    assert inside(lab, "stat -c %a /etc/hecate/id_ed25519").strip() == "600"
    server = lab.nodes[0]
    out = inside(lab, " ".join(["ssh", *SSH_OPTIONS, f"{machines.USER}@{server.address}",
                                "'id -un; hostname; sudo -n systemctl is-active k3s'"]))
    assert out.split() == [machines.USER, server.name, "active"]


def test_the_real_nut_units_serve_the_lab_ups_and_follow_ups_set(coord_lab: Lab) -> None:
    lab = coord_lab
    ups = lab.ups["pyrphoros"]
    # What an installer writes, at its smallest: the lab UPS's file through dummy-ups, upsd on loopback.
    inside(lab, f"""set -e
cat > /etc/nut/ups.conf <<EOF
[pyrphoros]
  driver = dummy-ups
  port = {lab.coordinator_ups_port()}
  desc = "lab UPS, through the host's dev file"
EOF
printf 'LISTEN 127.0.0.1 3493\\n' > /etc/nut/upsd.conf
printf '[monitor]\\n  password = lab\\n  upsmon secondary\\n' > /etc/nut/upsd.users
printf 'MODE=netserver\\n' > /etc/nut/nut.conf
chgrp nut /etc/nut/*.conf /etc/nut/upsd.users
chmod 0640 /etc/nut/*.conf /etc/nut/upsd.users
systemctl start nut-driver-enumerator.service
systemctl start nut-server.service
""")

    def served() -> dict[str, str]:
        proc = lab.coordinator_run(["upsc", "pyrphoros@127.0.0.1"], timeout=10)
        return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)

    wait_until("upsc in the coordinator serves the lab's values",
               lambda: served().get("ups.status") == ups.values["ups.status"], 20)
    assert served()["battery.runtime"] == ups.values["battery.runtime"]
    assert inside(lab, "systemctl is-active nut-server.service nut-driver@pyrphoros.service").split() == [
        "active", "active"]
    assert inside(lab, "ps -o user= -C dummy-ups").split() == ["nut"]  # NUT's own privilege drop reads the file
    try:
        ups.set(ups_status="OB DISCHRG", battery_runtime=240)
        wait_until("the coordinator's upsd serves the ups-set change",
                   lambda: served().get("ups.status") == "OB DISCHRG" and served().get("battery.runtime") == "240", 10)
    finally:
        ups.set(ups_status="OL", battery_runtime=1800)


def test_poweroff_inside_ends_only_the_coordinator_and_power_on_boots_what_it_persisted(coord_lab: Lab) -> None:
    lab = coord_lab
    coordinator = lab.coordinator
    assert coordinator is not None
    # What an installer leaves: files in /usr/local, /opt and /etc, and a unit it enabled.
    inside(lab, """set -e
echo lab > /usr/local/bin/persisted
mkdir -p /opt/persisted && echo lab > /opt/persisted/file
cat > /etc/systemd/system/lab-persisted.service <<EOF
[Unit]
Description=hecate lab: an enabled unit that must run at the next boot
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'date +%s > /run/lab-persisted'
[Install]
WantedBy=multi-user.target
EOF
systemctl enable lab-persisted.service
""")
    before = len(machines.power_events(coordinator))
    off = lab.coordinator_run(["systemctl", "poweroff"], timeout=30)
    assert off.returncode == 0, off
    wait_until("the coordinator machine ends", lambda: machines.pid1(coordinator) is None, 30)
    wait_until("its end is recorded", lambda: len(machines.power_events(coordinator)) > before, 10)
    assert machines.power_events(coordinator)[-1]["event"] == "off"
    assert all(machines.pid1(node) is not None for node in lab.nodes)  # only the coordinator went

    result = CliRunner().invoke(lab_cli, ["power-on", "--dir", str(lab.dir), COORDINATOR_NAME])
    assert result.exit_code == 0, result.output
    lab.coordinator = Lab.load(lab.dir).coordinator
    assert lab.coordinator is not None
    assert [e["event"] for e in machines.power_events(lab.coordinator)][-2:] == ["off", "boot"]
    assert lab.coordinator_run(["systemctl", "is-system-running", "--wait"], timeout=60).stdout.strip() in (
        "running", "degraded")
    assert inside(lab, "cat /usr/local/bin/persisted /opt/persisted/file").split() == ["lab", "lab"]
    assert inside(lab, "test -s /run/lab-persisted && systemctl is-enabled lab-persisted.service").strip() == "enabled"
    assert inside(lab, "test -s /etc/hecate/hecate.yaml && echo kept").strip() == "kept"

    rows = [what for _t, who, what in timeline(lab) if who == COORDINATOR_NAME]
    assert any(what.startswith("upsd: ") or what.startswith("nut-server: ") for what in rows), rows[-20:]
    assert any("machine ended (off" in what for what in rows), rows[-20:]
    assert any("machine booted" in what for what in rows), rows[-20:]
