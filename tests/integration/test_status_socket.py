"""`hecate status` (the real command) against a daemon socket that answers badly: it fails fast, in bounded memory.
And on a terminal it draws its table.

Nothing listens on the UPS port of these configs, so the direct poll that follows the
error is quick too; what is measured is the command as a whole (wall time, peak RSS).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import FakeDaemon
from hecate_lab.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MAX_RSS_MIB = 150  # the interpreter, click and the status code take ~40 MiB; an unbounded read takes GBs


@dataclass
class Ran:
    code: int
    out: str
    err: str
    wall_s: float
    max_rss_mib: float


def write_config(tmp_path: Path, socket_path: Path) -> Path:
    path = tmp_path / "hecate.yaml"
    path.write_text(yaml.safe_dump({
        "host_name": "titan-db",
        "state_dir": str(tmp_path / "state"),
        "ups": [{"name": "pyrphoros", "host": "127.0.0.1", "port": free_port()}],  # nothing there: a quick poll
        "metrics": {"listen": f"127.0.0.1:{free_port()}", "socket": str(socket_path)},
    }))
    return path


# A child's peak RSS counts what it inherited at fork: forked from this (by then large) test
# process, ``hecate status`` would be charged for pytest's memory. A small launcher forks it
# instead and reports its peak (wait4) into a file.
LAUNCHER = """
import os, sys
usage_file, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(usage_file, "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def hecate_status(config: Path, tmp_path: Path) -> Ran:
    """``hecate status --config CONFIG``, with its wall time and peak RSS (reaped by a small launcher)."""
    out_path, err_path, usage_path = tmp_path / "status.out", tmp_path / "status.err", tmp_path / "status.rss"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_path),
                                 sys.executable, "-m", "hecate", "status", "--config", str(config)],
                                stdout=out, stderr=err)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("hecate status hangs") from None
    return Ran(code, out_path.read_text(), err_path.read_text(), time.monotonic() - started,
               int(usage_path.read_text()) / 1024)


def test_an_endless_answer_fails_fast_in_bounded_memory(tmp_path: Path, fake_daemon: FakeDaemon) -> None:
    config = write_config(tmp_path, fake_daemon.serve("endless"))
    ran = hecate_status(config, tmp_path)
    assert ran.code == 3, ran.err  # UNKNOWN: the daemon's answer unusable, and no upsd at the UPS's port
    assert (f"hecate: daemon status unusable: {fake_daemon.path}: the answer is larger than 1 MiB: refused; "
            "polling the UPSes directly") in ran.err
    assert "polled directly" in ran.out
    assert f"Warning:   daemon status unusable: {fake_daemon.path}: the answer is larger than 1 MiB" in ran.out
    assert ran.max_rss_mib < MAX_RSS_MIB, ran
    assert ran.wall_s < 10, ran


@pytest.mark.parametrize("behaviour", ["stall", "drip"])
def test_a_stalled_answer_fails_after_the_time_cap(tmp_path: Path, fake_daemon: FakeDaemon, behaviour: str) -> None:
    config = write_config(tmp_path, fake_daemon.serve(behaviour))
    ran = hecate_status(config, tmp_path)
    assert ran.code == 3, ran.err
    assert f"daemon status unusable: {fake_daemon.path}: no complete answer within 3 s" in ran.err
    assert "polled directly" in ran.out
    assert 3 <= ran.wall_s < 10, ran
    assert ran.max_rss_mib < MAX_RSS_MIB, ran


def test_no_socket_means_a_direct_poll(tmp_path: Path) -> None:
    ran = hecate_status(write_config(tmp_path, tmp_path / "run" / "hecate.sock"), tmp_path)
    assert ran.code == 3, ran.err  # UNKNOWN: neither a daemon nor upsd answered
    assert "Check:     UNKNOWN (exit 3): neither the daemon nor upsd answered" in ran.out
    assert "hecate:" not in ran.err  # nothing about the daemon (only the poll of the absent UPS)
    assert "polled directly" in ran.out


def test_on_a_terminal_the_ups_table_is_drawn_and_the_exit_code_is_the_same(tmp_path: Path) -> None:
    """The real command on a pty: rich draws the table (piped, the tests above read the plain text)."""
    config = write_config(tmp_path, tmp_path / "run" / "hecate.sock")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hecate", "status", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
                                env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 3
        proc.stderr.close()  # type: ignore[union-attr]
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    out = b"".join(chunks).decode()
    assert "\x1b[" in out  # colours
    bare = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "┃ UPS" in bare  # a drawn table
    assert "│ pyrphoros │ unreachable │" in bare
    assert "Check:     UNKNOWN (exit 3)" in bare
