"""The lab cluster's rules: what a k3s + Flux cluster would do, as pure functions.

:mod:`hecate_lab.kubeapi.simulator` applies these rules in a loop to the objects in its emulated
API (it reads the objects, calls these functions, and writes only what changed); these
modules do no I/O and keep no state, so every rule is unit tested on its own. Time is
a float (seconds since the epoch); a rule that waits ("Ready only ``delay`` seconds after
its inputs became true") takes the moment its inputs became true (``since``, tracked by
the caller with :func:`~hecate_lab.cluster_sim.timing.held_since`) and the current time.

The rules, in the order the simulator applies them (the contract is in
docs/lab-kubeapi.md), by file:

- :mod:`~hecate_lab.cluster_sim.control_plane`: **API availability** (``api_state``): with
  server nodes, the API serves only while a majority of them run k3s, and only ``delays.api``
  seconds after that became true; **cold start** (``cold_start_victims``): what an outage
  loses -- objects annotated ``lab.hecate.io/lost-on-cold-start: "true"`` and what they own
  or select; **nodes** (``node_ready``, ``kubelet_posts``, ``lease_due``, ``node_lost``): Ready
  ``delays.node`` seconds after k3s started, written only by a kubelet while the API serves;
  a silent kubelet's Node keeps its last status for ``delays.grace`` seconds (the node
  controller's grace period), so a cold start shows the statuses from before the outage.
- :mod:`~hecate_lab.cluster_sim.workloads`: **workloads** (``plan_pods``, ``pod_status``,
  ``workload_status``, ``available``, ``blockers``): pods created, placed, deleted, Ready;
  the workload's status counts them.
- :mod:`~hecate_lab.cluster_sim.flux`: **Flux** (``gitrepository_status``, ``flux_status``,
  ``renders_to_create``): a GitRepository is Ready when the workload serving it is available
  and it has the branch; Kustomizations and HelmReleases follow their source, unless
  suspended; a reconciling object re-creates what it renders.

What they share: :mod:`~hecate_lab.cluster_sim.objects` (the annotations, reading objects,
conditions, selectors, merge patches) and :mod:`~hecate_lab.cluster_sim.timing` (the delays).
The package offers every rule's public names, so the simulator and the tests read
``sim.plan_pods`` whichever file holds it.
"""

from hecate.domain.kubeobjects import WORKLOAD_KINDS
from hecate_lab.cluster_sim.control_plane import (
    ApiState,
    api_state,
    cold_start_victims,
    has_quorum,
    kubelet_posts,
    lease_due,
    lost_since,
    node_fits,
    node_lost,
    node_ready,
    schedulable,
)
from hecate_lab.cluster_sim.flux import (
    Source,
    flux_status,
    gitrepository_status,
    rendered,
    renders_to_create,
    revision_of,
    served_by,
    source_ref,
    source_view,
)
from hecate_lab.cluster_sim.objects import (
    BRANCHES,
    DEPENDS_ON,
    KIND_BY_LOWER,
    LOST_ON_COLD_START,
    RENDERS,
    REQUESTED_AT,
    SERVED_BY,
    STUCK,
    ObjRef,
    annotations_of,
    condition,
    condition_true,
    is_true,
    labels_of,
    make_condition,
    match_selector_object,
    merge_patch,
    meta_of,
    ref_of,
    ref_text,
    spec_of,
    status_changed,
    status_of,
    terminating,
)
from hecate_lab.cluster_sim.timing import (
    Delays,
    due_in,
    elapsed,
    format_time,
    held_since,
)
from hecate_lab.cluster_sim.workloads import (
    PodPlan,
    PodVerdict,
    available,
    blockers,
    dependencies,
    dependency_order,
    owned_by,
    owner_reference,
    place,
    plan_pods,
    pod_manifest,
    pod_status,
    replicas,
    replicaset_for,
    replicaset_name,
    short_hash,
    workload_status,
)

__all__ = [
    "BRANCHES",
    "DEPENDS_ON",
    "KIND_BY_LOWER",
    "LOST_ON_COLD_START",
    "RENDERS",
    "REQUESTED_AT",
    "SERVED_BY",
    "STUCK",
    "WORKLOAD_KINDS",
    "ApiState",
    "Delays",
    "ObjRef",
    "PodPlan",
    "PodVerdict",
    "Source",
    "annotations_of",
    "api_state",
    "available",
    "blockers",
    "cold_start_victims",
    "condition",
    "condition_true",
    "dependencies",
    "dependency_order",
    "due_in",
    "elapsed",
    "flux_status",
    "format_time",
    "gitrepository_status",
    "has_quorum",
    "held_since",
    "is_true",
    "kubelet_posts",
    "labels_of",
    "lease_due",
    "lost_since",
    "make_condition",
    "match_selector_object",
    "merge_patch",
    "meta_of",
    "node_fits",
    "node_lost",
    "node_ready",
    "owned_by",
    "owner_reference",
    "place",
    "plan_pods",
    "pod_manifest",
    "pod_status",
    "ref_of",
    "ref_text",
    "rendered",
    "renders_to_create",
    "replicas",
    "replicaset_for",
    "replicaset_name",
    "revision_of",
    "schedulable",
    "served_by",
    "short_hash",
    "source_ref",
    "source_view",
    "spec_of",
    "status_changed",
    "status_of",
    "terminating",
    "workload_status",
]
