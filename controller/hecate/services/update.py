"""``hecate self-update``: build the source's new version beside the running one, check it, switch, restart.

The steps (docs/update.md): resolve what the source offers (pip, installing nothing); stop
there when it is what ``current`` already is, when it was rolled back before, or when a run
holds the run lock or the boot-time startup runs (*deferred*: the timer comes again); build
a fresh venv in ``releases/<version>-<stamp>`` and check it (``hecate --version`` is the
candidate's, ``hecate config validate`` passes on the live configuration) -- a release that
fails is removed and nothing is switched; then, holding the run lock so no run can start
meanwhile, switch ``current`` to it and ``previous`` to the old one; release the lock and
restart the daemon's unit if it was active. The unit is ``Type=notify``, so the restart
returns once the new daemon said ``READY=1``; it must then stay up for ``settle_s``. If it
does not, ``current`` goes back to the old release, the daemon is restarted on it, the
candidate is recorded as rejected (not retried: a broken release must not restart the
daemon at every timer tick) and the run ends non-zero. Releases beyond ``keep_releases``
are pruned at the end.

Every step is logged (the unit's stderr goes to the journal). The decisions are
:mod:`hecate.domain.update`'s; disk and pip are :mod:`hecate.adapters.releases`; the units
are behind :class:`ServiceManager`, whose production implementation runs ``systemctl``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from hecate.adapters import releases as releases_mod
from hecate.adapters.releases import CURRENT, PREVIOUS, ReleaseError, Releases
from hecate.adapters.store import RunInProgress, StateStore
from hecate.domain import update
from hecate.domain.config import HecateConfig
from hecate.domain.update import Action, UnitStatus

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 0.5
"""How often the unit is looked at while it settles."""


class ServiceManager(Protocol):
    """What self-update needs of the service manager."""

    def status(self, unit: str) -> UnitStatus: ...

    def restart(self, unit: str, timeout_s: float) -> str | None:
        """Restart and wait until the unit is ready; None, or why it failed."""
        ...


class Result(StrEnum):
    disabled = "disabled"
    up_to_date = "up to date"
    deferred = "deferred"
    rejected = "rejected"
    would_update = "would update"
    updated = "updated"
    check_failed = "check failed"
    failed = "failed"
    rolled_back = "rolled back"
    roll_back_failed = "roll-back failed"

    @property
    def ok(self) -> bool:
        """Whether the run ends well (exit 0): nothing to do, deferred, or done."""
        return self in (Result.disabled, Result.up_to_date, Result.deferred, Result.rejected, Result.would_update,
                        Result.updated)


@dataclass(frozen=True)
class Outcome:
    result: Result
    message: str
    release: str | None = None
    """The release built (kept or removed again), if any."""


def run(config: HecateConfig, config_path: Path, services: ServiceManager, *, execute: bool,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """One self-update (or, without ``execute``, what it would do). Raises StoreError when the lock cannot be used."""
    cfg = config.update
    if not cfg.enabled:
        return Outcome(Result.disabled, "no update source configured (update.spec or update.git_url): nothing to do")
    store = StateStore(config.state_dir)
    disk = Releases(cfg.prefix)

    why_busy = update.busy(store.run_lock_holder(), services.status(cfg.bootstrap_unit).active_state,
                           cfg.bootstrap_unit)
    if why_busy:
        return Outcome(Result.deferred, f"deferred: {why_busy}; the next timer run tries again")

    current_id = disk.linked(CURRENT)
    current = update.installed(current_id, disk.commit(current_id)) if current_id else None
    log.info("current release: %s", current_id or f"none under {cfg.prefix}")
    wanted = update.requirement(cfg)
    sources = update.pip_source_args(cfg)
    resolver = disk.path(current_id) / "bin" / "python" if current_id else cfg.python
    try:
        candidate = releases_mod.resolve(resolver, wanted, sources, cfg.build_timeout_s)
    except ReleaseError as err:
        return Outcome(Result.failed, f"cannot resolve the update source: {err}")
    log.info("the source offers %s (%s)", candidate.key, wanted)

    decision = update.decide(current, candidate, disk.rejected())
    if decision.action is Action.up_to_date:
        return Outcome(Result.up_to_date, f"up to date: {decision.reason}")
    if decision.action is Action.rejected:
        return Outcome(Result.rejected, decision.reason)
    release = update.release_id(candidate.version, now())
    requirement = update.pinned(cfg, candidate.version, candidate.commit)
    if not execute:
        unit = services.status(cfg.unit)
        then = (f"restart {cfg.unit} (it is active)" if unit.active
                else f"not restart {cfg.unit} (it is {unit.active_state})")
        return Outcome(Result.would_update, f"would update ({decision.reason}): build {disk.path(release)} from "
                                            f"{requirement!r}, check it, switch {cfg.prefix / CURRENT} to it, {then}. "
                                            "Dry-run: nothing was changed; run with --execute to update.")

    log.info("building %s from %r", disk.path(release), requirement)
    started = time.monotonic()
    try:
        disk.build(release, cfg.python, requirement, sources, cfg.build_timeout_s)
        disk.write_manifest(release, candidate, requirement)
        log.info("built %s in %.1f s; checking it", release, time.monotonic() - started)
        reported = update.version_reported(disk.check(release, config_path.absolute(), cfg.build_timeout_s))
        if reported != candidate.version:
            raise ReleaseError(f"{release}: hecate --version reports {reported!r}, not {candidate.version}")
    except (ReleaseError, OSError) as err:
        disk.remove(release)
        return Outcome(Result.check_failed, f"the new release failed its check and was removed; nothing was "
                                            f"switched: {err}", release)
    log.info("%s checked: hecate --version is %s, config validate passes on %s", release, reported, config_path)
    return _switch_and_restart(config, services, store, disk, current_id, release, candidate, sleep)


def _switch_and_restart(config: HecateConfig, services: ServiceManager, store: StateStore, disk: Releases,
                        old: str | None, new: str, candidate: update.Candidate,
                        sleep: Callable[[float], None]) -> Outcome:
    cfg = config.update
    old_previous = disk.linked(PREVIOUS)
    try:
        with store.run_lock(f"self-update to {new}"):
            if old is not None:
                disk.switch(PREVIOUS, old)
            disk.switch(CURRENT, new)
            log.info("switched %s -> %s (previous -> %s)", cfg.prefix / CURRENT, new, old or "none")
            unit = services.status(cfg.unit)
    except RunInProgress as err:  # a run started while the release was built: it is not disturbed
        disk.remove(new)
        return Outcome(Result.deferred, f"deferred: a run took the run lock meanwhile ({err.holder}); the "
                                        "built release was removed, the next timer run tries again", new)
    except ReleaseError as err:
        still = _restore_links(disk, old, old_previous)
        if still is None:
            disk.remove(new)
        return Outcome(Result.failed, f"{err}{'; ' + still if still else ''}", new)
    if not unit.active:
        _prune(disk, cfg.keep_releases)
        return Outcome(Result.updated, f"updated to {new}; {cfg.unit} is {unit.active_state}, not restarted "
                                       "(it runs the new release when it starts)", new)
    why = _restart(services, cfg.unit, cfg.ready_timeout_s, cfg.settle_s, sleep)
    if why is None:
        _prune(disk, cfg.keep_releases)
        return Outcome(Result.updated, f"updated to {new}; {cfg.unit} restarted and ready", new)

    log.error("%s on %s failed: %s; rolling back", cfg.unit, new, why)
    if old is None:
        return Outcome(Result.failed, f"{cfg.unit} failed on {new} ({why}) and there is no earlier release "
                                      "to roll back to", new)
    still = _restore_links(disk, old, old_previous)
    if still is not None:
        return Outcome(Result.roll_back_failed, f"{cfg.unit} failed on {new} ({why}); the roll-back failed: {still}",
                       new)
    marker = disk.reject(candidate.key, f"{cfg.unit} failed on {new}: {why}")
    disk.remove(new)
    log.info("switched %s back to %s; %s is not retried (%s)", cfg.prefix / CURRENT, old, candidate.key, marker)
    again = _restart(services, cfg.unit, cfg.ready_timeout_s, cfg.settle_s, sleep)
    if again is not None:
        return Outcome(Result.roll_back_failed, f"{cfg.unit} failed on {new} ({why}); rolled back to {old} but "
                                                f"{cfg.unit} failed there too: {again}", new)
    _prune(disk, cfg.keep_releases)
    return Outcome(Result.rolled_back, f"rolled back: {cfg.unit} failed on {new} ({why}); {old} runs again", new)


def _restore_links(disk: Releases, old: str | None, old_previous: str | None) -> str | None:
    """Point ``current`` and ``previous`` back where they were; None, or why that failed."""
    try:
        disk.switch(CURRENT, old)
        disk.switch(PREVIOUS, old_previous)
    except ReleaseError as err:
        log.error("cannot restore the links: %s", err)
        return str(err)
    return None


def _restart(services: ServiceManager, unit: str, timeout_s: float, settle_s: float,
             sleep: Callable[[float], None]) -> str | None:
    """Restart ``unit``; None when it became ready and stayed so for ``settle_s``, else why not."""
    log.info("restarting %s", unit)
    why = services.restart(unit, timeout_s)
    if why is not None:
        return f"the restart failed: {why}"
    samples = [services.status(unit)]
    waited = 0.0
    while waited < settle_s and samples[-1].active:
        step = min(SAMPLE_EVERY_S, settle_s - waited)
        sleep(step)
        waited += step
        samples.append(services.status(unit))
    why = update.settled(samples)
    if why is None:
        log.info("%s is ready and stayed active for %g s (PID %d)", unit, settle_s, samples[-1].main_pid)
        return None
    return f"after the restart {why}"


def _prune(disk: Releases, keep_count: int) -> None:
    for release in update.to_prune(disk.all(), (disk.linked(CURRENT), disk.linked(PREVIOUS)), keep_count):
        log.info("pruning release %s", release)
        disk.remove(release)
