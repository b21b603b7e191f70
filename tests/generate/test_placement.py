"""Where generation actors go: actors per node and their lanes, GPU and CPU requests against what the cluster
has, and waiting for an autoscaler that can add nodes. Ray's view of the cluster is scripted; the logic is real:
node lists as ``ray.nodes()`` returns them are fed to the pure :func:`plan_actors` (the fleets of cluster.yaml and
others a user may run).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import placement
from synthgen.generate.engine.placement import MAX_LANES_PER_ACTOR, ActorShape, plan_actors


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

    def nodes():  # one node holding what the cluster has by now (GPU actors are pinned to a real node id)
        return [{"NodeID": "01" * 28, "Alive": True,
                 "Resources": {"CPU": float(state["cpus"][0]), "GPU": float(state["gpus"][0])}}]

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


G5_12XL, G5_XL = (48, 4), (4, 1)  # (vCPUs, GPUs) of the two GPU node types cluster.yaml offers


def fleet(*kinds: tuple[int, int, int]) -> list[dict]:
    """Alive nodes as ``ray.nodes()`` lists them, from (how many, vCPUs, GPUs); node k's id is node_id(k)."""
    nodes = []
    for count, cpus, gpus in kinds:
        for _ in range(count):
            ip = f"10.0.0.{len(nodes) + 1}"
            resources = {"CPU": float(cpus), "memory": 16e9, "object_store_memory": 4e9, f"node:{ip}": 1.0}
            if gpus:  # Ray leaves GPU out of a node without any
                resources.update({"GPU": float(gpus), "accelerator_type:A10G": 1.0})
            nodes.append({"NodeID": node_id(len(nodes)), "Alive": True, "NodeManagerAddress": ip,
                          "Resources": resources})
    return nodes


def node_id(k: int) -> str:
    return f"{k + 1:02x}" * 28  # Ray's node ids are 28 bytes of hex


def name(node: str) -> str:
    return f"n{int(node[:2], 16) - 1}"


def per_node(shapes: list[ActorShape]) -> dict[str, list[ActorShape]]:
    placed = defaultdict(list)
    for shape in shapes:
        placed[name(shape.options["scheduling_strategy"].node_id)].append(shape)
    return dict(placed)


def assert_fits(nodes: list[dict], shapes: list[ActorShape]) -> dict[str, list[tuple[int, float]]]:
    """Every actor pinned to a node whose CPUs hold its lanes, the node's CPUs and GPUs hold what its actors
    reserve; returns node id -> [(lanes, reserved CPUs)] of its actors."""
    resources = {name(n["NodeID"]): n["Resources"] for n in nodes}
    placed = per_node(shapes)
    for node, actors in placed.items():
        cpus, gpus = resources[node]["CPU"], resources[node].get("GPU", 0)
        assert all(1 <= s.lanes <= max(cpus, 1) and s.lanes <= MAX_LANES_PER_ACTOR for s in actors), node
        assert sum(s.options["num_cpus"] for s in actors) <= cpus, node
        assert sum(s.options["num_gpus"] for s in actors) <= gpus + 1e-9, node
        assert all(s.options["scheduling_strategy"].soft for s in actors)
    return {node: [(s.lanes, s.options["num_cpus"]) for s in actors] for node, actors in placed.items()}


def test_one_big_and_four_small_gpu_nodes_each_get_their_own_lanes():
    # cluster.yaml's fleet for --gpus 8: its 0-CPU head, 1 x g5.12xlarge, 4 x g5.xlarge. Sized from the whole
    # cluster, every actor got 8 lanes: 8 threads on each 4-vCPU node while 16 vCPUs of the big node idled.
    nodes = fleet((1, 0, 0), (1, *G5_12XL), (4, *G5_XL))
    placed = assert_fits(nodes, plan_actors(nodes, gpus=8))
    assert placed == {"n1": [(8, 8)] * 4, **{f"n{k}": [(4, 4)] for k in range(2, 6)}}
    assert all(s.options["num_gpus"] == 1 for s in plan_actors(nodes, gpus=8))


def test_cpu_only_nodes_take_no_part_in_a_gpu_run():
    # 2 x g5.12xlarge + 4 CPU-only 96-vCPU nodes: sized from the cluster this gave 60 lanes per actor, 240
    # threads on each 48-vCPU GPU node
    nodes = fleet((2, *G5_12XL), (4, 96, 0))
    placed = assert_fits(nodes, plan_actors(nodes, gpus=8))
    assert placed == {"n0": [(8, 8)] * 4, "n1": [(8, 8)] * 4}


def test_a_cpu_head_holds_no_gpu_actor():
    nodes = fleet((1, 8, 0), (2, *G5_XL))
    placed = assert_fits(nodes, plan_actors(nodes, gpus=2))
    assert placed == {"n1": [(4, 4)], "n2": [(4, 4)]}
    # without GPUs the same cluster runs CPU actors on every node, the head included, as before
    assert assert_fits(nodes, plan_actors(nodes, gpus=0)) == {"n0": [(8, 8)], "n1": [(4, 4)], "n2": [(4, 4)]}


def test_mixed_gpu_node_types_and_a_node_with_fewer_cpus_than_gpus():
    # g5.12xlarge, p3.8xlarge (32 vCPUs, 4 V100s), g5.2xlarge (8 vCPUs, 1 GPU), and a 2-CPU node with 4 GPUs
    nodes = fleet((1, *G5_12XL), (1, 32, 4), (1, 8, 1), (1, 2, 4))
    placed = assert_fits(nodes, plan_actors(nodes, gpus=13))
    assert placed == {"n0": [(8, 8)] * 4, "n1": [(8, 8)] * 4, "n2": [(8, 8)], "n3": [(1, 0.5)] * 4}


def test_two_actors_per_gpu_share_their_nodes_cpus():
    nodes = fleet((1, *G5_12XL), (4, *G5_XL))
    shapes = plan_actors(nodes, gpus=8, actors_per_gpu=2)
    placed = assert_fits(nodes, shapes)
    assert placed == {"n0": [(6, 6)] * 8, **{f"n{k}": [(2, 2)] * 2 for k in range(1, 5)}}
    assert len(shapes) == 16 and {s.options["num_gpus"] for s in shapes} == {0.5}


@pytest.mark.parametrize("gpus, expected", [
    (1, {"n0": [(8, 8)]}),  # the roomiest node first
    (2, {"n0": [(8, 8)] * 2}),
    (5, {"n0": [(8, 8)] * 4, "n1": [(4, 4)]}),  # 48/5 CPUs per actor on the big node would be less than 4
])
def test_a_partial_request_fills_the_nodes_with_the_most_cpus_per_gpu_first(gpus, expected):
    nodes = fleet((1, *G5_12XL), (4, *G5_XL))
    assert assert_fits(nodes, plan_actors(nodes, gpus=gpus)) == expected


def test_dead_nodes_are_left_out_and_missing_gpus_are_refused():
    nodes = fleet((2, *G5_XL))
    nodes[0]["Alive"] = False
    assert assert_fits(nodes, plan_actors(nodes, gpus=1)) == {"n1": [(4, 4)]}
    with pytest.raises(SynthgenError, match=r"--gpus 2: the cluster's nodes have 1 GPU\(s\)"):
        plan_actors(nodes, gpus=2)


def test_cpu_actors_keep_their_shapes():
    nodes = fleet((1, 2, 0), (1, 20, 0))
    assert assert_fits(nodes, plan_actors(nodes, gpus=0)) == {"n0": [(2, 2)], "n1": [(7, 7), (7, 7), (6, 6)]}
    assert placement.split_lanes(20) == [7, 7, 6]
    workers = plan_actors(nodes, gpus=0, workers=4)  # --workers: Ray places them, a share of all CPUs each
    assert [(s.lanes, s.options["num_cpus"]) for s in workers] == [(5, 5)] * 4
    with pytest.raises(SynthgenError, match="no CPUs to run CPU actors on"):
        plan_actors(fleet((1, 0, 1)), gpus=0)
