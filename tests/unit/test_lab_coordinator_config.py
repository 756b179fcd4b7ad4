"""The configuration the lab writes for Hecate installed in its coordinator machine is one Hecate accepts,
with the machine's own paths, NUT and power-off; a coordinator machine needs machine nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hecate.domain.config import HecateConfig
from hecate_lab.nodes import LabNode
from hecate_lab.testbed import COORDINATOR_NAME, Lab, LabSpec
from hecate_lab.ups import LabUps


def test_a_coordinator_machine_needs_machine_nodes() -> None:
    with pytest.raises(ValueError, match="needs machines=True"):
        LabSpec(coordinator=True)
    assert LabSpec(machines=True, coordinator=True).coordinator


def test_the_coordinator_config_is_valid_and_names_what_the_machine_sees(tmp_path: Path) -> None:
    nodes = [LabNode(name="titan-s1", role="server", address="10.77.9.11", port=22, dir=tmp_path / "s1",
                     machine=True)]
    coordinator = LabNode(name=COORDINATOR_NAME, role="coordinator", address="10.77.9.10", port=22,
                          dir=tmp_path / COORDINATOR_NAME, machine=True)
    lab = Lab(dir=tmp_path, id="ab12", netns=True, subnet="10.77.9", nodes=nodes, coordinator=coordinator,
              ups={"pyrphoros": LabUps(name="pyrphoros", dir=tmp_path / "ups" / "pyrphoros", port=40000)})
    config = HecateConfig.model_validate(lab.coordinator_config())
    assert config.host_name == COORDINATOR_NAME
    assert str(config.state_dir) == "/var/lib/hecate"
    assert str(config.cluster.kubeconfig) == "/etc/rancher/k3s/k3s.yaml"
    assert [n.name for n in config.cluster.nodes] == ["titan-s1"]
    assert (config.ssh.user, config.ssh.sudo, str(config.ssh.key_file)) == ("hecate", True, "/etc/hecate/id_ed25519")
    assert [(u.name, u.host, u.port) for u in config.ups] == [("pyrphoros", "127.0.0.1", 3493)]
    assert config.shutdown.execute is True
    assert config.shutdown.local_poweroff_command == ["systemctl", "poweroff"]
    assert (config.metrics.listen, str(config.metrics.socket)) == ("127.0.0.1:9560", "/run/hecate/hecate.sock")
    install = lab.coordinator_install_argv()
    assert install[install.index("--nut-port") + 1] == "/srv/hecate-ups/pyrphoros/pyrphoros.dev"
    assert install[install.index("--nut-ups-name") + 1] == "pyrphoros"
    assert lab.hosts == [*nodes, coordinator]
