"""Hecate installed with host/install.sh in a booted coordinator machine, running as real systemd units.

One lab for the module (1 server, 1 agent, the coordinator ``titan-db`` as a machine), the tests in
order, each building on the one before: the installer brings up ``hecate.service`` (Type=notify,
watchdog) and the real NUT units on the lab UPS's ``dummy-ups`` file; a second run changes nothing;
``hecate-update.service`` upgrades to a newer local version and rolls a broken one back; the UPS fails
and the *installed* daemon shuts the nodes down and powers its own machine off with a real
``systemctl poweroff`` -- a ``systemctl stop hecate`` in the middle waits for the shutdown -- and when
mains returns the coordinator boots, ``hecate-bootstrap.service`` runs the staged startup and records
it. Nothing runs on this host's systemd: every systemctl here runs inside the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import coordinator_lab_spec
from hecate_lab import cluster_seed, machines, wheelhouse
from hecate_lab.testbed import Lab

_why = machines.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.machines, pytest.mark.timeout(240),
              pytest.mark.skipif(_why is not None, reason=f"lab machines cannot boot here: {_why}")]

CONFIG = "/etc/hecate/hecate.yaml"
HECATE = "/usr/local/bin/hecate"
NEW_WHEELS = "/srv/hecate-new"  # inside the machine (not under /var/tmp: the unit has PrivateTmp)
#: What the module's tests hand on to the next (they run in file order, one lab).
seen: dict[str, object] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Lab]:
    running = Lab.up(tmp_path_factory.mktemp("installed") / "lab",
                     coordinator_lab_spec(wheelhouse))
    try:
        cluster_seed.seed_workloads(running.kubeconfig)  # CoreDNS, Gitea, Flux: what startup brings back
        yield running
    finally:
        running.down()


def inside(lab: Lab, command: str, timeout: float = 120, ok: bool = True) -> str:
    """Run a shell command in the coordinator; its output (and, with ``ok``, a failure naming what it printed)."""
    proc = lab.coordinator_run(["sh", "-c", command], timeout=timeout)
    if ok:
        assert proc.returncode == 0, (f"`{command}` exited {proc.returncode}: "
                                      f"{proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    return proc.stdout


def show(lab: Lab, unit: str, *props: str) -> dict[str, str]:
    out = inside(lab, f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(every)


def runs(lab: Lab) -> list[dict[str, object]]:
    path = lab.coordinator_root / "var/lib/hecate/runs.json"
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def installed_files(lab: Lab) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file the installer owns (the release's venv by its digest file)."""
    root = lab.coordinator_root
    found: dict[str, tuple[str, int]] = {}
    for top in ("etc/hecate", "etc/nut", "etc/systemd/system", "etc/udev/rules.d", "usr/local/bin"):
        for path in sorted((root / top).rglob("*")):
            if path.is_symlink():
                found[str(path.relative_to(root))] = (os.readlink(path), 0)
            elif path.is_file():
                found[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      path.stat().st_mtime_ns)
    for link in ("opt/hecate/current", "opt/hecate/previous"):
        if (root / link).is_symlink():
            found[link] = (os.readlink(root / link), 0)
    found["opt/hecate/releases"] = (" ".join(sorted(p.name for p in (root / "opt/hecate/releases").iterdir())), 0)
    return found


def test_install_runs_the_daemon_as_a_notify_service_on_the_real_nut_units(lab: Lab) -> None:
    # An operator's drop-in, kept by the installer: a shorter watchdog, so its keep-alives come every 3 s here.
    dropin = lab.coordinator_root / "etc/systemd/system/hecate.service.d/watchdog.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nWatchdogSec=6s\n")
    out = inside(lab, " ".join(lab.coordinator_install_argv()), timeout=200)
    seen["watchdog"] = show(lab, "hecate.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    assert "nothing changed" not in out
    for unit in ("hecate.service", "nut-server.service", "nut-driver@pyrphoros.service"):
        assert inside(lab, f"systemctl is-active {unit}", ok=False).strip() == "active", unit
    props = show(lab, "hecate.service", "Type", "WatchdogUSec", "MainPID", "ExecMainStartTimestampMonotonic")
    assert props["Type"] == "notify"
    assert props["WatchdogUSec"] == "6s"  # the drop-in over the unit's own 30 s
    assert inside(lab, "systemctl is-enabled hecate-bootstrap.service").strip() == "enabled"
    assert "hecate-update.timer" in inside(lab, "systemctl list-timers --all --no-pager")
    # The config the lab wrote before the install is the one in force: the installer keeps an existing file.
    assert yaml.safe_load((lab.coordinator_root / CONFIG.lstrip("/")).read_text())["host_name"] == "titan-db"
    # hecate status inside reads the UPS from the daemon, which polls the machine's own upsd.
    lab.ups["pyrphoros"].set(**{"battery.charge": 93})
    def daemon_sees_93() -> bool:
        doc = json.loads(inside(lab, f"{HECATE} status --config {CONFIG} --json", ok=False) or "{}")
        ups = {u["name"]: u for u in doc.get("ups", [])}
        return doc.get("source") == "daemon" and ups.get("pyrphoros", {}).get("charge_pct") == 93
    wait_until("hecate status reads the lab UPS through nut-server", daemon_sees_93, 30, every=1)
    seen["daemon"] = props["MainPID"]


def test_a_second_install_changes_nothing_and_restarts_nothing(lab: Lab) -> None:
    before = installed_files(lab)
    units = {u: show(lab, u, "MainPID", "ActiveEnterTimestampMonotonic")
             for u in ("hecate.service", "nut-server.service", "nut-driver@pyrphoros.service")}
    out = inside(lab, " ".join(lab.coordinator_install_argv()), timeout=200)
    assert "nothing changed" in out
    assert installed_files(lab) == before
    for unit, props in units.items():
        assert show(lab, unit, "MainPID", "ActiveEnterTimestampMonotonic") == props, unit


def test_the_watchdog_is_fed(lab: Lab) -> None:
    first = seen["watchdog"]
    wait_until("a newer watchdog keep-alive",
               lambda: show(lab, "hecate.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] != first,
               15, every=0.5)
    assert show(lab, "hecate.service", "MainPID")["MainPID"] == seen["daemon"]  # fed, not restarted


def _use_update_source(lab: Lab, version: str, edit: Callable[[Path], None] | None = None) -> None:
    target = lab.coordinator_root / NEW_WHEELS.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    wheelhouse.build_variant(target, version=version, edit=edit)
    path = lab.coordinator_root / CONFIG.lstrip("/")
    config = yaml.safe_load(path.read_text())
    config["update"] = {"spec": "hecate", "no_index": True, "find_links": ["/srv/hecate-wheels", NEW_WHEELS],
                        "ready_timeout_s": 60, "settle_s": 3}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _daemon_never_ready(src: Path) -> None:
    daemon = src / "controller/hecate/daemon/__init__.py"
    daemon.write_text(daemon.read_text() + "\n\nasync def run(*_args, **_kwargs):\n"
                      "    raise SystemExit('this release is broken on purpose')\n")


def test_self_update_upgrades_and_restarts_then_rolls_a_broken_release_back(lab: Lab) -> None:
    _use_update_source(lab, "0.1.1")
    pid = show(lab, "hecate.service", "MainPID")["MainPID"]
    inside(lab, "systemctl start hecate-update.service", timeout=200)
    journal = inside(lab, "journalctl -u hecate-update.service -o cat --no-pager")
    assert inside(lab, f"{HECATE} --version").strip().endswith("0.1.1"), journal
    assert os.readlink(lab.coordinator_root / "opt/hecate/current").startswith("releases/0.1.1-")
    assert inside(lab, "systemctl is-active hecate.service", ok=False).strip() == "active"
    upgraded = show(lab, "hecate.service", "MainPID")["MainPID"]
    assert upgraded != pid  # restarted onto the new release

    _use_update_source(lab, "0.1.2", edit=_daemon_never_ready)
    proc = lab.coordinator_run(["systemctl", "start", "hecate-update.service"], timeout=200)
    assert proc.returncode != 0  # the update failed and says so
    journal = inside(lab, "journalctl -u hecate-update.service -o cat --no-pager")
    assert "roll" in journal.lower(), journal
    assert os.readlink(lab.coordinator_root / "opt/hecate/current").startswith("releases/0.1.1-")
    assert inside(lab, f"{HECATE} --version").strip().endswith("0.1.1")
    wait_until("the daemon active again on the previous release",
               lambda: inside(lab, "systemctl is-active hecate.service", ok=False).strip() == "active", 30)
    assert (lab.coordinator_root / "opt/hecate/rejected/0.1.2").exists()
    # The next timer run does not try the rejected version again: no build, no restart.
    running = show(lab, "hecate.service", "MainPID")["MainPID"]
    inside(lab, "systemctl start hecate-update.service", timeout=60)
    assert "was rolled back before" in inside(lab, "journalctl -u hecate-update.service -o cat --no-pager | tail -n 5")
    assert show(lab, "hecate.service", "MainPID")["MainPID"] == running


def test_the_installed_daemon_shuts_the_cluster_down_and_stop_waits_for_it(lab: Lab) -> None:
    server, agent = lab.nodes
    machines.set_k3s(server, stop_s=4)  # a window in which to stop the service mid-shutdown
    lab.ups["pyrphoros"].set(**{"ups.status": "OB LB", "battery.runtime": 60, "battery.charge": 10})
    wait_until("the installed daemon's shutdown run to start",
               lambda: "shutdown" in inside(lab, "ls /var/lib/hecate/journal 2>/dev/null; cat /var/lib/hecate/lock "
                                                 "2>/dev/null", ok=False), 30)
    stop = lab.coordinator_run(["systemctl", "stop", "hecate.service"], timeout=120)
    # The machine powers itself off at the end of the run: its systemctl may not live to answer.
    wait_until("the coordinator to power off", lambda: machines.pid1(lab.coordinator) is None, 90)
    record = [r for r in runs(lab) if r["kind"] == "shutdown" and not r["dry_run"]][-1]
    assert record["result"] == "success", json.dumps(record["stages"], indent=1)
    # In order: the agent's power-off, then the server's, then the coordinator's own (a machine's end may
    # lag its power-off command and its sshd's going, so the commands are what is ordered).
    sent = {n.name: max(t for t, _, m in machines.journal(n) if "COMMAND=/usr/bin/systemctl poweroff" in m)
            for n in lab.nodes}
    own = max(t for t, _, m in machines.journal(lab.coordinator) if m.startswith("Reached target poweroff"))
    assert sent[agent.name] < sent[server.name] < own, (sent, own)
    assert all(e["event"] == "off" for n in lab.hosts for e in machines.power_events(n)[-1:])
    journal = machines.journal(lab.coordinator, all_entries=True)
    messages = [m for _, _, m in journal]
    waited = next(i for i, m in enumerate(messages) if "finishing the shutdown first" in m)
    assert any(m.endswith("stopping") for m in messages[waited:]), stop


def test_when_mains_returns_the_bootstrap_unit_starts_the_cluster_at_boot(lab: Lab) -> None:
    lab.ups["pyrphoros"].set(**{"ups.status": "OL CHRG", "battery.runtime": 1800, "battery.charge": 80})
    lab.nodes = [machines.power_on(node) for node in lab.nodes]
    assert lab.coordinator is not None
    lab.coordinator = machines.power_on(lab.coordinator)
    wait_until("hecate-bootstrap's startup run recorded",
               lambda: any(r["kind"] == "startup" and r.get("trigger", {}).get("source") == "boot"  # type: ignore[union-attr]
                           for r in runs(lab)), 120, every=1)
    record = [r for r in runs(lab) if r["kind"] == "startup"][-1]
    assert record["result"] == "success", json.dumps(record["stages"], indent=1)
    # The cold start lost Gitea's cache: Flux could not fetch; startup broke the deadlock from its cache.
    assert record["changes"].get("deadlock"), record["changes"]  # type: ignore[union-attr]
    for node in lab.nodes:
        assert machines.machine_run(node, ["systemctl", "is-active", "k3s" if node.role == "server" else "k3s-agent"],
                                    check=False).stdout.strip() == "active"
    assert inside(lab, "systemctl is-active hecate.service", ok=False).strip() == "active"
