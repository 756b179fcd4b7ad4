"""The state dir: run history, policy cache, run lock and the journal of in-flight runs.

The power can go at any instant, including halfway through writing a file, and a torn
file must never stop the next boot. So every write here is *atomic*: a temp file in
the same directory, fsync, rename over the target, fsync the directory. A file that still
fails to parse (a disk error, a human with an editor) is moved aside by :func:`move_aside`
as ``<name>.corrupt-<timestamp>`` and reported once: a corrupt ``runs.json`` reads as
empty history (the budget falls back to the configured default instead of crashing the
daemon), a corrupt ``policy-cache.yaml`` as no cache (hecate.yaml's policy is in force).

The policy cache is a PowerPolicy document (``apiVersion``, ``kind``, ``metadata.name``,
``uid``, ``resourceVersion``, ``generation``, ``spec``) plus ``cachedAt``, so
:func:`~hecate.domain.policy.parse_policy` reads it back unchanged. It is written mode
0600 (:func:`policy_cache_text`) and read back by :func:`parse_policy_cache`.

Layout (default ``/var/lib/hecate``)::

    runs.json            list of run records (``hecate.domain.runs.RunRecord``), oldest first
    policy-cache.yaml    last PowerPolicy that validated, for when the API is gone
    journal/<run>.jsonl  one line per event of an in-flight run (``hecate.domain.journal``)
    lock                 fcntl lock: one startup/shutdown at a time
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hecate.adapters import yamlfile
from hecate.domain import journal, policy, timestamps, validation
from hecate.domain.policy_source import CachedPolicy
from hecate.domain.runs import RunHistory, RunRecord

log = logging.getLogger(__name__)

RUNS_FILE = "runs.json"
POLICY_CACHE_FILE = "policy-cache.yaml"
JOURNAL_DIR = "journal"
LOCK_FILE = "lock"
MAX_RUNS_KEPT = 500


class StoreError(Exception):
    """The state dir cannot be used (permissions, disk)."""


class RunInProgress(StoreError):
    """Another startup or shutdown holds the run lock."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another run is in progress ({holder})")
        self.holder = holder


class PolicyCacheCorrupt(Exception):
    """``policy-cache.yaml`` cannot be read back as a PowerPolicy; ``str(err)`` says why.

    ``aside``: where :meth:`StateStore.read_policy_cache` moved it (None: it could not be moved).
    """

    def __init__(self, why: str, aside: Path | None = None) -> None:
        super().__init__(why)
        self.aside = aside


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_aside(path: Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<time>``, kept for a human to look at; raises ``OSError``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside


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
        try:
            (self.dir / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.dir}: cannot create the state dir: {err}") from err

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

    def append_run(self, record: RunRecord) -> None:
        """Add or replace (same id) one run record, keeping the newest ``MAX_RUNS_KEPT``."""
        with self._runs_lock():
            self._remove_stale_temps(RUNS_FILE)
            runs = [r for r in self._load_runs_locked() if r.id != record.id]
            runs.append(record)
            while len(runs) > MAX_RUNS_KEPT:  # drop dry-runs first: executed runs teach the budget
                dry = next((i for i, r in enumerate(runs) if r.dry_run), 0)
                del runs[dry]
            atomic_write(self.runs_path, RunHistory.dump_json(runs, indent=2) + b"\n")

    def _load_runs_locked(self) -> list[RunRecord]:
        try:
            raw = self.runs_path.read_bytes()
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

    @contextlib.contextmanager
    def _runs_lock(self) -> Iterator[None]:
        try:
            fh = open(self.dir / f".{RUNS_FILE}.lock", "a")  # noqa: SIM115 - closed below
        except OSError:  # a read-only state dir (e.g. `hecate status` as a user): read unlocked
            yield
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _remove_stale_temps(self, name: str) -> None:
        """Temp files a killed writer left behind; only called while holding the file's lock."""
        for tmp in self.dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- policy cache ----------------------------------------------------------------

    def write_policy_cache(self, cached: CachedPolicy) -> None:
        atomic_write(self.policy_cache_path, policy_cache_text(cached).encode(), mode=0o600)

    def read_policy_cache(self) -> CachedPolicy | None:
        """The cached policy; None when there is no cache yet.

        A cache that cannot be read (``OSError``, ``UnicodeDecodeError``) is left where it is;
        a corrupt one is moved aside and raised as :class:`PolicyCacheCorrupt`.
        """
        try:
            text = self.policy_cache_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return parse_policy_cache(text)
        except PolicyCacheCorrupt as err:
            with contextlib.suppress(OSError):  # read-only file system: leave it (err.aside stays None)
                err.aside = move_aside(self.policy_cache_path)
            raise

    # -- run lock --------------------------------------------------------------------

    @contextlib.contextmanager
    def run_lock(self, what: str) -> Iterator[None]:
        """Hold the one run lock for the duration; raise ``RunInProgress`` if it is taken."""
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown holder"
                raise RunInProgress(holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the flock

    # -- journal of in-flight runs ---------------------------------------------------

    def journal_path(self, run_id: str) -> Path:
        return self.dir / JOURNAL_DIR / f"{run_id}.jsonl"

    def journal_append(self, run_id: str, event: journal.Event) -> None:
        """Append one event durably (O_APPEND + fsync); a torn last line is ignored on read."""
        line = json.dumps(journal.to_json(event), separators=(",", ":"), default=str) + "\n"
        fd = os.open(self.journal_path(run_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def journal_read(self, run_id: str) -> list[journal.Event]:
        """The run's events in order; lines that are not one (a torn last line) are skipped."""
        path = self.journal_path(run_id)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for number, line in enumerate(lines, 1):
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue  # the power went while this line was written
            if not isinstance(raw, dict):
                continue
            try:
                event = journal.from_json(raw)
            except (KeyError, TypeError, ValueError) as err:
                log.warning("%s line %d: not a journal event this version can read (%s: %s); skipped",
                            path, number, type(err).__name__, err)
                continue
            if event is not None:
                events.append(event)
        return events

    def in_flight_runs(self) -> list[str]:
        """Run ids whose journal is still present (the run never finished)."""
        return sorted(p.stem for p in (self.dir / JOURNAL_DIR).glob("*.jsonl"))

    def journal_finish(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.journal_path(run_id).unlink()


# -- the policy cache's file format ------------------------------------------------------


def policy_cache_document(cached: CachedPolicy) -> dict[str, Any]:
    """The cache as a PowerPolicy document (plus ``cachedAt``)."""
    meta: dict[str, Any] = {"name": cached.name}
    if cached.uid is not None:
        meta["uid"] = cached.uid
    if cached.resource_version is not None:
        meta["resourceVersion"] = cached.resource_version
    if cached.generation is not None:
        meta["generation"] = cached.generation
    return {"apiVersion": policy.API_VERSION, "kind": policy.KIND, "metadata": meta,
            "cachedAt": timestamps.rfc3339(cached.cached_at), "spec": cached.spec}


def policy_cache_text(cached: CachedPolicy) -> str:
    return ("# Hecate's cache of the last valid PowerPolicy: in force while the cluster's cannot be.\n"
            "# Written by the daemon; edit the PowerPolicy in the cluster, not this file.\n"
            + yaml.safe_dump(policy_cache_document(cached), sort_keys=False))


def parse_policy_cache(text: str) -> CachedPolicy:
    """The cache file's policy; :class:`PolicyCacheCorrupt` says what is wrong with it."""
    try:
        data = yamlfile.load(text, POLICY_CACHE_FILE)
    except yamlfile.YamlSyntaxError as err:
        raise PolicyCacheCorrupt(str(err)) from None
    if not isinstance(data, dict):
        raise PolicyCacheCorrupt("not a PowerPolicy document (the top level is not a mapping)")
    try:
        policy.parse_policy(data)
    except ValidationError as err:
        raise PolicyCacheCorrupt(policy.describe_error(err)) from None
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise PolicyCacheCorrupt("metadata.name is missing")
    cached_at = data.get("cachedAt")
    try:
        when = timestamps.parse(str(cached_at))
    except ValueError:
        raise PolicyCacheCorrupt(f"cachedAt is not a time: {cached_at!r}") from None
    return CachedPolicy.from_object(data, when)
