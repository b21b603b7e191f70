"""Where generation actors go: how many, how wide, on which nodes; waits for nodes an autoscaler can add."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig

MAX_LANES_PER_ACTOR = 8  # beyond this, lanes of one process start to queue on the GIL between kernels


@dataclass(frozen=True)
class ActorShape:
    """One generation actor: its Ray options (resources, and the node it belongs on) and its lanes."""

    options: dict
    lanes: int


def actor_shapes(config: RunConfig) -> list[ActorShape]:
    """The actors to start on the cluster as it is (or once an autoscaler brought what the run asks for),
    refusing requests it cannot meet."""
    resources = ray.cluster_resources()
    total_gpus, total_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    gpus = total_gpus if config.gpus is None else config.gpus
    if gpus > total_gpus:  # fails fast, unless an autoscaler can add GPU nodes: then waits for them
        wait_for("GPU", gpus, f"--gpus {gpus}")
    elif not gpus and config.workers is not None and config.workers > total_cpus:
        # a worker is a process with its own copy of torch: more of them than cores only adds memory
        wait_for("CPU", config.workers, f"--workers {config.workers}")
    return plan_actors(ray.nodes(), gpus, config.workers, config.actors_per_gpu)


def plan_actors(nodes: list[dict], gpus: int, workers: int | None = None, actors_per_gpu: int = 1) -> list[ActorShape]:
    """The actors for a cluster whose nodes ``ray.nodes()`` lists: ``gpus * actors_per_gpu`` GPU actors, or
    with ``gpus`` 0 CPU actors (``workers`` of them, or as many as fill each node)."""
    alive = {n["NodeID"]: n["Resources"] for n in nodes if n["Alive"]}
    if gpus:
        return gpu_actors({node: (int(res.get("GPU", 0)), int(res.get("CPU", 0))) for node, res in alive.items()},
                          gpus, actors_per_gpu)
    cpus_of = {node: int(res.get("CPU", 0)) for node, res in alive.items()}
    cpus_of = {node: cpus for node, cpus in cpus_of.items() if cpus >= 1}
    if not cpus_of:
        raise SynthgenError("the cluster has no CPUs to run CPU actors on")
    if workers is None:
        # One process per node (up to 8 lanes each) rather than one per core: each process holds its own
        # ~300 MiB copy of torch, and lanes in one process use the cores as well as separate processes do.
        # Each actor is sized to its node, so a small head and large workers are all used in full.
        return [ActorShape({"num_cpus": lanes, "num_gpus": 0, "scheduling_strategy": _pinned(node)}, lanes)
                for node, cpus in cpus_of.items() for lanes in split_lanes(cpus)]
    threads = max(1, min(max(cpus_of.values()), sum(cpus_of.values()) // workers))
    return [ActorShape({"num_cpus": threads, "num_gpus": 0}, threads)] * workers


def gpu_actors(nodes: dict[str, tuple[int, int]], gpus: int, actors_per_gpu: int) -> list[ActorShape]:
    """GPU actors for ``gpus`` of the GPUs of ``nodes`` (node id -> (GPUs, CPUs)), each pinned to its node.

    Each GPU goes where its actors get the most CPUs, so a partial request fills the roomiest nodes first. An
    actor's lanes copy and encode while another lane holds its device: it takes its node's CPUs shared evenly
    among that node's actors (at most MAX_LANES_PER_ACTOR) and reserves as many, so no node runs more threads
    than it has CPUs however the fleet mixes node types; CPU-only nodes take no part.
    """
    taken = {node: 0 for node, (node_gpus, _) in nodes.items() if node_gpus >= 1}
    for _ in range(gpus):
        free = [node for node in taken if taken[node] < nodes[node][0]]
        if not free:
            raise SynthgenError(f"--gpus {gpus}: the cluster's nodes have {sum(taken.values())} GPU(s)")
        best = max(free, key=lambda node: nodes[node][1] / (taken[node] + 1))  # ties: the first listed
        taken[best] += 1
    shapes = []
    for node, node_gpus in taken.items():
        actors, cpus = node_gpus * actors_per_gpu, nodes[node][1]
        if not actors:
            continue
        lanes = max(1, min(MAX_LANES_PER_ACTOR, cpus // actors))
        # a node with fewer CPUs than actors: one lane each, reserving an even share of what there is
        reserved = lanes if cpus >= actors else math.floor(cpus / actors * 1e4) / 1e4  # Ray's resource grain
        options = {"num_gpus": 1 / actors_per_gpu, "num_cpus": reserved, "scheduling_strategy": _pinned(node)}
        shapes += [ActorShape(options, lanes)] * actors
    return shapes


def _pinned(node: str) -> NodeAffinitySchedulingStrategy:
    # soft: an actor whose node is gone (or full) starts elsewhere rather than never
    return NodeAffinitySchedulingStrategy(node, soft=True)


def split_lanes(cpus: int, most: int = MAX_LANES_PER_ACTOR) -> list[int]:
    """A node's CPUs as the lanes of as few actors as hold at most ``most`` lanes each, sized evenly."""
    actors = -(-cpus // most)
    return [cpus // actors + (k < cpus % actors) for k in range(actors)]


def describe(shapes: list[ActorShape]) -> str:
    kinds = {(s.options["num_cpus"], s.options["num_gpus"]) for s in shapes}
    return ", ".join(f"{cpus:g} CPU + {gpus:g} GPU each" for cpus, gpus in sorted(kinds))


AUTOSCALE_TIMEOUT_S = float(os.environ.get("SYNTHGEN_AUTOSCALE_TIMEOUT_S", 1200))  # GPU nodes boot in minutes


def wait_for(resource: str, wanted: int, flag: str) -> tuple[int, int]:
    """Ask the cluster's autoscaler for ``wanted`` units of ``resource`` ("GPU" or "CPU") and wait for them;
    without an autoscaler that can add nodes, refuse at once.

    Returns:
        The cluster's GPUs and CPUs once it has enough of ``resource``.
    """
    def counts() -> tuple[int, int, int]:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        return gpus, cpus, gpus if resource == "GPU" else cpus

    gpus, cpus, have = counts()
    if not autoscaler_can_add_nodes():
        raise SynthgenError(f"{flag}: the cluster has {gpus} GPU(s) and {cpus} CPU(s)")
    from ray.autoscaler.sdk import request_resources

    def say(message: str) -> None:
        print(f"{flag}: {message}", file=sys.stderr, flush=True)

    say(f"the cluster has {have} {resource}(s); asked its autoscaler for more, "
        f"waiting up to {AUTOSCALE_TIMEOUT_S:.0f} s")
    request_resources(bundles=[{resource: 1}] * wanted)
    start = time.monotonic()
    try:
        while have < wanted:
            waited = time.monotonic() - start
            if waited >= AUTOSCALE_TIMEOUT_S:
                raise SynthgenError(f"{flag}: the autoscaler brought only {have} {resource}(s) in {waited:.0f} s; "
                                    "see `ray status` on the head (max_workers, instance quotas)")
            time.sleep(2)
            before = have
            gpus, cpus, have = counts()
            if have != before:
                say(f"{have} {resource}(s) after {time.monotonic() - start:.0f} s")
    finally:
        request_resources(bundles=[])  # the actors' own demand holds the nodes from here on
    return gpus, cpus


def autoscaler_can_add_nodes() -> bool:
    """Whether an autoscaler with node types to launch runs, not just the read-only monitor of `ray start`."""
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if _internal_kv_get("__autoscaler_v2_enabled", namespace="__autoscaler") == b"1":
            return True
        status = _internal_kv_get("__autoscaling_status")  # written by the v1 monitor
        mapping = json.loads(status)["autoscaler_report"]["node_type_mapping"] if status else {}
    except Exception:  # no status yet, or another format: treat the cluster as fixed
        return False
    # The read-only monitor names each node's type after the node; a real config names its own types.
    return any(node_type != f"node_{node_id}" for node_id, node_type in (mapping or {}).items())
