"""Run NUT's real ``upsmon`` in the lab without touching, or tripping over, the host's NUT.

upsmon refuses to start when its PID file names a live process ("A previous upsmon
instance is already running!"), and where it looks depends on the NUT release:

* 2.8.0 (Debian 12) reads and writes ``PIDPATH/upsmon.pid``, with ``PIDPATH`` compiled in
  (``/run/nut`` in Debian's build) -- ``NUT_ALTPIDPATH`` moves the drivers' and upsd's
  files, never upsmon's. A lab upsmon writes its PID there (and leaves it behind when it
  is killed), and a second lab upsmon, the host's own, or any process that later reuses
  a stale PID makes the next start fail.
* 2.8.3 added ``NUT_PIDPATH`` for that directory; 2.8.4 also looks in
  ``NUT_ALTPIDPATH`` when ``NUT_PIDPATH`` has no file.

So a lab upsmon runs in a private mount namespace where ``/run/nut`` is the lab's own
run dir (bind-mounted: nothing outside the namespace sees it), with ``NUT_PIDPATH`` and
``NUT_ALTPIDPATH`` pointing there too for later releases. Nothing of the host's ``/run/nut``
is written: at most the empty directory is created, as the nut-client package does, when a
fresh machine lacks it (the bind needs a mount point); its files are only read, by
:func:`host_upsmon`, to say clearly when the host's own upsmon really runs.
"""

from __future__ import annotations

import os
from pathlib import Path

# upsmon's compiled-in PID directory (``PIDPATH``), Debian's build.
NUT_PIDPATH = Path(os.environ.get("HECATE_LAB_NUT_PIDPATH", "/run/nut"))

# Bind the lab's run dir ($1) over upsmon's PID directory ($2), created empty when missing
# (upsmon writes its PID file there), then become upsmon ($3 and on): same PID, so the
# caller's process group still holds it.
_SCRIPT = 'mkdir -p "$2" && mount --bind "$1" "$2" || exit 1; shift 2; exec "$@"'


def host_upsmon(pidpath: Path = NUT_PIDPATH) -> int | None:
    """The PID of a live ``upsmon`` named by ``pidpath/upsmon.pid``, else None.

    None too for a missing or unreadable file, a dead PID, or a PID now reused by
    another program: a stale file that upsmon itself would wrongly trust.
    """
    try:
        pid = int((pidpath / "upsmon.pid").read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == "upsmon" else None


def upsmon_env(conf_dir: Path, state_dir: Path, run_dir: Path) -> dict[str, str]:
    """The environment of a lab upsmon: its configuration, state and PID file in lab dirs."""
    return {**os.environ, "NUT_CONFPATH": str(conf_dir), "NUT_STATEPATH": str(state_dir),
            "NUT_PIDPATH": str(run_dir), "NUT_ALTPIDPATH": str(run_dir)}


def private_pid_argv(argv: list[str], run_dir: Path, pidpath: Path = NUT_PIDPATH) -> list[str]:
    """``argv`` (upsmon and its options) run in its own mount namespace where ``pidpath`` is ``run_dir``.

    Needs root (as upsmon itself does here). The mount ends with the namespace's last process.
    """
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _SCRIPT, "sh",
            str(run_dir), str(pidpath), *argv]
