"""The pure decision of which policy is in force: cluster > cache > hecate.yaml, and why."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hecate.domain.config import HecateConfig
from hecate.domain.policy_source import (
    CachedPolicy,
    ClusterObject,
    Effective,
    Facts,
    OperatorLink,
    Source,
    decide,
    effective,
    view,
)

T0 = datetime(2026, 11, 27, 3, 50, tzinfo=UTC)
BASELINE = HecateConfig.model_validate({"policy": {"name": "titan"}, "ups": [{"name": "pyr"}]})


def _valid(generation: int, factor: float) -> Effective:
    spec: dict[str, Any] = {"trigger": {"safety_factor": factor}}
    return Effective(CachedPolicy("titan", "u1", str(generation), generation, spec, T0), effective(BASELINE, spec))


CLUSTER, CACHE = _valid(3, 2.0), _valid(2, 1.5)
START = Facts.at_start(BASELINE)


@pytest.mark.parametrize(("facts", "source", "detail"), [
    (START, Source.host, "not connected to the cluster yet; no valid PowerPolicy cached: hecate.yaml in force"),
    (replace(START, cached=CACHE), Source.cache, "not connected to the cluster yet; cache in force"),
    (replace(START, cached=CACHE, accepted=CLUSTER, cluster=ClusterObject.valid, operator=OperatorLink.connected),
     Source.cluster, "PowerPolicy titan generation 3 from the cluster"),
    (replace(START, cached=CACHE, accepted=CLUSTER, cluster=ClusterObject.valid, operator=OperatorLink.unavailable,
             operator_detail="connection refused"), Source.cache, "cluster not reachable (connection refused); "
     "cache in force"),
    (replace(START, cached=CACHE, cluster=ClusterObject.deleted, operator=OperatorLink.connected), Source.cache,
     "cluster object deleted; cache in force"),
    (replace(START, cluster=ClusterObject.missing, operator=OperatorLink.connected), Source.host,
     "PowerPolicy titan not found in the cluster; no valid PowerPolicy cached: hecate.yaml in force"),
    (replace(START, cached=CACHE, cluster=ClusterObject.invalid, observed_generation=4, rejected="spec.ups: bad",
             operator=OperatorLink.connected), Source.cache,
     "cluster object generation 4 rejected (spec.ups: bad); cache in force"),
    (Facts.at_start(BASELINE.model_copy(update={"policy": BASELINE.policy.model_copy(update={"name": None})})),
     Source.host, "policy.name is not set: hecate.yaml alone"),
])
def test_cluster_over_cache_over_hecate_yaml(facts: Facts, source: Source, detail: str) -> None:
    decided, in_force, why = decide(facts)
    assert (decided, why) == (source, detail)
    expected = {Source.cluster: CLUSTER, Source.cache: CACHE, Source.host: None}[source]
    assert in_force == expected


def test_the_view_carries_the_config_in_force_and_keeps_since_while_the_source_stays() -> None:
    first = view(replace(START, cached=CACHE), T0)
    assert (first.source, first.since, first.config.trigger.safety_factor) == (Source.cache, T0, 1.5)
    assert first.policy == first.cached == CACHE.policy
    later = view(replace(START, cached=CACHE, operator=OperatorLink.unavailable, operator_detail="x"),
                 T0 + timedelta(minutes=1), first)
    assert later.since == T0  # still the cache
    cluster = view(replace(START, cached=CACHE, accepted=CLUSTER, cluster=ClusterObject.valid,
                           operator=OperatorLink.connected), T0 + timedelta(minutes=2), later)
    assert (cluster.source, cluster.since, cluster.config.trigger.safety_factor) == (
        Source.cluster, T0 + timedelta(minutes=2), 2.0)
    assert cluster.as_dict(T0 + timedelta(minutes=3))["age_s"] == 180.0
