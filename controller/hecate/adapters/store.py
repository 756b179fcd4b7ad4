"""The state dir: run history, policy cache, run lock and the journal of in-flight runs.

The power can go at any instant, including halfway through writing a file, and a torn
file must never stop the next boot. So every write here is *atomic*. A file that still
fails to parse (a disk error, a human with an editor) is moved aside
(:func:`~hecate.adapters.statefiles.move_aside`) as ``<name>.corrupt-<timestamp>`` and
reported once: a corrupt ``runs.json`` reads as
empty history (the budget falls back to the configured default instead of crashing the
daemon), a corrupt ``policy-cache.yaml`` as no cache (hecate.yaml's policy is in force), a
journal with a line that is not an event as no journal (its run starts from the plan).

Bookkeeping never stops a power-off. A run's writes here -- the run lock's holder note, the
journal, the run record -- that fail (a full or read-only disk, an I/O error, permissions)
are counted per kind in :attr:`StateStore.write_failures` (status and
``hecate_state_write_errors_total``), logged once per kind and error, and swallowed: the run
goes on in memory. The policy cache and the bootstrap snapshot are counted the same way
by their writers. Only the run lock can refuse a run: when its file cannot be opened at all,
``run_lock(..., required=False)`` (the daemon's armed shutdown) goes on without the
cross-process lock and says so; a lock another process *holds* always refuses.

State files are written and opened through :mod:`hecate.adapters.statefiles` (atomic,
mode 0600, never through a symbolic link); the policy cache's format is
:mod:`hecate.adapters.policy_cache`.

Layout (default ``/var/lib/hecate``)::

    runs.json            list of run records (``hecate.domain.runs.RunRecord``), oldest first
    policy-cache.yaml    last PowerPolicy that validated, for when the API is gone
    journal/<run>.jsonl  one line per event of an in-flight run (``hecate.domain.journal``)
    lock                 fcntl lock: one startup/shutdown at a time
    peer-nonces.json     nonces of accepted peer triggers, for the replay window (adapters/peer_listener.py)
    peer-forward.json    on a peer: its last forwarded trigger (``hecate.domain.forward.ForwardRecord``)
    discharge.json       recent outages' on-battery samples per UPS (``hecate.domain.discharge``)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hecate.adapters import statefiles
from hecate.adapters.policy_cache import POLICY_CACHE_FILE, PolicyCacheCorrupt, parse_policy_cache, policy_cache_text
from hecate.adapters.statefiles import FILE_MODE, SymlinkRefused, atomic_write, move_aside, open_nofollow, read_nofollow
from hecate.domain import discharge, journal, timestamps, validation
from hecate.domain.policy_source import CachedPolicy
from hecate.domain.runs import RunHistory, RunRecord

log = logging.getLogger(__name__)

RUNS_FILE = "runs.json"
DISCHARGE_FILE = "discharge.json"
JOURNAL_DIR = "journal"
LOCK_FILE = "lock"
MAX_RUNS_KEPT = 500
RELOG_AFTER_S = 300.0
"""A kind of write that fails again after it had worked is logged again only after this long."""

# What failed to be written, the ``what`` of ``hecate_state_write_errors_total``.
LOCK = "lock"
JOURNAL = "journal"
RUNS = "runs"
POLICY_CACHE = "policy-cache"
SNAPSHOT = "snapshot"
NONCES = "nonces"
PEER_FORWARD = "peer-forward"
DISCHARGE = "discharge"
WRITE_KINDS = (LOCK, JOURNAL, RUNS, POLICY_CACHE, SNAPSHOT, NONCES, PEER_FORWARD, DISCHARGE)
CONSEQUENCES = {
    LOCK: "the run goes on (the daemon's armed shutdown without the cross-process lock if it cannot be taken)",
    JOURNAL: "the run goes on in memory; if Hecate dies now the run restarts from the plan",
    RUNS: "the run record is kept in memory only (not in the history, the budget does not learn from it)",
    POLICY_CACHE: "the policy is in force but not cached for when the API is gone",
    SNAPSHOT: "the last bootstrap snapshot written is kept",
    NONCES: "the trigger was accepted; its nonce is remembered in memory only (a replay after a restart "
            "within the replay window is not recognised)",
    PEER_FORWARD: "the peer's last forward is shown from memory only (status after a restart does not know it)",
    DISCHARGE: "the outage is not recorded: the discharge model does not learn from it",
}


class StoreError(Exception):
    """The state dir cannot be used (permissions, disk)."""


class RunInProgress(StoreError):
    """Another startup or shutdown holds the run lock."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another run is in progress ({holder})")
        self.holder = holder


@dataclass
class WriteFailure:
    """One kind of state write that fails: counted, logged once, shown in status."""

    what: str
    path: str
    error: str
    code: int | None
    """The error's errno: a new one is logged again."""
    count: int
    since: datetime
    last_at: datetime
    active: bool = True
    """False once a write of the same kind worked again (the count stays)."""
    logged_at: datetime | None = None
    """When the failure was last logged (a disk that flaps between full and not is not logged per write)."""
    recovery_logged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "path": self.path, "error": self.error, "errors": self.count,
                "active": self.active, "since": timestamps.rfc3339(self.since, fraction=True),
                "last_at": timestamps.rfc3339(self.last_at, fraction=True),
                "consequence": CONSEQUENCES.get(self.what, "")}


def boot_id() -> str:
    """This boot's id (a journal from another boot is history, not a run to resume)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def new_run_id(now: datetime | None = None) -> str:
    """A unique, time-ordered run id such as ``20261127T035000Z-3f9a``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


class StateStore:
    """Everything Hecate keeps on the host between runs and reboots."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.warnings: list[str] = []
        """Problems found in the state dir this process should report (e.g. in status)."""
        self.write_failures: dict[str, WriteFailure] = {}
        """Writes that failed, by kind (:data:`JOURNAL`, :data:`RUNS`, ...): status and metrics show them."""
        self._failures_lock = threading.Lock()
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self.dir.mkdir(exist_ok=True, mode=0o700)  # not the umask's mode: the daemon refuses a dir others may write
            (self.dir / JOURNAL_DIR).mkdir(exist_ok=True, mode=0o700)
        except OSError as err:  # a full or read-only disk: the daemon must still watch and shut down
            self.write_failed(JOURNAL, self.dir / JOURNAL_DIR, err)

    @property
    def runs_path(self) -> Path:
        return self.dir / RUNS_FILE

    @property
    def policy_cache_path(self) -> Path:
        return self.dir / POLICY_CACHE_FILE

    # -- run history -----------------------------------------------------------------

    def load_runs(self) -> list[RunRecord]:
        """The recorded runs, oldest first; a corrupt file is moved aside and reads as empty."""
        with self._runs_lock():
            return self._load_runs_locked()

    def append_run(self, record: RunRecord) -> bool:
        """Add or replace (same id) one run record, keeping the newest ``MAX_RUNS_KEPT``.

        False when it could not be written (counted and reported; the caller goes on)."""
        with self._runs_lock():
            self._remove_stale_temps(RUNS_FILE)
            runs = [r for r in self._load_runs_locked() if r.id != record.id]
            runs.append(record)
            while len(runs) > MAX_RUNS_KEPT:  # drop dry-runs first: executed runs teach the budget
                dry = next((i for i, r in enumerate(runs) if r.dry_run), 0)
                del runs[dry]
            try:
                atomic_write(self.runs_path, RunHistory.dump_json(runs, indent=2) + b"\n")
            except OSError as err:
                self.write_failed(RUNS, self.runs_path, err)
                return False
            self.write_ok(RUNS)
            return True

    def _load_runs_locked(self) -> list[RunRecord]:
        try:
            raw = read_nofollow(self.runs_path)
        except FileNotFoundError:
            return []
        except OSError as err:  # a directory, permissions, I/O error: report, do not crash, move nothing
            self._report(f"{self.runs_path} cannot be read ({err}); using an empty history")
            return []
        try:
            return RunHistory.validate_json(raw)
        except ValidationError as err:
            why = validation.problems(err, RunRecord)[0].text
        try:
            aside = move_aside(self.runs_path)
        except OSError as err:  # read-only file system: leave it, report it
            self._report(f"{self.runs_path} is corrupt ({why}) and could not be moved aside ({err}); "
                         "using an empty history")
        else:
            self._report(f"{self.runs_path} is corrupt ({why}); moved it to {aside} and started an empty history")
        return []

    def _report(self, message: str) -> None:
        """Log a problem of the state dir and keep it for status, once."""
        if message not in self.warnings:
            log.warning("%s", message)
            self.warnings.append(message)

    # -- writes that fail --------------------------------------------------------------

    def write_failed(self, what: str, path: Path, err: OSError) -> None:
        """Count a failed write of kind ``what``; log it the first time for this kind and error."""
        now = datetime.now(UTC)
        with self._failures_lock:
            known = self.write_failures.get(what)
            if known is None:
                known = self.write_failures[what] = WriteFailure(what, str(path), str(err), err.errno, 0, now, now)
            elif not known.active:
                known.since = now
            first = (known.logged_at is None or known.code != err.errno
                     or (not known.active and (now - known.logged_at).total_seconds() >= RELOG_AFTER_S))
            known.path, known.error, known.code, known.active, known.last_at = (
                str(path), str(err), err.errno, True, now)
            known.count += 1
            if first:
                known.logged_at, known.recovery_logged = now, False
        if first:
            log.error("state dir: cannot write %s (%s): %s; %s. Further %s write errors are counted "
                      "(hecate_state_write_errors_total), not logged", path, what, err, CONSEQUENCES.get(what, ""),
                      what)

    def write_ok(self, what: str) -> None:
        """A write of kind ``what`` worked: its failure (if any) is no longer current."""
        known = self.write_failures.get(what)
        if known is None or not known.active:
            return
        with self._failures_lock:
            known.active = False
            tell, known.recovery_logged = not known.recovery_logged, True
        if tell:  # once per logged failure: a disk that flaps is not logged per write
            log.warning("state dir: %s writes work again (%d failed so far)", what, known.count)

    def write_failures_doc(self) -> list[dict[str, Any]]:
        """The failed writes for the status document, by kind."""
        with self._failures_lock:
            return [f.as_dict() for _, f in sorted(self.write_failures.items())]

    @contextlib.contextmanager
    def _runs_lock(self) -> Iterator[None]:
        with self._file_lock(RUNS_FILE):
            yield

    @contextlib.contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        try:
            fd = open_nofollow(self.dir / f".{name}.lock", os.O_RDWR | os.O_CREAT)
        except OSError:  # a read-only or full state dir (e.g. `hecate status` as a user): go unlocked
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_stale_temps(self, name: str) -> None:
        """Temp files a killed writer left behind; only called while holding the file's lock."""
        for tmp in self.dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):  # gone already, or a read-only disk: the write says so
                tmp.unlink()

    # -- discharge history --------------------------------------------------------------

    @property
    def discharge_path(self) -> Path:
        return self.dir / DISCHARGE_FILE

    def load_discharge(self) -> dict[str, list[discharge.Outage]]:
        """The recorded outages per UPS, oldest first. A read that changes nothing (no lock: writes are atomic
        renames), so a one-shot ``hecate status`` may call it: a corrupt file reads as empty and stays where it
        is (reported) until the next recorded outage moves it aside."""
        history, _, why = self._read_discharge()
        if why is not None:
            self._report(f"{self.discharge_path} is corrupt ({why}); the discharge model starts empty (the file "
                         "is moved aside when the next outage is recorded)")
        return history

    def record_outages(self, outages: list[discharge.Outage]) -> dict[str, list[discharge.Outage]]:
        """Add (or replace: same UPS and start) outages, capped (:func:`hecate.domain.discharge.merge`); the
        history as it now is. A failed write is counted (:data:`DISCHARGE`), never raised; a file that could
        not be read, or was corrupt and could not be moved aside, is left as it is (not overwritten)."""
        with self._file_lock(DISCHARGE_FILE):
            self._remove_stale_temps(DISCHARGE_FILE)
            history, writable = self._load_discharge_locked()
            merged = discharge.merge(history, outages)
            if not writable:
                self.write_failed(DISCHARGE, self.discharge_path,
                                  OSError(f"{self.discharge_path} could not be read: left as it is, not overwritten"))
                return merged
            try:
                atomic_write(self.discharge_path, discharge.dump(merged))
            except OSError as err:
                self.write_failed(DISCHARGE, self.discharge_path, err)
                return merged
            self.write_ok(DISCHARGE)
            return merged

    def _read_discharge(self) -> tuple[dict[str, list[discharge.Outage]], bool, str | None]:
        """The history; whether the file may be written (False: it is there but could not be read); why it is
        corrupt (None: it is not)."""
        try:
            raw = read_nofollow(self.discharge_path)
        except FileNotFoundError:
            return {}, True, None
        except OSError as err:
            self._report(f"{self.discharge_path} cannot be read ({err}); the discharge model starts empty")
            return {}, False, None
        try:
            return discharge.parse(raw), True, None
        except discharge.Corrupt as err:
            return {}, True, str(err)

    def _load_discharge_locked(self) -> tuple[dict[str, list[discharge.Outage]], bool]:
        """The history before a write, and whether the file may be written; a corrupt one is moved aside."""
        history, writable, why = self._read_discharge()
        if why is None:
            return history, writable
        try:
            aside = move_aside(self.discharge_path)
        except OSError as err:
            self._report(f"{self.discharge_path} is corrupt ({why}) and could not be moved aside ({err}); "
                         "the discharge model starts empty")
            return {}, False
        self._report(f"{self.discharge_path} is corrupt ({why}); moved it to {aside}; the discharge model "
                     "starts empty")
        return {}, True

    # -- policy cache ----------------------------------------------------------------

    def write_policy_cache(self, cached: CachedPolicy) -> None:
        """Write the cache; a failure is counted (:data:`POLICY_CACHE`) and raised as ``OSError``."""
        try:
            atomic_write(self.policy_cache_path, policy_cache_text(cached).encode())
        except OSError as err:
            self.write_failed(POLICY_CACHE, self.policy_cache_path, err)
            raise
        self.write_ok(POLICY_CACHE)

    def read_policy_cache(self) -> CachedPolicy | None:
        """The cached policy; None when there is no cache yet.

        A cache that cannot be read (``OSError``, e.g. :class:`SymlinkRefused`;
        ``UnicodeDecodeError``) is left where it is; a corrupt one is moved aside and raised
        as :class:`PolicyCacheCorrupt`.
        """
        try:
            text = read_nofollow(self.policy_cache_path).decode("utf-8")
        except FileNotFoundError:
            return None
        try:
            return parse_policy_cache(text)
        except PolicyCacheCorrupt as err:
            with contextlib.suppress(OSError):  # read-only file system: leave it (err.aside stays None)
                err.aside = move_aside(self.policy_cache_path)
            raise

    # -- run lock --------------------------------------------------------------------

    def run_lock_holder(self) -> str | None:
        """Who holds the run lock (its note), or None when it is free -- without taking it.

        Reads the kernel's table of locks (``/proc/locks``), so asking never refuses a run
        that starts at that instant (``hecate self-update`` asks before it builds anything).
        Where that table cannot be read, it asks by taking the lock for an instant.
        """
        path = self.dir / LOCK_FILE
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read the run lock {path}: {err}") from err
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        try:
            table = Path("/proc/locks").read_text()
        except OSError:
            try:
                with self.run_lock("probe"):
                    return None
            except RunInProgress as err:
                return err.holder
        held = any(fields[1] == "FLOCK" and fields[5] == key
                   for fields in (line.split() for line in table.splitlines()) if len(fields) > 5)
        if not held:
            return None
        try:
            return read_nofollow(path).decode(errors="replace").strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    @contextlib.contextmanager
    def run_lock(self, what: str, *, required: bool = True) -> Iterator[None]:
        """Hold the one run lock for the duration; raise ``RunInProgress`` if it is taken.

        A lock file that cannot be opened (a full or read-only disk with no lock file yet, a
        symbolic link in its place) raises :class:`StoreError` -- unless not ``required`` (the
        daemon's armed shutdown), which goes on without the cross-process lock, logged and
        counted. Writing the holder's note is best-effort: the flock is what excludes.
        """
        path = self.dir / LOCK_FILE
        try:
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        except OSError as err:
            fd = -1
            if not isinstance(err, SymlinkRefused):  # read-only: an existing lock file still locks
                with contextlib.suppress(OSError):
                    fd = open_nofollow(path, os.O_RDONLY)
            if fd < 0:
                self.write_failed(LOCK, path, err)
                if required:
                    raise StoreError(f"cannot take the run lock: {err}") from err
                log.warning("run lock %s cannot be taken (%s): the daemon's armed shutdown goes on without the "
                            "cross-process lock", path, err)
                yield
                return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown holder"
                raise RunInProgress(holder) from None
            try:
                os.fchmod(fd, FILE_MODE)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            except OSError as err:  # the lock holds; only the note of who holds it is missing
                self.write_failed(LOCK, path, err)
            else:
                self.write_ok(LOCK)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the flock

    # -- journal of in-flight runs ---------------------------------------------------

    def journal_path(self, run_id: str) -> Path:
        return self.dir / JOURNAL_DIR / f"{run_id}.jsonl"

    @contextlib.contextmanager
    def _journal_dir(self, *, create: bool = False) -> Iterator[int]:
        """The journal dir, opened without following a link (every journal file is opened in it)."""
        path = self.dir / JOURNAL_DIR
        try:
            fd = open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(path, 0o700)  # it could not be created at start (e.g. a full disk): try again
            fd = open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)

    def journal_append(self, run_id: str, event: journal.Event) -> bool:
        """Append one event durably (O_APPEND + fsync), all of the line or none of it.

        False when it could not be written (counted and reported; the run goes on in memory).
        """
        line = json.dumps(journal.to_json(event), separators=(",", ":"), default=str) + "\n"
        path = self.journal_path(run_id)
        try:
            with self._journal_dir(create=True) as dir_fd:
                fd = open_nofollow(path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, dir_fd=dir_fd, shown=path)
                try:
                    statefiles.append_whole(fd, line.encode())
                finally:
                    os.close(fd)
        except OSError as err:
            self.write_failed(JOURNAL, path, err)
            return False
        self.write_ok(JOURNAL)
        return True

    def journal_read(self, run_id: str) -> list[journal.Event]:
        """The run's events in order (a torn last line is dropped).

        A journal with a line that is not an event, or a symbolic link in its place, is moved
        aside (reported once) and reads as empty: its run starts from the plan. One that
        cannot be read is left and reads as empty too.
        """
        path = self.journal_path(run_id)
        try:
            with self._journal_dir() as dir_fd:
                data = read_nofollow(path.name, dir_fd=dir_fd, shown=path)
        except FileNotFoundError:
            return []
        except SymlinkRefused as err:
            if err.path != path:  # the journal dir itself is a link: not followed, nothing moved
                self._report(f"{err}; no journal is read")
                return []
            self._set_aside(path, str(err))  # renames the link itself, never what it points at
            return []
        except OSError as err:
            self._report(f"{path} cannot be read ({err}); its run is not resumed")
            return []
        try:
            return journal.parse(data)
        except journal.Corrupt as err:
            self._set_aside(path, f"{path} is corrupt ({err})")
            return []

    def _set_aside(self, path: Path, why: str) -> None:
        try:
            aside = move_aside(path)
        except OSError as err:  # read-only: leave it; it reads as empty every time
            self._report(f"{why}; it could not be moved aside ({err}); its run starts from the plan")
        else:
            self._report(f"{why}; moved it to {aside}; its run starts from the plan")

    def in_flight_runs(self) -> list[str]:
        """Run ids whose journal is still present (the run never finished)."""
        try:
            with self._journal_dir() as dir_fd:
                names = os.listdir(dir_fd)
        except FileNotFoundError:
            return []
        except OSError as err:
            self._report(f"{self.dir / JOURNAL_DIR} cannot be listed ({err}); no run is resumed")
            return []
        return sorted(n.removesuffix(".jsonl") for n in names if n.endswith(".jsonl") and not n.startswith("."))

    def journal_finish(self, run_id: str) -> None:
        """Remove the run's journal (it is over); a failure is counted and reported, never raised."""
        path = self.journal_path(run_id)
        try:
            with self._journal_dir() as dir_fd:
                os.unlink(path.name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            self.write_failed(JOURNAL, path, err)
