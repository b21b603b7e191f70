"""Where generation actors go: how many, how wide, on which nodes; waits for nodes an autoscaler can add."""

from __future__ import annotations

import json
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
    """The actors to start, refusing requests the cluster cannot meet."""
    resources = ray.cluster_resources()
    total_gpus, total_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    gpus = total_gpus if config.gpus is None else config.gpus
    if gpus > total_gpus:  # fails fast, unless an autoscaler can add GPU nodes: then waits for them
        total_gpus, total_cpus = wait_for("GPU", gpus, f"--gpus {gpus}")
    if gpus:
        actors = gpus * config.actors_per_gpu
        cpus = min(1.0, total_cpus / actors) if total_cpus else 0
        # lanes encode while another lane holds the GPU: share the cluster's cores between the GPU actors
        shape = ActorShape({"num_gpus": 1 / config.actors_per_gpu, "num_cpus": cpus}, max(1, total_cpus // actors))
        return [shape] * actors
    if config.workers is not None and config.workers > total_cpus:
        # a worker is a process with its own copy of torch: more of them than cores only adds memory
        total_gpus, total_cpus = wait_for("CPU", config.workers, f"--workers {config.workers}")
    nodes = {n["NodeID"]: int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]}
    nodes = {node: cpus for node, cpus in nodes.items() if cpus >= 1}
    if not nodes:
        raise SynthgenError("the cluster has no CPUs to run CPU actors on")
    if config.workers is None:
        # One process per node (up to 8 lanes each) rather than one per core: each process holds its own
        # ~300 MiB copy of torch, and lanes in one process use the cores as well as separate processes do.
        # Each actor is sized to its node, so a small head and large workers are all used in full.
        return [ActorShape({"num_cpus": lanes, "num_gpus": 0,
                             "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}, lanes)
                for node, cpus in nodes.items() for lanes in split_lanes(cpus)]
    threads = max(1, min(max(nodes.values()), total_cpus // config.workers))
    return [ActorShape({"num_cpus": threads, "num_gpus": 0}, threads)] * config.workers


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
