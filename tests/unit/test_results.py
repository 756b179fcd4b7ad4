"""Typed step results: their lines, their part of the run record's changes, their journal form."""

from __future__ import annotations

import json

from hecate.domain import results
from hecate.domain.plan import Action
from hecate.domain.results import (
    BranchChange,
    Done,
    Drained,
    FluxBootstrapped,
    FluxResumed,
    FluxSuspended,
    Restored,
    ScaledDown,
    ServiceStarted,
    Uncordoned,
    Woken,
    WorkloadRecovery,
)
from hecate.domain.runs import RunKind


def test_shutdown_changes_keep_the_record_shape_and_count_failed_steps() -> None:
    changes = results.changes(RunKind.shutdown, [
        ("flux", FluxSuspended(("Kustomization/flux-system/apps",), ("Kustomization/flux-system/experiments",))),
        ("apps", ScaledDown({"Deployment/apps/web": 2})),
        ("a1", Drained(cordoned=True, report={"blocked": ["apps/web-1"], "timed_out": True})),
        ("a2", Drained(cordoned=False)),
        ("a3", Drained(cordoned=True)),  # the drain failed after the cordon: startup must still uncordon
        ("s1", Done("no reply after the command was sent")),
    ])
    assert json.dumps(changes) == json.dumps({
        "flux_suspended": ["Kustomization/flux-system/apps"],
        "flux_already_suspended": ["Kustomization/flux-system/experiments"],
        "scaled": {"Deployment/apps/web": 2}, "cordoned": ["a1", "a3"]})


def test_startup_changes_keep_the_record_shape() -> None:
    quiet = results.changes(RunKind.startup, [("s1", ServiceStarted("k3s", started=False))])
    assert json.dumps(quiet) == json.dumps({
        "started": [], "woken": [], "uncordoned": [], "restarted_pods": [], "created": [], "flux_resumed": [],
        "cleared_marks": [], "restored": {}, "deadlock": False})
    busy = results.changes(RunKind.startup, [
        ("a1", Woken(True, "Wake-on-LAN to aa:bb:cc:dd:ee:ff")), ("s1", ServiceStarted("k3s", started=True)),
        ("nodes", Uncordoned(("a1",))), ("gitea/deployment/gitea", WorkloadRecovery(("gitea/gitea-0",), ("a/b",))),
        ("flux", FluxResumed(("Kustomization/flux-system/apps",), ("Node/a2",), BranchChange("feature", "main"))),
        ("flux-system/flux-system", FluxBootstrapped(deadlock=True, fallback=True, applied=("c/d",))),
        ("apps", Restored({"Deployment/apps/web": 2})),
    ])
    assert busy == {
        "started": ["s1"], "woken": ["a1"], "uncordoned": ["a1"], "restarted_pods": ["gitea/gitea-0"],
        "created": ["a/b", "c/d"], "flux_resumed": ["Kustomization/flux-system/apps"], "cleared_marks": ["Node/a2"],
        "restored": {"Deployment/apps/web": 2}, "deadlock": True, "branch": {"from": "feature", "to": "main"}}


def test_each_result_summarises_itself() -> None:
    assert FluxSuspended(("a", "b"), ("c",)).detail == "suspended 2, already suspended 1"
    assert ScaledDown({"a": 1, "b": 2}).detail == "2 workloads to 0"
    assert Drained(True, {"blocked": ["x/y", "x/z"], "timed_out": True}).detail == \
        "drain timeout: 2 pods left (PodDisruptionBudget)"
    assert Drained(True, {"blocked": [], "timed_out": False}).detail == ""
    assert ServiceStarted("k3s-agent", started=False).detail == "k3s-agent already running"
    assert WorkloadRecovery(("p",), ("d",), waited_s=3.25).detail == \
        "available after 3.2 s; restarted p; created from the cache: d"
    assert FluxResumed(("a",), branch=BranchChange("main", "main")).detail == "resumed 1"
    assert FluxResumed((), ("n",), BranchChange(None, "main")).detail == \
        "resumed 0, GitRepository branch None -> main, cleared Hecate's stale marks on n"
    assert FluxBootstrapped(fallback=True, ready_after_s=12.04).detail == \
        "Flux Ready after 12.0 s; deadlock broken: created nothing"
    assert Restored({"b": 2, "a": 1}).detail == "a -> 1, b -> 2"


def test_results_read_back_what_the_journal_kept_including_earlier_versions() -> None:
    # The data of a step-end event as earlier versions wrote it (their dict payload, "detail" taken out).
    earlier = {
        Action.drain: {"node": "a1", "evicted": ["apps/web-1"], "blocked": [], "skipped": {}, "failed": {},
                       "terminating": [], "timed_out": False, "cordoned": True},
        Action.flux_suspend: {"suspended": ["Kustomization/flux-system/apps"], "already_suspended": []},
        Action.scale_down: {"scaled": {"Deployment/apps/web": 2}},
        Action.flux_resume: {"resumed": [], "cleared_marks": [], "branch": {"from": None, "to": "main"}},
        Action.flux_bootstrap: {"deadlock": True, "fallback": True, "applied": ["a/b"], "apply_failed": {}},
        Action.start_service: {"started": True},
        Action.stop_service: {},
    }
    read = {action: results.from_data(action, data) for action, data in earlier.items()}
    assert read[Action.drain] == Drained(True, {k: v for k, v in earlier[Action.drain].items() if k != "cordoned"})
    assert read[Action.flux_suspend] == FluxSuspended(("Kustomization/flux-system/apps",))
    assert read[Action.flux_resume] == FluxResumed(branch=BranchChange(None, "main"))
    assert read[Action.start_service] == ServiceStarted(started=True)
    assert read[Action.stop_service] == Done()
    for action, data in earlier.items():
        assert read[action].to_data() == data, action
