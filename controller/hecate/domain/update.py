"""Self-update decisions: release ids, what pip is asked for, whether to update, what to prune.

``hecate self-update`` (:mod:`hecate.services.update`) builds each new version into its own
venv under ``<prefix>/releases/<version>-<UTC stamp>`` and switches the ``current`` link to it,
keeping ``previous`` for a roll-back. Everything here is a purely computational function with
no side-effects: the flow hands in what it found (the current release, the candidate pip
resolved, the run lock, the units' states) and gets back what to do, so each decision is
tested on its own, table-driven and with hypothesis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from hecate.domain.config import Update

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_RELEASE_ID = re.compile(r"^(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_]*?)-(?P<stamp>\d{8}T\d{6}Z)$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
PRODUCT = "hecate"
"""The distribution a git source installs (its ``pyproject.toml`` names it so)."""


def release_id(version: str, now: datetime) -> str:
    """``0.1.1-20261201T164700Z``: the candidate's version and the UTC time of the build."""
    utc = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).astimezone(UTC)
    return f"{version}-{utc.strftime(STAMP_FORMAT)}"


def release_version(release: str) -> str | None:
    """The version part of a release id, or None when ``release`` is not one."""
    match = _RELEASE_ID.match(release)
    return match["version"] if match else None


def _stamp(release: str) -> str:
    match = _RELEASE_ID.match(release)
    return match["stamp"] if match else ""


def requirement(update: Update) -> str:
    """What pip resolves: the configured requirement, or the product from ``git_url`` at ``git_ref``."""
    if update.git_url is not None:
        return f"{PRODUCT} @ git+{update.git_url}@{update.git_ref}"
    if update.spec is None:
        raise ValueError("no update source configured")
    return update.spec


def pinned(update: Update, version: str, commit: str | None) -> str:
    """The exact candidate for the build: ``hecate==0.1.1``, or the git source at the resolved commit.

    The build installs what was resolved, not whatever the source offers a few seconds later.
    """
    if update.git_url is not None:
        return f"{PRODUCT} @ git+{update.git_url}@{commit or update.git_ref}"
    match = _NAME.match(requirement(update))
    assert match is not None  # the configuration's validator checked the requirement's shape
    return f"{match[0]}=={version}"


def pip_source_args(update: Update) -> list[str]:
    """pip's options for where packages come from (``--no-index``, ``--index-url``, ``--find-links``)."""
    args = ["--no-index"] if update.no_index else []
    if update.index_url is not None:
        args += ["--index-url", update.index_url]
    for link in update.find_links:
        args += ["--find-links", link]
    return args


@dataclass(frozen=True)
class Candidate:
    """The version the source offers now."""

    version: str
    commit: str | None = None
    """The git commit it was resolved to (git sources only)."""

    @property
    def key(self) -> str:
        """How a candidate is named in messages and in the rejected list: ``0.1.1`` or ``0.1.1@3f9a2c1d0b4e``."""
        return f"{self.version}@{self.commit[:12]}" if self.commit else self.version


@dataclass(frozen=True)
class Installed:
    """The release ``current`` points at."""

    release: str
    version: str
    commit: str | None = None


def installed(release: str, commit: str | None = None) -> Installed | None:
    """The release ``current`` names, or None when its name is not a release id."""
    version = release_version(release)
    return Installed(release, version, commit) if version is not None else None


def version_reported(output: str) -> str | None:
    """The version ``hecate --version`` printed (``hecate, version 0.1.1``), or None."""
    match = re.search(r"\bversion\s+(\S+)\s*$", output.strip())
    return match[1] if match else None


class Action(StrEnum):
    deferred = "deferred"
    """A run (startup, shutdown) is in progress: try again later."""
    up_to_date = "up to date"
    rejected = "rejected"
    """This candidate failed to become ready before: not retried."""
    update = "update"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def busy(lock_holder: str | None, bootstrap_state: str, bootstrap_unit: str) -> str | None:
    """Why no update may start now (a run holds the lock, the boot-time startup runs), or None."""
    if lock_holder is not None:
        return f"a run holds the run lock ({lock_holder})"
    if bootstrap_state in ("activating", "deactivating", "reloading"):
        return f"{bootstrap_unit} is {bootstrap_state} (the boot-time startup runs)"
    return None


def decide(current: Installed | None, candidate: Candidate, rejected: Mapping[str, str]) -> Decision:
    """Update or not, given what is installed, what the source offers and the candidates rolled back before.

    The same version is up to date unless the source is git and resolved to another commit
    than the current release was built from. Another version -- older too: the source's
    spec decides what is wanted -- is an update, unless it was rolled back before.
    """
    if current is not None and current.version == candidate.version and (
            candidate.commit is None or candidate.commit == current.commit):
        return Decision(Action.up_to_date, f"{current.release} is {candidate.key}, what the source offers")
    if candidate.key in rejected:
        return Decision(Action.rejected, f"{candidate.key} was rolled back before ({rejected[candidate.key]}); "
                                         "not retried until the source offers another version")
    was = f"{current.release}" if current is not None else "no current release"
    return Decision(Action.update, f"{was} -> {candidate.key}")


def to_prune(releases: Iterable[str], keep: Iterable[str | None], keep_count: int) -> list[str]:
    """Releases to remove: all but ``keep`` (current, previous) and the newest others up to ``keep_count``.

    Only names that are release ids are ever pruned: anything else in ``releases/`` is not ours.
    """
    kept = {k for k in keep if k is not None}
    others = sorted((r for r in releases if release_version(r) is not None and r not in kept),
                    key=lambda r: (_stamp(r), r), reverse=True)
    room = max(keep_count - len(kept), 0)
    return sorted(others[room:])


@dataclass(frozen=True)
class UnitStatus:
    """What the service manager says of a unit."""

    active_state: str
    """``active``, ``activating``, ``inactive``, ``failed``, ... (systemd's ActiveState)."""
    main_pid: int = 0
    n_restarts: int = 0

    @property
    def active(self) -> bool:
        return self.active_state == "active"


def parse_unit_status(text: str) -> UnitStatus:
    """``systemctl show -p ActiveState -p MainPID -p NRestarts UNIT`` output (``KEY=value`` lines)."""
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)

    def number(key: str) -> int:
        try:
            return int(values.get(key, "0").strip() or 0)
        except ValueError:
            return 0

    return UnitStatus(values.get("ActiveState", "unknown").strip() or "unknown", number("MainPID"),
                      number("NRestarts"))


def settled(samples: Iterable[UnitStatus]) -> str | None:
    """Why a restarted daemon did not stay up over the settle time, or None when it did.

    Every sample, the first taken right after the restart returned, must be active with the
    same main process (systemd restarting a crashed daemon shows as another PID).
    """
    first: UnitStatus | None = None
    for sample in samples:
        if not sample.active:
            return f"it is {sample.active_state}"
        if first is None:
            first = sample
        elif sample.main_pid != first.main_pid or sample.n_restarts != first.n_restarts:
            return f"its process changed (PID {first.main_pid} -> {sample.main_pid}): it was restarted"
    return None if first is not None else "no status was read"
