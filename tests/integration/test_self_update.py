"""`hecate self-update` for real: venvs built with the system python, pip from an offline wheelhouse, a daemon.

The releases are real (``python3 -m venv`` + ``pip install --no-index --find-links``) under a
temporary prefix; the candidates are wheels of this checkout with another version and one that
fails ``config validate``. The service manager is a test double (this host's systemd is not
ours): it runs the ``current`` release's real daemon as a child process with a notify socket, so
"ready" means what systemd would see. A daemon that never becomes ready, its roll-back and the
rejected version not tried again are proven with the real systemd of a lab machine
(tests/integration/test_installed_service.py).

Each venv build costs ~10 s, so the module shares one installation and builds three releases in
all: the first install, the upgrade, the one that fails its check. Only the upgrade moves
``current`` for good; every other test leaves the installation as it found it (which it asserts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from hecate.adapters import config as config_mod
from hecate.adapters.store import StateStore
from hecate.domain.update import UnitStatus, release_version
from hecate.services import update
from hecate.services.update import Result
from hecate_lab import wheelhouse as wheelhouse_mod
from hecate_lab.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UNIT = "hecate.service"
BOOTSTRAP = "hecate-bootstrap.service"
STALE = "0.0.9-20250101T000000Z"
"""An old release left by an earlier install: pruned by the first update that has a previous one."""


class FakeServiceManager:
    """Test double for systemd: ``hecate.service`` is the current release's daemon as a child process.

    ``restart`` stops the child and starts ``<prefix>/current/bin/hecate daemon`` with a notify
    socket, and reports success once the daemon sent ``READY=1`` (as ``systemctl restart`` of a
    ``Type=notify`` unit does); a daemon that does not within the timeout is killed (the unit
    failed). The bootstrap unit's state is whatever the test sets.
    """

    def __init__(self, prefix: Path, config: Path, work: Path) -> None:
        self.prefix, self.config = prefix, config
        self.notify_path = work / "notify.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.running: str | None = None
        """The release the daemon runs."""
        self.restarts: list[str] = []
        """The release each restart started."""
        self.bootstrap_state = "inactive"
        self.log = work / "daemon.log"

    def status(self, unit: str) -> UnitStatus:
        if unit == BOOTSTRAP:
            return UnitStatus(self.bootstrap_state)
        assert unit == UNIT
        if self.proc is None:
            return UnitStatus("inactive")
        if self.proc.poll() is not None:
            return UnitStatus("failed")
        return UnitStatus("active" if self.ready else "activating", self.proc.pid)

    def restart(self, unit: str, timeout_s: float) -> str | None:
        assert unit == UNIT
        self.stop()
        release = os.readlink(self.prefix / "current").rpartition("/")[2]
        self.restarts.append(release)
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, self.log.open("ab") as log:
            notify.bind(str(self.notify_path))
            self.proc = subprocess.Popen([str(self.prefix / "current" / "bin" / "hecate"), "daemon", "--config",
                                          str(self.config)], stdout=log, stderr=log,
                                         env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path)})
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                notify.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    if b"READY=1" in notify.recv(4096).split(b"\n"):
                        self.ready, self.running = True, release
                        return None
                except TimeoutError:
                    break
        self.stop()
        return f"{release}: no READY=1 within {timeout_s:g} s"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ready, self.running = False, None


@dataclass
class Host:
    work: Path
    prefix: Path
    state: Path
    config: Path
    wheelhouse: Path
    variants: dict[str, Path]
    services: FakeServiceManager
    settings: dict[str, object] = field(default_factory=dict)

    def configure(self, *extra_links: Path, spec: str = "hecate", **update_fields: object) -> Path:
        """Write the live config with the wheelhouse and ``extra_links`` as the source."""
        doc = {**self.settings, "update": {
            "spec": spec, "no_index": True, "find_links": [str(self.wheelhouse), *map(str, extra_links)],
            "prefix": str(self.prefix), "python": "/usr/bin/python3", "systemctl": ["/bin/false"],
            "ready_timeout_s": 15, "settle_s": 1, **update_fields}}
        self.config.write_text(yaml.safe_dump(doc))
        return self.config

    def update(self, *extra_links: Path, execute: bool = True, **kw: object) -> update.Outcome:
        path = self.configure(*extra_links, **kw)
        return update.run(config_mod.load(path, {}), path, self.services, execute=execute)

    def link(self, name: str) -> str | None:
        path = self.prefix / name
        return os.readlink(path).rpartition("/")[2] if path.is_symlink() else None

    def snapshot(self) -> tuple[str | None, str | None, list[str], list[str]]:
        """What a run that changes nothing must leave as it was: links, releases, restarts."""
        releases = sorted(p.name for p in (self.prefix / "releases").iterdir())
        return self.link("current"), self.link("previous"), releases, list(self.services.restarts)


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r} not found once"
    path.write_text(text.replace(old, new))


def _fails_config_validate(src: Path) -> None:
    _replace_once(src / "controller/hecate/cli/__init__.py", "def config_validate(config_path: Path) -> None:\n",
                  "def config_validate(config_path: Path) -> None:\n"
                  "    fail('this build is broken on purpose', code=EXIT_USAGE)\n")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Host]:
    """Hecate 0.1.0 installed by self-update itself into an empty prefix, its daemon running."""
    work = tmp_path_factory.mktemp("self-update")
    variants = {name: wheelhouse_mod.build_variant(work / "wheels" / name, version=version, edit=edit).parent
                for name, version, edit in (("newer", "0.1.1", None), ("fails-check", "0.1.2", _fails_config_validate))}
    prefix, state = work / "opt" / "hecate", work / "state"
    state.mkdir(mode=0o700)
    (prefix / "releases" / STALE).mkdir(parents=True)
    config = work / "hecate.yaml"
    services = FakeServiceManager(prefix, config, work)
    running = Host(work, prefix, state, config, wheelhouse, variants, services, {
        "host_name": "titan-db", "state_dir": str(state),
        "ups": [{"name": "pyrphoros", "host": "127.0.0.1", "port": free_port()}],  # nothing there: polled at once
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(work / "run" / "hecate.sock")}})
    try:
        first = running.update()
        assert first.result is Result.updated, first.message
        assert "not restarted" in first.message  # the unit was not running
        assert services.restart(UNIT, 30) is None, services.log.read_text()[-2000:]
        yield running
    finally:
        services.stop()


def test_upgrade_switches_restarts_once_and_keeps_two_releases(host: Host) -> None:
    old = host.link("current")
    assert old is not None
    assert release_version(old) == "0.1.0"
    restarts = len(host.services.restarts)

    outcome = host.update(host.variants["newer"])

    assert outcome.result is Result.updated, outcome.message
    new = host.link("current")
    assert new == outcome.release
    assert release_version(new) == "0.1.1"
    assert host.link("previous") == old
    assert host.services.restarts[restarts:] == [new]  # once, onto the new release
    assert host.services.running == new
    assert host.services.status(UNIT).active
    assert sorted(p.name for p in (host.prefix / "releases").iterdir()) == sorted([old, new])  # STALE pruned
    out = subprocess.run([str(host.prefix / "current" / "bin" / "hecate"), "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("0.1.1")


def test_unchanged_candidate_does_nothing(host: Host) -> None:
    current = host.link("current")
    assert current is not None
    before = host.snapshot()

    outcome = host.update(host.variants["newer"], spec=f"hecate=={release_version(current)}")

    assert outcome.result is Result.up_to_date, outcome.message
    assert outcome.release is None
    assert host.snapshot() == before


def test_a_run_in_progress_defers(host: Host) -> None:
    before = host.snapshot()
    with StateStore(host.state).run_lock("shutdown (test)"):
        held = host.update(host.variants["fails-check"])
    host.services.bootstrap_state = "activating"
    try:
        booting = host.update(host.variants["fails-check"])
    finally:
        host.services.bootstrap_state = "inactive"

    assert held.result is Result.deferred, held.message
    assert "shutdown (test)" in held.message
    assert booting.result is Result.deferred, booting.message
    assert BOOTSTRAP in booting.message
    assert held.result.ok  # exit 0: the timer tries again
    assert host.snapshot() == before


def test_a_release_that_fails_its_check_switches_nothing(host: Host) -> None:
    before = host.snapshot()

    outcome = host.update(host.variants["fails-check"])

    assert outcome.result is Result.check_failed, outcome.message
    assert not outcome.result.ok
    assert "config validate" in outcome.message
    assert "broken on purpose" in outcome.message
    assert outcome.release is not None
    assert release_version(outcome.release) == "0.1.2"
    assert host.snapshot() == before  # the built release is gone again, no restart


def test_the_command_dry_run_and_unconfigured(host: Host, tmp_path: Path) -> None:
    """The real command: no source is a clear no-op; a dry-run says what it would do and changes nothing."""
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(host.settings))
    before = host.snapshot()
    hecate = [sys.executable, "-m", "hecate"]

    off = subprocess.run([*hecate, "self-update", "--config", str(bare), "--execute"], capture_output=True,
                         text=True, timeout=60, check=False)
    # a systemctl stand-in for which every unit is inactive: nothing on this host is asked
    path = host.configure(host.variants["fails-check"],
                          systemctl=["/bin/sh", "-c", "echo ActiveState=inactive", "systemctl"])
    dry = subprocess.run([*hecate, "self-update", "--config", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)

    assert off.returncode == 0, off.stderr
    assert "no update source configured" in off.stdout
    assert dry.returncode == 0, dry.stderr
    assert "would update" in dry.stdout
    assert "-> 0.1.2" in dry.stdout
    assert f"not restart {UNIT} (it is inactive)" in dry.stdout
    assert "Dry-run: nothing was changed" in dry.stdout
    assert host.snapshot() == before
