"""Where generation actors go: actors per node and their lanes, GPU and CPU requests against what the cluster
has, and waiting for an autoscaler that can add nodes. Ray's view of the cluster is scripted; the logic is real.
"""

from __future__ import annotations

import json

import pytest

from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import placement


@pytest.mark.parametrize("cpus, lanes", [(1, [1]), (2, [2]), (8, [8]), (9, [5, 4]), (12, [6, 6]), (16, [8, 8]),
                                         (17, [6, 6, 5])])
def test_a_node_becomes_as_few_actors_as_hold_8_lanes_each(cpus, lanes):
    assert placement.split_lanes(cpus) == lanes


@pytest.fixture
def fake_cluster(monkeypatch):
    """The engine's view of a cluster, scripted: GPU counts over time, and the autoscaler requests it gets."""
    import ray.autoscaler.sdk

    state = {"gpus": [0], "cpus": [16], "requests": []}

    def cluster_resources():
        gpus = state["gpus"].pop(0) if len(state["gpus"]) > 1 else state["gpus"][0]
        cpus = state["cpus"].pop(0) if len(state["cpus"]) > 1 else state["cpus"][0]
        return {"CPU": float(cpus), "GPU": float(gpus)}

    def nodes():
        return [{"NodeID": "n0", "Alive": True, "Resources": {"CPU": float(state["cpus"][0])}}]

    monkeypatch.setattr(placement.ray, "cluster_resources", cluster_resources)
    monkeypatch.setattr(placement.ray, "nodes", nodes)
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: state["requests"].append(bundles))
    return state


def test_gpus_beyond_the_cluster_wait_for_its_autoscaler(fake_cluster, monkeypatch, capsys):
    monkeypatch.setattr(placement, "autoscaler_can_add_nodes", lambda: True)
    fake_cluster["gpus"] = [0, 0, 4]  # two GPU nodes arrive
    shapes = placement.actor_shapes(RunConfig(count=10, gpus=4))
    assert len(shapes) == 4 and {s.options["num_gpus"] for s in shapes} == {1}
    assert fake_cluster["requests"] == [[{"GPU": 1}] * 4, []]  # asked, then cleared: the actors hold the nodes
    err = capsys.readouterr().err
    assert "--gpus 4: the cluster has 0 GPU(s); asked its autoscaler for more, waiting up to" in err
    assert "--gpus 4: 4 GPU(s) after" in err

    monkeypatch.setattr(placement, "AUTOSCALE_TIMEOUT_S", 0.0)
    fake_cluster.update(gpus=[2], requests=[])
    brought_two = r"--gpus 8: the autoscaler brought only 2 GPU\(s\) in 0 s; see `ray status`"
    with pytest.raises(SynthgenError, match=brought_two):
        placement.actor_shapes(RunConfig(count=10, gpus=8))
    assert fake_cluster["requests"] == [[{"GPU": 1}] * 8, []]


def test_workers_beyond_the_cpus_wait_for_an_autoscaler_or_fail_fast(fake_cluster, monkeypatch, capsys):
    monkeypatch.setattr(placement, "autoscaler_can_add_nodes", lambda: True)
    fake_cluster["cpus"] = [2, 2, 8]  # an 8-CPU node arrives
    shapes = placement.actor_shapes(RunConfig(count=10, gpus=0, workers=4))
    assert [(s.options["num_cpus"], s.lanes) for s in shapes] == [(2, 2)] * 4
    assert fake_cluster["requests"] == [[{"CPU": 1}] * 4, []]
    assert "--workers 4: 8 CPU(s) after" in capsys.readouterr().err
    monkeypatch.setattr(placement, "autoscaler_can_add_nodes", lambda: False)
    fake_cluster.update(cpus=[2], requests=[])
    with pytest.raises(SynthgenError, match=r"--workers 3: the cluster has 0 GPU\(s\) and 2 CPU\(s\)"):
        placement.actor_shapes(RunConfig(count=10, gpus=0, workers=3))
    assert fake_cluster["requests"] == []


def test_gpus_beyond_a_fixed_cluster_fail_fast(fake_cluster, monkeypatch):
    monkeypatch.setattr(placement, "autoscaler_can_add_nodes", lambda: False)
    with pytest.raises(SynthgenError, match=r"--gpus 2: the cluster has 0 GPU\(s\) and 16 CPU\(s\)"):
        placement.actor_shapes(RunConfig(count=10, gpus=2))
    assert fake_cluster["requests"] == []


@pytest.mark.parametrize("kv, expected", [
    ({}, False),  # no monitor status yet
    ({"__autoscaling_status": {"1a": "node_1a"}}, False),  # `ray start`'s read-only monitor
    ({"__autoscaling_status": {"1a": "node_1a", "2b": "node_2b"}}, False),
    ({"__autoscaling_status": {"1a": "ray.head.default"}}, True),  # `ray up`: node types from cluster.yaml
    ({"__autoscaler_v2_enabled": b"1"}, True),  # autoscaler v2 (KubeRay)
    ({"__autoscaling_status": b"not json"}, False),
])
def test_autoscaler_detection(monkeypatch, kv, expected):
    import ray.experimental.internal_kv

    def kv_get(key, namespace=None):
        value = kv.get(key)
        if isinstance(value, dict):
            return json.dumps({"autoscaler_report": {"node_type_mapping": value}}).encode()
        return value

    monkeypatch.setattr(ray.experimental.internal_kv, "_internal_kv_get", kv_get)
    assert placement.autoscaler_can_add_nodes() is expected
