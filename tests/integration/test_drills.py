"""The drill machinery on the lab: dry-run touches nothing, drills pass, refusals break nothing.

``make drills`` runs all three drills against a fresh lab; this test runs two of them
(the deadlock and the reconciliation one) through the same code, plus the refusal.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from hecate.adapters.kube import Kube
from hecate.domain.config import HecateConfig
from hecate.services import drills
from hecate.services.progress import JsonLines
from hecate_lab.cluster_seed import seed_workloads
from hecate_lab.testbed import Lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_drills_on_the_lab(bare_lab: Lab) -> None:
    lab = bare_lab  # no UPS: drills do not need one (the startup then has no preflight)
    seed_workloads(lab.kubeconfig)
    data = lab.hecate_config()
    config = HecateConfig.model_validate(data)
    kube = Kube(lab.kubeconfig, 2.0)
    try:
        # Dry-run: names what it would break, touches nothing, records nothing.
        dry = run(drills.run(config, "flux-gitea-deadlock", JsonLines(), execute=False))
        assert not dry.executed
        assert "delete gitea/deployment/gitea-valkey" in dry.breaks
        assert run(kube.get_object("gitea/deployment/gitea-valkey")) is not None
        assert not (lab.state_dir / "runs.json").exists()

        for name in ("flux-gitea-deadlock", "reconciliation-resume"):
            result = run(drills.run(config, name, JsonLines(), execute=True))
            assert result.passed, [(c.name, c.detail) for c in result.checks if not c.ok]
            assert result.checks
            assert all(c.ok for c in result.checks)
            assert result.startup is not None
            assert result.restored == []
        runs = json.loads((lab.state_dir / "runs.json").read_text())
        assert [r["kind"] for r in runs] == ["startup", "drill", "startup", "drill"]
        assert all(r["result"] == "success" for r in runs)

        # A drill whose recovery fails puts back what it broke: here the startup may not use the fallback.
        crippled = {**data, "flux": {**data["flux"], "bootstrap_fallback": False, "ready_timeout_s": 2},
                    "startup": {**data["startup"], "verify_timeout_s": 1}}
        failed = run(drills.run(HecateConfig.model_validate(crippled), "flux-gitea-deadlock", JsonLines(),
                                execute=True))
        assert not failed.passed
        assert not next(c for c in failed.checks if c.name == "startup detected and broke the deadlock").ok or \
            not next(c for c in failed.checks if c.name.startswith("GitRepository")).ok
        assert "created gitea/deployment/gitea-valkey" in failed.restored
        assert run(kube.get_object("gitea/deployment/gitea-valkey")) is not None
        assert json.loads((lab.state_dir / "runs.json").read_text())[-1]["result"] == "failed"
        deadline = time.monotonic() + 20
        while not run(kube.git_repository("flux-system", "flux-system"))["ready"]:  # the restore heals it
            assert time.monotonic() < deadline, "the cluster did not come back after the drill's restore"
            time.sleep(0.2)

        # A drill that would delete what the cache does not hold refuses before breaking anything.
        data["flux"] = {**data["flux"], "bootstrap_objects": ["gitea/deployment/absent"]}
        with pytest.raises(drills.DrillRefused, match="lacks gitea/deployment/absent"):
            run(drills.run(HecateConfig.model_validate(data), "flux-gitea-deadlock", JsonLines(), execute=True))
        status = run(kube.flux_status())
        assert not any(s["ours"] for s in status.values())  # Flux was not suspended
    finally:
        kube.close()
