"""Self-update's decisions (release ids, what to prune, whether to update, whether the daemon settled) and its
configuration; the restart-and-settle step against a scripted service manager."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.adapters import config
from hecate.adapters.releases import CURRENT, PREVIOUS, Releases
from hecate.adapters.store import StateStore
from hecate.adapters.systemd import Systemctl
from hecate.domain.config import HecateConfig, Update
from hecate.domain.update import (
    Action,
    Candidate,
    Installed,
    UnitStatus,
    busy,
    decide,
    installed,
    parse_unit_status,
    pinned,
    pip_source_args,
    release_id,
    release_version,
    requirement,
    settled,
    to_prune,
    version_reported,
)
from hecate.services import update as update_service

NOW = datetime(2026, 12, 1, 16, 47, 5, tzinfo=UTC)
versions = st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,3}((a|b|rc|\.post|\.dev)[0-9]{1,2})?(\+[a-z0-9]{1,8})?\Z")
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))


def rid(version: str, minutes: int) -> str:
    return release_id(version, NOW + timedelta(minutes=minutes))


# -- release ids ----------------------------------------------------------------------------


def test_release_id_is_version_and_utc_stamp() -> None:
    assert release_id("0.1.1", NOW) == "0.1.1-20261201T164705Z"
    local = NOW.astimezone(timezone(timedelta(hours=2)))
    assert release_id("0.1.1", local) == "0.1.1-20261201T164705Z"


@given(versions, instants)
def test_release_version_reads_back_the_version(version: str, when: datetime) -> None:
    assert release_version(release_id(version, when)) == version


@pytest.mark.parametrize("name", ["0.1.0", "current", "0.1.0-2026", "-20261201T164705Z", ".0.1-20261201T164705Z",
                                  "0.1.0-20261201T164705Z.tmp"])
def test_names_that_are_not_release_ids(name: str) -> None:
    assert release_version(name) is None
    assert installed(name) is None


# -- pruning ----------------------------------------------------------------------------------


def test_prune_keeps_current_and_previous() -> None:
    old, mid, prev, cur = rid("0.1.0", 0), rid("0.1.1", 1), rid("0.1.2", 2), rid("0.1.3", 3)
    assert to_prune([old, mid, prev, cur, "notes", ".0.1.4-building"], [cur, prev], 2) == [old, mid]
    assert to_prune([old, mid, prev, cur], [cur, prev], 3) == [old]  # the newest other is kept too
    assert to_prune([old, mid, cur], [cur, None], 2) == [old]  # no previous: the newest other stays
    assert to_prune([cur], [cur, None], 2) == []


@given(st.lists(st.tuples(versions, st.integers(0, 10_000)), max_size=12, unique_by=lambda t: t[1]),
       st.data(), st.integers(2, 6))
def test_prune_never_touches_what_it_keeps_and_removes_the_oldest(
        made: list[tuple[str, int]], data: st.DataObject, keep_count: int) -> None:
    releases = [rid(v, m) for v, m in made]
    keep = data.draw(st.lists(st.sampled_from(releases), max_size=2, unique=True)) if releases else []
    pruned = to_prune([*releases, "lost+found"], keep, keep_count)

    assert not set(pruned) & set(keep)
    assert "lost+found" not in pruned
    left = [r for r in releases if r not in pruned]
    assert len(left) == min(len(releases), max(keep_count, len(keep)))
    others_left = [r for r in left if r not in keep]
    if pruned and others_left:  # what is pruned is older than every other release kept
        stamp = lambda r: r.rpartition("-")[2]  # noqa: E731
        assert max(map(stamp, pruned)) <= min(map(stamp, others_left))


# -- what pip is asked for ------------------------------------------------------------------------


def test_index_source() -> None:
    cfg = Update(spec="hecate>=0.2,<0.3", index_url="https://pypi.example/simple", find_links=["/srv/wheels"])
    assert requirement(cfg) == "hecate>=0.2,<0.3"
    assert pinned(cfg, "0.2.4", None) == "hecate==0.2.4"
    assert pip_source_args(cfg) == ["--index-url", "https://pypi.example/simple", "--find-links", "/srv/wheels"]
    offline = Update(spec="hecate", no_index=True, find_links=["/srv/a", "/srv/b"])
    assert pip_source_args(offline) == ["--no-index", "--find-links", "/srv/a", "--find-links", "/srv/b"]


def test_git_source_is_pinned_to_the_resolved_commit() -> None:
    cfg = Update(git_url="https://git.example/titan/hecate.git", git_ref="v0.2.0")
    assert requirement(cfg) == "hecate @ git+https://git.example/titan/hecate.git@v0.2.0"
    assert pinned(cfg, "0.2.0", "3f9a2c1d0b4e5f60718293a4b5c6d7e8f9a0b1c2") == (
        "hecate @ git+https://git.example/titan/hecate.git@3f9a2c1d0b4e5f60718293a4b5c6d7e8f9a0b1c2")
    assert pip_source_args(cfg) == []


def test_no_source_is_disabled() -> None:
    assert not Update().enabled
    with pytest.raises(ValueError, match="no update source"):
        requirement(Update())


# -- the decision -----------------------------------------------------------------------------------

CUR = Installed(rid("0.1.0", 0), "0.1.0")
GIT = "3f9a2c1d0b4e5f60718293a4b5c6d7e8f9a0b1c2"


@pytest.mark.parametrize(("current", "candidate", "rejected", "action"), [
    (CUR, Candidate("0.1.0"), {}, Action.up_to_date),
    (CUR, Candidate("0.1.1"), {}, Action.update),
    (CUR, Candidate("0.0.9"), {}, Action.update),  # the spec wants an older one: a roll-back by configuration
    (None, Candidate("0.1.0"), {}, Action.update),  # nothing installed under the prefix yet
    (CUR, Candidate("0.1.1"), {"0.1.1": "never ready"}, Action.rejected),
    (CUR, Candidate("0.1.0", GIT), {}, Action.update),  # same version, a commit the current release is not from
    (Installed(CUR.release, "0.1.0", GIT), Candidate("0.1.0", GIT), {}, Action.up_to_date),
    (CUR, Candidate("0.1.1", GIT), {"0.1.1": "x"}, Action.update),  # another commit of a rejected version
    (CUR, Candidate("0.1.1", GIT), {f"0.1.1@{GIT[:12]}": "x"}, Action.rejected),
])
def test_decide(current: Installed | None, candidate: Candidate, rejected: dict[str, str], action: Action) -> None:
    assert decide(current, candidate, rejected).action is action


def test_rejected_says_why_and_how_to_retry() -> None:
    reason = decide(CUR, Candidate("0.1.1"), {"0.1.1": "hecate.service failed on 0.1.1-x"}).reason
    assert "hecate.service failed on 0.1.1-x" in reason
    assert "not retried" in reason


@pytest.mark.parametrize(("holder", "bootstrap", "deferred"), [
    (None, "inactive", False), (None, "active", False), (None, "failed", False), (None, "unknown", False),
    ("pid 7: shutdown", "inactive", True), (None, "activating", True), (None, "deactivating", True),
])
def test_busy(holder: str | None, bootstrap: str, deferred: bool) -> None:
    why = busy(holder, bootstrap, "hecate-bootstrap.service")
    assert (why is not None) is deferred
    if holder:
        assert holder in str(why)


# -- what the tools say ---------------------------------------------------------------------------


def test_version_reported() -> None:
    assert version_reported("hecate, version 0.1.1\n") == "0.1.1"
    assert version_reported("Traceback ...\nImportError: x") is None


def test_parse_unit_status() -> None:
    status = parse_unit_status("MainPID=4242\nActiveState=active\nNRestarts=3\n")
    assert status == UnitStatus("active", 4242, 3)
    assert status.active
    assert parse_unit_status("") == UnitStatus("unknown")
    assert not parse_unit_status("ActiveState=activating\nMainPID=\n").active


@pytest.mark.parametrize(("samples", "why"), [
    ([UnitStatus("active", 10), UnitStatus("active", 10), UnitStatus("active", 10)], None),
    ([UnitStatus("active", 10), UnitStatus("activating", 0)], "it is activating"),
    ([UnitStatus("active", 10), UnitStatus("active", 11, 1)], "PID 10 -> 11"),
    ([UnitStatus("failed")], "it is failed"),
    ([], "no status"),
])
def test_settled(samples: list[UnitStatus], why: str | None) -> None:
    verdict = settled(samples)
    assert verdict is None if why is None else why in str(verdict)


# -- the restart and its settle time ----------------------------------------------------------------


class ScriptedServiceManager:
    """Test double: answers ``status`` from a script (the last answer repeats), fails the restarts it is told to,
    records the restarts and the time slept."""

    def __init__(self, statuses: list[UnitStatus], restart_error: str | None = None,
                 restart_errors: list[str | None] | None = None) -> None:
        self.statuses = statuses
        self.restart_errors = restart_errors if restart_errors is not None else [restart_error]
        self.restarts = 0
        self.slept = 0.0

    def status(self, unit: str) -> UnitStatus:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def restart(self, unit: str, timeout_s: float) -> str | None:
        self.restarts += 1
        return self.restart_errors.pop(0) if len(self.restart_errors) > 1 else self.restart_errors[0]

    def sleep(self, seconds: float) -> None:
        self.slept += seconds


def test_restart_that_stays_up_for_the_settle_time() -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10)])
    assert update_service._restart(manager, "hecate.service", 30, 2.0, manager.sleep) is None
    assert manager.restarts == 1
    assert manager.slept == pytest.approx(2.0)


def test_restart_whose_daemon_crashes_after_ready() -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10), UnitStatus("active", 10), UnitStatus("activating")])
    why = update_service._restart(manager, "hecate.service", 30, 5.0, manager.sleep)
    assert why is not None
    assert "activating" in why
    assert manager.slept < 5.0  # stops looking at the first bad sample


def test_restart_that_fails() -> None:
    manager = ScriptedServiceManager([UnitStatus("failed")], restart_error="Job failed: timeout")
    assert "Job failed: timeout" in str(update_service._restart(manager, "hecate.service", 30, 5.0, manager.sleep))
    assert manager.slept == 0


def test_systemctl_adapter_speaks_systemctl(tmp_path: Path) -> None:
    """The production service manager's argv and parsing, against a stand-in (never this host's systemctl)."""
    calls = tmp_path / "calls"
    stand_in = ['/bin/sh', '-c', f'echo "$*" >> {calls}; case "$1" in '
                'show) printf "MainPID=42\\nActiveState=active\\nNRestarts=1\\n";; '
                'restart) echo "Job for $3 failed." >&2; exit 1;; esac', "systemctl"]
    manager = Systemctl(stand_in)
    assert manager.status("hecate.service") == UnitStatus("active", 42, 1)
    assert manager.restart("hecate.service", 10) == "Job for hecate.service failed."
    assert calls.read_text().splitlines() == ["show -p ActiveState -p MainPID -p NRestarts -- hecate.service",
                                              "restart -- hecate.service"]
    assert Systemctl(["/nonexistent/systemctl"]).status("hecate.service") == UnitStatus("unknown")


# -- switch, restart, roll back (releases as plain directories, the real run lock) ------------------------

OLDER, OLD, NEW = rid("0.0.9", 0), rid("0.1.0", 1), rid("0.1.1", 2)


def installation(tmp_path: Path) -> tuple[HecateConfig, StateStore, Releases]:
    """A prefix where current -> OLD, previous -> OLDER, NEW built beside them (directories stand in for venvs)."""
    cfg = HecateConfig(state_dir=tmp_path / "state", update=Update(spec="hecate", prefix=tmp_path / "opt", settle_s=1))
    disk = Releases(cfg.update.prefix)
    for release in (OLDER, OLD, NEW):
        disk.path(release).mkdir(parents=True)
    disk.switch(CURRENT, OLD)
    disk.switch(PREVIOUS, OLDER)
    return cfg, StateStore(cfg.state_dir), disk


def switch(tmp_path: Path, manager: ScriptedServiceManager, old: str | None = OLD,
           hold_lock: bool = False) -> tuple[update_service.Outcome, Releases]:
    cfg, store, disk = installation(tmp_path)
    with contextlib.ExitStack() as stack:
        if hold_lock:
            stack.enter_context(store.run_lock("startup (test)"))
        outcome = update_service._switch_and_restart(cfg, manager, store, disk, old, NEW, Candidate("0.1.1"),
                                                     manager.sleep)
    return outcome, disk


def test_switch_onto_an_inactive_unit_does_not_restart(tmp_path: Path) -> None:
    manager = ScriptedServiceManager([UnitStatus("inactive")])
    outcome, disk = switch(tmp_path, manager)
    assert outcome.result is update_service.Result.updated
    assert "not restarted" in outcome.message
    assert manager.restarts == 0
    assert (disk.linked(CURRENT), disk.linked(PREVIOUS)) == (NEW, OLD)
    assert disk.all() == sorted([OLD, NEW])  # OLDER pruned
    assert os.readlink(disk.prefix / CURRENT) == f"releases/{NEW}"  # relative: the prefix can move


def test_a_run_that_took_the_lock_meanwhile_defers_the_switch(tmp_path: Path) -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10)])
    outcome, disk = switch(tmp_path, manager, hold_lock=True)
    assert outcome.result is update_service.Result.deferred
    assert "startup (test)" in outcome.message
    assert (disk.linked(CURRENT), disk.linked(PREVIOUS)) == (OLD, OLDER)
    assert NEW not in disk.all()
    assert manager.restarts == 0


def test_a_daemon_that_fails_on_the_new_release_is_rolled_back(tmp_path: Path) -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10)], restart_errors=["Job failed (timeout)", None])
    outcome, disk = switch(tmp_path, manager)
    assert outcome.result is update_service.Result.rolled_back
    assert "Job failed (timeout)" in outcome.message
    assert manager.restarts == 2
    assert (disk.linked(CURRENT), disk.linked(PREVIOUS)) == (OLD, OLDER)
    assert NEW not in disk.all()
    assert "Job failed (timeout)" in disk.rejected()["0.1.1"]


def test_a_roll_back_whose_restart_fails_too_says_so(tmp_path: Path) -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10)], restart_error="Job failed")
    outcome, disk = switch(tmp_path, manager)
    assert outcome.result is update_service.Result.roll_back_failed
    assert not outcome.result.ok
    assert disk.linked(CURRENT) == OLD


def test_a_first_release_that_fails_has_nothing_to_roll_back_to(tmp_path: Path) -> None:
    manager = ScriptedServiceManager([UnitStatus("active", 10)], restart_error="Job failed")
    outcome, disk = switch(tmp_path, manager, old=None)
    assert outcome.result is update_service.Result.failed
    assert "no earlier release" in outcome.message
    assert manager.restarts == 1
    assert disk.linked(CURRENT) == NEW  # left as it is: there is nothing else to run


# -- configuration ------------------------------------------------------------------------------------


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hecate.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path, {})
    return str(info.value)


@pytest.mark.parametrize(("text", "where", "why"), [
    ("update: {spec: 'hecate; curl x | sh'}", "update.spec", "not a requirement"),
    ("update: {spec: hecate, git_url: 'https://git.example/h.git'}", "update.git_url", "not both"),
    ("update: {spec: hecate, no_index: true}", "update.no_index", "needs find_links"),
    ("update: {spec: hecate, no_index: true, find_links: [/w], index_url: 'https://x/simple'}", "update.no_index",
     "contradict"),
    ("update: {spec: hecate, prefix: opt/hecate}", "update.prefix", "absolute"),
    ("update: {spec: hecate, keep_releases: 1}", "update.keep_releases", "greater than or equal to 2"),
    ("update: {spec: hecate, unit: hecate}", "update.unit", "not a systemd service unit name"),
    ("update: {git_url: 'git@github.com:x/y'}", "update.git_url", "ssh://git@host/path"),
    ("update: {git_url: 'https://git.example/h.git', git_ref: 'v1 --upgrade'}", "update.git_ref", "pattern"),
    ("update: {spec: hecate, ready_timout_s: 5}", "update.ready_timout_s", "ready_timeout_s"),
])
def test_bad_update_settings_name_the_field(tmp_path: Path, text: str, where: str, why: str) -> None:
    message = load_error(tmp_path, text)
    assert where in message
    assert why in message


def test_update_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "hecate.yaml"
    path.write_text("update:\n  spec: hecate>=0.2,<0.3\n  no_index: true\n  find_links: [/srv/wheels]\n")
    cfg = config.load(path, {"HECATE_UPDATE__KEEP_RELEASES": "3"}).update
    assert cfg.enabled
    assert cfg.keep_releases == 3
    assert (cfg.prefix, cfg.python, cfg.unit) == (Path("/opt/hecate"), Path("/usr/bin/python3"), "hecate.service")
