"""The lab's Kubernetes API: kmock's emulator over real HTTP, plus a simulator of a k3s + Flux cluster.

No kube-apiserver runs on the development machines, so the lab serves an emulated API on
loopback (its own process: ``python -m hecate_lab.kubeapi``) whose Nodes follow the lab
nodes' k3s and whose simulator plays the cluster's controllers. What it serves and the
simulator's rules, as a contract: docs/lab-kubeapi.md. The parts, by file:

- :mod:`~hecate_lab.kubeapi.process`: start and stop the process from Python, run the real kubectl against it
  (re-exported here);
- :mod:`~hecate_lab.kubeapi.server`: the process itself (serve, the command line);
- :mod:`~hecate_lab.kubeapi.manifest`: the nodes, k3s version and delays it is started with;
- :mod:`~hecate_lab.kubeapi.emulator`: the API server, kmock's emulator with the gaps filled;
- :mod:`~hecate_lab.kubeapi.selectors`, :mod:`~hecate_lab.kubeapi.crds`, :mod:`~hecate_lab.kubeapi.tables`,
  :mod:`~hecate_lab.kubeapi.eviction`, :mod:`~hecate_lab.kubeapi.node_objects`: what it adds;
- :mod:`~hecate_lab.kubeapi.simulator`: the loop applying :mod:`hecate_lab.cluster_sim`'s rules;
- :mod:`~hecate_lab.kubeapi.events`: the simulator's timeline file;
- :mod:`~hecate_lab.kubeapi.resources`, :mod:`~hecate_lab.kubeapi.errors`: shared names.
"""

from hecate_lab.kubeapi.errors import LabKubeApiError
from hecate_lab.kubeapi.events import EVENTS_FILE, read_events
from hecate_lab.kubeapi.process import api_url, kubectl, start_kubeapi, stop_kubeapi, write_kubeconfig

__all__ = ["EVENTS_FILE", "LabKubeApiError", "api_url", "kubectl", "read_events", "start_kubeapi", "stop_kubeapi",
           "write_kubeconfig"]
