"""The whole lab, as Hecate will see it: config, UPS, SSH with strict host keys, API Ready flips,
and the emulated cluster's cold start after a full power-off (the Flux/Gitea bootstrap deadlock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from hecate.adapters import config
from hecate_lab import cluster_seed, kubeapi, nodes
from hecate_lab.cluster_seed import LabApi
from hecate_lab.cluster_sim import Delays
from hecate_lab.procs import alive, wait_for
from hecate_lab.testbed import MANIFEST, Lab, LabSpec, timeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def ssh_run(lab: Lab, node: nodes.LabNode, command: str) -> tuple[int, str]:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(lab.ssh_dir / "known_hosts"))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(node.address, port=node.port, username="root", key_filename=str(lab.ssh_dir / "id_ed25519"),
                timeout=5, banner_timeout=5, auth_timeout=5, allow_agent=False, look_for_keys=False)
    try:
        _, stdout, _ = ssh.exec_command(command, timeout=10)
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status(), out
    finally:
        ssh.close()


def ready(api: kclient.CoreV1Api, name: str) -> str:
    node = api.read_node(name)
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def test_generated_config_points_hecate_at_the_lab(lab: Lab) -> None:
    cfg = config.load(lab.config_path, {})
    assert [u.port for u in cfg.ups] == [u.port for u in lab.ups.values()]
    assert [(n.name, n.address, n.ssh_port) for n in cfg.cluster.nodes] == [
        (n.name, n.address, n.port) for n in lab.nodes
    ]
    assert cfg.state_dir == lab.state_dir
    assert cfg.metrics.socket == (lab.dir / "hecate.sock").absolute()  # never the host's /run/hecate
    assert cfg.ssh.known_hosts.read_text().count("ssh-ed25519") == 3


def test_ssh_command_changes_the_node_and_the_api_follows(lab: Lab) -> None:
    kconfig.load_kube_config(str(lab.kubeconfig))
    api = kclient.CoreV1Api()
    assert sorted(n.metadata.name for n in api.list_node().items) == ["titan-a1", "titan-a2", "titan-s1"]
    agent = lab.node("titan-a1")
    assert ready(api, agent.name) == "True"

    rc, out = ssh_run(lab, agent, "sudo systemctl stop k3s-agent")
    assert rc == 0
    assert nodes.read_state(agent.dir)["services"]["k3s-agent"] == "inactive"
    wait_for(lambda: ready(api, agent.name) == "False", 3, "titan-a1 NotReady")
    assert ready(api, "titan-a2") == "True"  # the others are untouched

    rc, out = ssh_run(lab, agent, "systemctl is-active k3s-agent")
    assert (rc, out.strip()) == (3, "inactive")
    ssh_run(lab, agent, "systemctl start k3s-agent")
    wait_for(lambda: ready(api, agent.name) == "True", 3, "titan-a1 Ready again")
    logged = [c["cmd"] for c in nodes.read_commands(agent.dir)]
    assert logged == [
        "sudo systemctl stop k3s-agent", "systemctl is-active k3s-agent", "systemctl start k3s-agent",
    ]


def test_lab_status_reports_every_part(lab: Lab) -> None:
    lab.ups["pyrphoros"].set(ups_status="OB DISCHRG", battery_runtime=240)
    info = Lab.load(lab.dir).status()
    assert info["ups"]["pyrphoros"]["ups.status"] == "OB DISCHRG"
    assert info["ups"]["pyrphoros"]["battery.runtime"] == "240"
    assert [n["sshd_alive"] for n in info["nodes"]] == [True, True, True]
    assert info["api"]["alive"] is True


def lab_pids(lab: Lab) -> list[int]:
    pids = [lab.kubeapi_pid] + [n.pid for n in lab.nodes]
    pids += [p for u in lab.ups.values() for p in (u.upsd_pid, u.driver_pid)]
    return [p for p in pids if p is not None]


def test_down_leaves_nothing(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", LabSpec(agents=1))
    pids, namespaces = lab_pids(lab), [n.netns for n in lab.nodes if n.netns]
    lab.down()
    lab.down()  # idempotent
    assert not [p for p in pids if alive(p)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [ns for ns in namespaces if ns in listed]
    assert not (lab.dir / MANIFEST).exists()


def test_a_killed_lab_does_not_break_the_next_up(tmp_path: Path) -> None:
    """`hecate lab up` in a process that is then SIGKILLed; the next up in the dir still works."""
    directory = tmp_path / "lab"
    argv = [sys.executable, "-m", "hecate", "lab", "up", "--dir", str(directory), "--agents", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    stale = Lab.load(directory)
    stale_pids = lab_pids(stale)
    assert all(alive(p) for p in stale_pids)  # detached: the lab outlived its CLI process
    try:
        lab = Lab.up(directory, LabSpec(agents=1))
    except BaseException:
        stale.down()
        raise
    try:
        assert not [p for p in stale_pids if alive(p)], "the stale lab's processes survived"
        rc, _ = ssh_run(lab, lab.node("titan-a1"), "true")
        assert rc == 0
    finally:
        lab.down()


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_nodes_have_their_own_network_namespace_when_root(lab: Lab) -> None:
    assert lab.netns
    node = lab.node("titan-s1")
    assert node.netns is not None
    addrs = subprocess.run(["ip", "-n", node.netns, "-4", "-o", "addr"], capture_output=True, text=True,
                           check=True).stdout
    assert f" {node.address}/24 " in addrs
    assert node.address.startswith(lab.subnet)
    host_addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f" {node.address}/" not in host_addrs  # the node's address lives only in its namespace


# -- the emulated cluster's cold start: the Flux/Gitea bootstrap deadlock --------------------


def api_call(lab: Lab, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return LabApi(kubeapi.api_url(lab.kubeconfig)).request(method, path, body)


def get(lab: Lab, path: str) -> Any:
    status, body = api_call(lab, "GET", path)
    assert status == 200, (path, status, body)
    return body


def condition_of(obj: Any) -> tuple[str, str, str]:
    cond = next(c for c in obj["status"]["conditions"] if c["type"] in ("Ready", "Available"))
    return cond["status"], cond.get("reason", ""), cond.get("message", "")


GITEA = "/apis/apps/v1/namespaces/gitea/deployments/gitea"
VALKEY = "/apis/apps/v1/namespaces/gitea/deployments/gitea-valkey"
GIT = "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/flux-system"
KS = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/flux-system"
VALKEY_HR = "/apis/helm.toolkit.fluxcd.io/v2/namespaces/gitea/helmreleases/gitea-valkey"
CLONE_ERROR = ("failed to checkout and determine revision: unable to clone "
               f"'{cluster_seed.GITEA_URL}': dial tcp gitea-http.gitea.svc.cluster.local:3000: "
               "connect: connection refused")


def deadlocked(lab: Lab) -> bool:
    """Gitea waits for valkey, Flux cannot clone from Gitea, the HelmRelease that renders valkey waits for Flux."""
    return (api_call(lab, "GET", VALKEY)[0] == 404
            and condition_of(get(lab, GITEA))[0] == "False"
            and condition_of(get(lab, GIT)) == ("False", "GitOperationFailed", CLONE_ERROR)
            and condition_of(get(lab, KS))[:2] == ("False", "ArtifactFailed")
            and condition_of(get(lab, VALKEY_HR))[:2] == ("False", "ArtifactFailed"))


def test_a_cold_start_after_a_full_power_off_deadlocks_flux_and_gitea(tmp_path: Path) -> None:
    delays = Delays(api=0.5, node=0.2, pod=0.2)
    lab = Lab.up(tmp_path / "lab", LabSpec(ups=(), servers=3, agents=2, delays=delays))
    try:
        seeded = cluster_seed.seed_workloads(lab.kubeconfig)
        assert condition_of(get(lab, GIT))[0] == "True"  # healthy: the seed waited for it
        assert seeded.lost_on_cold_start == ["gitea/deployment/gitea-valkey"]
        valkey_pods = get(lab, "/api/v1/namespaces/gitea/pods?labelSelector=app%3Dgitea-valkey")["items"]
        assert len(valkey_pods) == 1

        servers = [n for n in lab.nodes if n.role == "server"]
        for server in servers:  # through each node's sshd forced command, as Hecate's shutdown does
            assert ssh_run(lab, server, "systemctl stop k3s")[0] == 0
        all_down = "lab API down: 0 of 3 k3s servers running (quorum needs 2)"
        wait_for(lambda: api_call(lab, "GET", "/version")[1].get("message") == all_down, 3, "the API down")
        status, body = api_call(lab, "GET", GITEA)
        assert (status, body["reason"], body["message"]) == (503, "ServiceUnavailable", all_down)

        assert ssh_run(lab, servers[0], "systemctl start k3s")[0] == 0
        one_up = "lab API down: 1 of 3 k3s servers running (quorum needs 2)"  # no quorum yet: still down
        wait_for(lambda: api_call(lab, "GET", "/version")[1].get("message") == one_up, 3, "one server, no quorum")
        for server in servers[1:]:
            assert ssh_run(lab, server, "systemctl start k3s")[0] == 0
        wait_for(lambda: api_call(lab, "GET", "/version")[0] == 200, 5, "the API back")
        assert api_call(lab, "GET", VALKEY)[0] == 404  # the cold start lost it, before serving
        assert get(lab, "/api/v1/namespaces/gitea/pods?labelSelector=app%3Dgitea-valkey")["items"] == []
        wait_for(lambda: deadlocked(lab), 3, "the deadlock")
        gitea = get(lab, GITEA)
        assert gitea["status"]["readyReplicas"] == 0
        assert gitea["metadata"]["annotations"]["lab.hecate.io/depends-on"] == "gitea/deployment/gitea-valkey"
        for ref in seeded.flux_active:  # nothing is suspended: Flux simply cannot get out
            namespace, kind, name = ref.split("/")
            path = KS if kind == "kustomization" else f"/apis/helm.toolkit.fluxcd.io/v2/namespaces/{namespace}/" \
                f"helmreleases/{name}"
            assert not get(lab, path)["spec"].get("suspend")
        until = time.monotonic() + 3  # 15 simulator steps, 15 pod delays: it stays so
        while time.monotonic() < until:
            assert deadlocked(lab)
            time.sleep(0.25)

        # The way out: put back what the HelmRelease would render, by hand.
        [valkey] = json.loads(get(lab, VALKEY_HR)["metadata"]["annotations"]["lab.hecate.io/renders"])
        assert api_call(lab, "POST", "/apis/apps/v1/namespaces/gitea/deployments", valkey)[0] == 201
        wait_for(lambda: condition_of(get(lab, GITEA))[0] == "True", 3, "Gitea available")
        wait_for(lambda: condition_of(get(lab, GIT))[0] == "True", 2, "the GitRepository Ready")
        wait_for(lambda: condition_of(get(lab, KS))[0] == "True", 2, "the Kustomization Ready")
        request = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2025-06-15T15:00:00Z"}}}
        assert api_call(lab, "PATCH", VALKEY_HR, request)[0] == 200
        wait_for(lambda: get(lab, VALKEY_HR)["status"].get("lastHandledReconcileAt") == "2025-06-15T15:00:00Z", 2,
                 "the HelmRelease reconciled")
        assert condition_of(get(lab, VALKEY_HR))[:2] == ("True", "InstallSucceeded")

        rows = [(who, what) for _, who, what in timeline(lab)]
        assert ("kube-api", "lab API down: 1 of 3 k3s servers running (quorum needs 2)") in rows
        assert ("cold-start", "gitea/deployment/gitea-valkey: lost in the outage (annotated "
                "lab.hecate.io/lost-on-cold-start): deleted") in rows
        lost_with = next(what for who, what in rows if what.startswith("deleted with what it belongs to: "))
        assert "gitea/replicaset/gitea-valkey-" in lost_with
        assert "gitea/pod/gitea-valkey-" in lost_with
        assert ("kube-api", "lab API serving: 3 of 3 k3s servers running") in rows
        assert ("flux", f"flux-system/gitrepository/flux-system: Ready=False (GitOperationFailed): {CLONE_ERROR}") \
            in rows
        assert any(who == "titan-s1" and what.startswith("systemctl stop k3s") for who, what in rows)
        down = next(i for i, row in enumerate(rows) if row[1].startswith("lab API down"))
        lost = next(i for i, row in enumerate(rows) if row[0] == "cold-start")
        back = next(i for i, row in enumerate(rows) if i > down and row[1].startswith("lab API serving"))
        assert down < lost < back  # in time order: down, cold start, serving again
    finally:
        lab.down()
