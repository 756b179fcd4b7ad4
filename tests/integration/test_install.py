"""host/install.sh for real (bash, a system-Python venv, pip from the offline wheelhouse) into
``--root`` trees: layout and modes, idempotence (a second run rewrites nothing), settings that
rewrite only the NUT files they concern, upgrades under a held run lock, uninstall and purge, bad
flags; shellcheck on every shell script and ``systemd-analyze verify`` of the units.

One install is built per module (a venv costs ~9 s); tests that change it work on a clone whose
venv is hard-linked (the installer replaces files by rename, never in place).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hecate_lab import wheelhouse as wheelhouse_mod

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHECKOUT = Path(__file__).resolve().parents[2]
INSTALL = CHECKOUT / "host" / "install.sh"
UNITS = ("hecate.service", "hecate-bootstrap.service", "hecate-update.service", "hecate-update.timer")
NUT_FILES = ("nut.conf", "ups.conf", "upsd.conf", "upsd.users", "upsmon.conf")
SYSTEM_UNITS = Path("/lib/systemd/system")
LAB_PORT = "/var/lib/hecate-lab/pyrphoros.dev"


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"install.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wheel_args(wheelhouse: Path, wheel: Path | None = None) -> list[str]:
    source = wheel or next(wheelhouse.glob("hecate-*.whl"))
    return ["--source", str(source), "--find-links", str(wheelhouse), "--no-index"]


def snapshot(root: Path, *, content: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root``: a link's target, a directory's mode, a file's mode, mtime and sha256
    (without ``content``: release directories by name only, not their venvs)."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("lib/systemd/system"):
            dirnames[:] = []
            continue
        if not content and rel_dir == Path("opt/hecate/releases"):
            seen.update({f"{rel_dir}/{d}": ("release",) for d in dirnames})
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                seen[key] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                seen[key] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_gid,
                             hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


def changed(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, str]:
    """One install with NUT managed (the lab's dummy-ups driver): the tree and the first run's output.
    The tree holds the distribution's units so the NUT units can be enabled and the units verified."""
    root = tmp_path_factory.mktemp("root")
    if SYSTEM_UNITS.is_dir():
        shutil.copytree(SYSTEM_UNITS, root / "lib/systemd/system", symlinks=True)
    proc = run(root, *wheel_args(wheelhouse), "--manage-nut", "yes", "--nut-driver", "dummy-ups",
               "--nut-port", LAB_PORT)
    return root, proc.stdout


@pytest.fixture
def tree(installed: tuple[Path, str], tmp_path: Path) -> Path:
    """A clone of the module's install to change: its venvs hard-linked, the rest copied."""
    src, _ = installed
    dst = tmp_path / "root"
    dst.mkdir()
    for entry in src.iterdir():
        flags = "-al" if entry.name == "opt" else "-a"
        subprocess.run(["cp", flags, str(entry), str(dst / entry.name)], check=True, timeout=60)
    return dst


def test_layout_modes_and_links(installed: tuple[Path, str]) -> None:
    root, out = installed
    releases = sorted((root / "opt/hecate/releases").iterdir())
    assert len(releases) == 1
    assert re.fullmatch(r"0\.1\.0-\d{8}T\d{6}Z", releases[0].name)
    assert os.readlink(root / "opt/hecate/current") == f"releases/{releases[0].name}"
    assert not (root / "opt/hecate/previous").exists()
    assert os.readlink(root / "usr/local/bin/hecate") == "/opt/hecate/current/bin/hecate"
    version = subprocess.run([str(root / "opt/hecate/current/bin/hecate"), "--version"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert "0.1.0" in version.stdout
    # the product only, never the lab
    assert not list(releases[0].glob("lib/python*/site-packages/hecate_lab*"))
    assert (root / "etc/hecate/hecate.yaml").read_text() == (CHECKOUT / "host/hecate.example.yaml").read_text()
    assert mode(root / "etc/hecate/install.conf") == 0o600
    assert mode(root / "etc/hecate/nut-monitor.password") == 0o600
    assert mode(root / "var/lib/hecate") == 0o700
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_text() == (CHECKOUT / "host/systemd" / unit).read_text()
    wants = root / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants/hecate.service") == "/etc/systemd/system/hecate.service"
    assert os.readlink(wants / "timers.target.wants/hecate-update.timer") == "/etc/systemd/system/hecate-update.timer"
    assert not (wants / "multi-user.target.wants/hecate-bootstrap.service").exists()
    assert "built release 0.1.0-" in out
    assert "would restart hecate.service" in out
    assert "nothing changed" not in out


def test_nut_files(installed: tuple[Path, str]) -> None:
    root, out = installed
    nut = root / "etc/nut"
    password = (root / "etc/hecate/nut-monitor.password").read_text().strip()
    assert len(password) >= 32
    for name in NUT_FILES:
        assert mode(nut / name) == 0o640
        assert (nut / name).read_text().startswith("# Written by Hecate's install.sh")
        if shutil.which("getent") and subprocess.run(["getent", "group", "nut"], capture_output=True,
                                                     check=False).returncode == 0:
            assert (nut / name).group() == "nut"
    assert "MODE=netserver" in (nut / "nut.conf").read_text()
    ups = (nut / "ups.conf").read_text()
    assert "[pyrphoros]" in ups
    assert "driver = dummy-ups" in ups
    assert f"port = {LAB_PORT}" in ups
    assert "vendorid" not in ups  # not a USB driver
    assert not (root / "etc/udev/rules.d/62-hecate-ups.rules").exists()
    assert "LISTEN 127.0.0.1 3493" in (nut / "upsd.conf").read_text()
    assert "LISTEN ::1 3493" in (nut / "upsd.conf").read_text()
    users = (nut / "upsd.users").read_text()
    assert f"password = {password}" in users
    assert "upsmon primary" in users  # the login may set FSD (ups[].set_fsd); upsmon only watches
    assert "instcmds = shutdown.return" in users  # Hecate's ups_power_cycle, with the same login
    assert (root / "etc/hecate/nut.credentials").read_text() == f"upsmon:{password}\n"
    assert mode(root / "etc/hecate/nut.credentials") == 0o600
    upsmon = (nut / "upsmon.conf").read_text()
    assert f"MONITOR pyrphoros@localhost 0 upsmon {password} secondary" in upsmon
    assert "MINSUPPLIES 0" in upsmon
    assert "POWERDOWNFLAG" not in upsmon
    if SYSTEM_UNITS.joinpath("nut-server.service").exists():
        links = root / "etc/systemd/system"
        assert (links / "nut.target.wants/nut-server.service").is_symlink()
        assert os.readlink(links / "nut-driver.target.wants/nut-driver@pyrphoros.service") == \
            "/lib/systemd/system/nut-driver@.service"
    for unit in ("nut-driver@pyrphoros.service", "nut-server.service", "nut-monitor.service"):
        assert f"would restart {unit}" in out


@pytest.mark.timeout(60)
def test_second_run_changes_nothing(installed: tuple[Path, str], wheelhouse: Path) -> None:
    """The same source, no setting flags (they persist): no file rewritten (sha256 and mtime), no restart."""
    root, _ = installed
    before = snapshot(root)
    out = run(root, *wheel_args(wheelhouse)).stdout
    assert out.strip() == "nothing changed"
    assert changed(before, snapshot(root)) == set()


def test_existing_config_untouched_and_nothing_changed(tree: Path, wheelhouse: Path) -> None:
    config = tree / "etc/hecate/hecate.yaml"
    config.unlink()
    config.write_text("host_name: mine\n")
    config.chmod(0o600)
    before = snapshot(tree)
    proc = run(tree, *wheel_args(wheelhouse))
    assert proc.stdout.strip().splitlines()[-1] == "nothing changed"
    assert "would restart" not in proc.stdout
    assert changed(before, snapshot(tree)) == set()
    assert config.read_text() == "host_name: mine\n"


@pytest.mark.parametrize(("flags", "files", "restarts"), [
    (["--nut-port", "/var/lib/hecate-lab/other.dev"], {"ups.conf"},
     {"nut-driver-enumerator.service", "nut-driver@pyrphoros.service", "nut-server.service"}),
    (["--nut-monitor-user", "watcher"], {"upsd.users", "upsmon.conf", "nut.credentials"},
     {"nut-server.service", "nut-monitor.service"}),
    (["--nut-driver", "usbhid-ups", "--nut-port", "auto"], {"ups.conf", "62-hecate-ups.rules"},
     {"nut-driver-enumerator.service", "nut-driver@pyrphoros.service", "nut-server.service"}),
])
def test_changed_setting_rewrites_only_its_files(tree: Path, wheelhouse: Path, flags: list[str],
                                                 files: set[str], restarts: set[str]) -> None:
    before = snapshot(tree, content=False)
    out = run(tree, *wheel_args(wheelhouse), *flags).stdout
    after = snapshot(tree, content=False)
    rewritten = {Path(p).name for p in changed(before, after) if after.get(p, ("",))[0] != "dir"}
    assert rewritten == {"install.conf", *files}
    assert set(re.findall(r"^would restart (\S+)$", out, re.MULTILINE)) == restarts
    assert "nothing changed" not in out
    if "62-hecate-ups.rules" in files:
        rule = (tree / "etc/udev/rules.d/62-hecate-ups.rules").read_text()
        assert 'ATTR{idVendor}=="0764", ATTR{idProduct}=="0601"' in rule
        assert 'GROUP="nut"' in rule
        assert "vendorid = 0764" in (tree / "etc/nut/ups.conf").read_text()
        assert "would reload the udev rules" in out
    # persisted: a run without setting flags keeps them and changes nothing
    assert run(tree, *wheel_args(wheelhouse)).stdout.strip() == "nothing changed"


def test_renamed_ups_moves_the_driver_instance(tree: Path, wheelhouse: Path) -> None:
    before = snapshot(tree, content=False)
    out = run(tree, *wheel_args(wheelhouse), "--nut-ups-name", "statera").stdout
    after = snapshot(tree, content=False)
    wants = "etc/systemd/system/nut-driver.target.wants"
    assert changed(before, after) == {"etc/hecate/install.conf", "etc/nut/ups.conf", "etc/nut/upsmon.conf",
                                      f"{wants}/nut-driver@pyrphoros.service", f"{wants}/nut-driver@statera.service"}
    assert f"{wants}/nut-driver@pyrphoros.service" not in after
    assert "would stop nut-driver@pyrphoros.service" in out
    assert set(re.findall(r"^would restart (\S+)$", out, re.MULTILINE)) == {
        "nut-driver-enumerator.service", "nut-driver@statera.service", "nut-server.service", "nut-monitor.service"}


def test_password_file_and_bootstrap(tree: Path, wheelhouse: Path, tmp_path: Path) -> None:
    secret = tmp_path / "monitor.secret"
    secret.write_text("s3cret-from-a-file\n")
    out = run(tree, *wheel_args(wheelhouse), "--nut-monitor-password-file", str(secret),
              "--enable-bootstrap", "yes").stdout
    assert "password = s3cret-from-a-file" in (tree / "etc/nut/upsd.users").read_text()
    assert "upsmon s3cret-from-a-file secondary" in (tree / "etc/nut/upsmon.conf").read_text()
    link = tree / "etc/systemd/system/multi-user.target.wants/hecate-bootstrap.service"
    assert os.readlink(link) == "/etc/systemd/system/hecate-bootstrap.service"
    assert "enabled hecate-bootstrap.service" in out
    out = run(tree, *wheel_args(wheelhouse), "--enable-bootstrap", "no").stdout
    assert not link.is_symlink()
    assert "disabled hecate-bootstrap.service" in out


@pytest.mark.parametrize(("flags", "message"), [
    (["--manage-nut", "maybe"], "--manage-nut 'maybe': yes or no"),
    (["--nut-vendor-id", "12345"], "--nut-vendor-id '12345': four hex digits"),
    (["--nut-ups-name", "a b"], "--nut-ups-name 'a b'"),
    (["--nut-port", 'x"y'], "--nut-port"),
    (["--nut-monitor-password-file", "/nonexistent/secret"], "not a readable file"),
    (["--source", "/nonexistent"], "--source /nonexistent does not exist"),
    (["--no-index"], "--no-index needs --find-links"),
    (["--purge"], "--purge only goes with --uninstall"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--nut-driver"], "--nut-driver needs a value"),
])
def test_bad_flags_change_nothing(installed: tuple[Path, str], flags: list[str], message: str) -> None:
    root, _ = installed
    before = snapshot(root, content=False)
    proc = run(root, *flags, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""
    assert changed(before, snapshot(root, content=False)) == set()


@pytest.mark.timeout(180)
def test_upgrade_under_a_held_lock_keeps_previous_and_prunes(tree: Path, wheelhouse: Path, tmp_path: Path) -> None:
    old = os.readlink(tree / "opt/hecate/current")
    stale = tree / "opt/hecate/releases/0.0.9-20000101T000000Z"
    stale.mkdir()
    newer = wheelhouse_mod.build_variant(tmp_path / "wheels", version="0.2.0")
    lock = tree / "var/lib/hecate/lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = run(tree, *wheel_args(wheelhouse, newer)).stdout
    new = os.readlink(tree / "opt/hecate/current")
    assert re.fullmatch(r"releases/0\.2\.0-\d{8}T\d{6}Z", new)
    assert os.readlink(tree / "opt/hecate/previous") == old
    assert not stale.exists()
    assert sorted(p.name for p in (tree / "opt/hecate/releases").iterdir()) == sorted([Path(old).name, Path(new).name])
    assert "hecate.service keeps its release until its next restart" in out
    assert "would restart hecate.service" not in out
    # lock free: the same wheel again builds nothing and restarts nothing
    assert run(tree, *wheel_args(wheelhouse, newer)).stdout.strip() == "nothing changed"


def test_failed_build_leaves_current(tree: Path, tmp_path: Path) -> None:
    """A checkout needs its build backend; offline, from a wheelhouse without it, pip fails: nothing switches."""
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    before = snapshot(tree, content=False)
    proc = run(tree, "--source", str(CHECKOUT), "--find-links", str(empty), "--no-index", check=False)
    assert proc.returncode == 1
    assert "pip install" in proc.stderr
    assert "not built" in proc.stderr
    assert changed(before, snapshot(tree, content=False)) == set()


def test_uninstall_then_purge(tree: Path, wheelhouse: Path) -> None:
    # a NUT file the distribution wrote before Hecate managed it is kept and restored by --purge
    upsmon = tree / "etc/nut/upsmon.conf"
    upsmon.unlink()
    upsmon.write_text("# the distribution's upsmon.conf\n")
    out = run(tree, *wheel_args(wheelhouse)).stdout
    assert (tree / "etc/nut/upsmon.conf.hecate-orig").read_text() == "# the distribution's upsmon.conf\n"
    assert "kept the original" in out

    out = run(tree, "--uninstall").stdout
    for gone in ("opt/hecate", "usr/local/bin/hecate", *(f"etc/systemd/system/{u}" for u in UNITS),
                 "etc/systemd/system/multi-user.target.wants/hecate.service",
                 "etc/systemd/system/timers.target.wants/hecate-update.timer"):
        assert not (tree / gone).exists(), gone
        assert not (tree / gone).is_symlink(), gone
    for kept in ("etc/hecate/hecate.yaml", "etc/hecate/install.conf", "var/lib/hecate", "etc/nut/ups.conf"):
        assert (tree / kept).exists(), kept
    assert "kept" in out
    assert run(tree, "--uninstall").stdout.strip().endswith("nothing changed")

    run(tree, "--uninstall", "--purge")
    assert not (tree / "etc/hecate").exists()
    assert not (tree / "var/lib/hecate").exists()
    for name in ("nut.conf", "ups.conf", "upsd.conf", "upsd.users"):
        assert not (tree / "etc/nut" / name).exists(), name
    assert upsmon.read_text() == "# the distribution's upsmon.conf\n"
    assert not (tree / "etc/nut/upsmon.conf.hecate-orig").exists()


def test_uninstall_refused_while_a_run_holds_the_lock(tree: Path) -> None:
    with (tree / "var/lib/hecate/lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run(tree, "--uninstall", check=False)
    assert proc.returncode == 1
    assert "holds" in proc.stderr
    assert (tree / "opt/hecate/current").is_symlink()


def test_one_run_at_a_time(installed: tuple[Path, str]) -> None:
    root, _ = installed
    with INSTALL.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run(root, check=False)
    assert proc.returncode == 1
    assert "another install.sh run is in progress" in proc.stderr


def _is_shell(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    with path.open("rb") as f:
        first = f.readline()
    return first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh"))


def test_shellcheck_every_script() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    scripts = sorted({p.resolve() for d in ("host", "scripts") for p in (CHECKOUT / d).rglob("*")
                      if p.is_file() and _is_shell(p)})
    assert INSTALL in scripts
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
                    reason="no systemd-analyze or no system units to verify against")
def test_units_verify(installed: tuple[Path, str]) -> None:
    root, _ = installed
    units = [str(root / "etc/systemd/system" / u) for u in UNITS]
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""
