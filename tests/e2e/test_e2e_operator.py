"""A real cluster: apply the CRD and the example PowerPolicy, run ``hecate daemon``, see the status.

Needs a Kubernetes cluster: ``KUBECONFIG`` pointing at one (any cluster where that
identity may create CRDs and PowerPolicies), or pytest-kind with Docker (it creates a kind
cluster). Without either the test is skipped, saying so -- the lab's emulated API covers
the same paths in tests/integration/test_operator.py. Also needs upsd (the lab UPS).

    KUBECONFIG=~/.kube/config pytest -m e2e tests/e2e
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hecate_lab.procs import free_port, wait_for
from hecate_lab.ups import LabUps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "hecate.io", "v1alpha1", "powerpolicies"


@pytest.fixture
def cluster_kubeconfig(request: pytest.FixtureRequest) -> Path:
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    if importlib.util.find_spec("pytest_kind") is not None and shutil.which("docker"):
        kind = request.getfixturevalue("kind_cluster")
        return Path(kind.kubeconfig_path)
    pytest.skip("no Kubernetes cluster: set KUBECONFIG to a cluster's kubeconfig, or install pytest-kind and "
                "Docker (this machine has neither; the emulated-API tests in tests/integration/test_operator.py "
                "cover the operator)")


@pytest.fixture
def api(cluster_kubeconfig: Path) -> Iterator[Any]:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(cluster_kubeconfig))
    crd = yaml.safe_load((ROOT / "crds" / "powerpolicy.yaml").read_text())
    ext = client.ApiextensionsV1Api(api_client)
    created = False
    try:
        ext.create_custom_resource_definition(crd)
        created = True
    except client.ApiException as err:
        if err.status != 409:
            raise
    wait_for(lambda: _established(ext, crd["metadata"]["name"]), 60, "the CRD to be established")
    try:
        yield api_client
    finally:
        if created:
            ext.delete_custom_resource_definition(crd["metadata"]["name"])
        api_client.close()


def _established(ext: Any, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def test_the_daemon_reports_conditions_on_a_real_cluster(tmp_path: Path, api: Any, cluster_kubeconfig: Path,
                                                         ups: LabUps) -> None:
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    example = yaml.safe_load((ROOT / "manifests" / "powerpolicy-example.yaml").read_text())
    name = f"hecate-e2e-{secrets.token_hex(3)}"
    example["metadata"] = {"name": name}
    objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, example)
    port = free_port()
    config = tmp_path / "hecate.yaml"
    config.write_text(yaml.safe_dump({
        "host_name": "e2e", "state_dir": str(tmp_path / "state"),
        "cluster": {"kubeconfig": str(cluster_kubeconfig)},
        "ups": [{"name": ups.name, "host": ups.host, "port": ups.port}],
        "metrics": {"listen": f"127.0.0.1:{port}", "socket": str(tmp_path / "hecate.sock")},
        "policy": {"name": name},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "hecate", "daemon", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def conditions() -> dict[str, str]:
        obj = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}

    try:
        wait_for(lambda: conditions().get("Ready") == "True", 120, "Ready=True")
        assert conditions() == {"Ready": "True", "Stalled": "False", "Cached": "True", "Armed": "False",
                                "ShutdownInProgress": "False"}
        status = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)["status"]
        assert status["source"] == "cluster"
        assert status["phase"] == "Active"
        assert status["thresholdSeconds"] > 0
        cache = yaml.safe_load((tmp_path / "state" / "policy-cache.yaml").read_text())
        assert cache["spec"] == example["spec"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        objects.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
