"""The only module that imports ray: actor pool, scheduling, retries, progress and resume.

The driver plans shards, hands them to a pool of :class:`synthgen.worker.ShardGenerator` actors (two in
flight per actor, so a slow actor simply takes fewer), and records each committed shard in the manifest.
Actors write their shards themselves; only small shard records travel back. An actor that dies is
restarted by Ray and its shard retried; when restarts run out the shard goes to another actor. Because a
shard's bytes depend only on its indices, a retried or resumed shard is identical to a first attempt.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from synthgen import manifest as mf
from synthgen import storage
from synthgen.checkpoint import DEFAULT_MODEL, bundled_models, inspect_checkpoint
from synthgen.errors import SynthgenError
from synthgen.imaging import png_encoder_name, png_settings
from synthgen.output import output_lock, prepare_output
from synthgen.plan import INFERENCE_FORM, ShardSpec, parse_label_plan, plan_shards
from synthgen.settings import check_run_settings
from synthgen.worker_config import WorkerConfig, allocator_env
from synthgen.writers import PARQUET_COMPRESSION, RAW_LAYOUT, Layout, write_png_metadata

# Shards handed to each actor at once. The actor works on them concurrently (a threaded actor; its lanes
# take batches first come, first served), so its cores stay busy while one shard drains and commits.
IN_FLIGHT_PER_ACTOR = 2
MAX_LANES_PER_ACTOR = 8  # beyond this, lanes of one process start to queue on the GIL between kernels
MANIFEST_SAVE_INTERVAL_S = 1.0


@dataclass
class RunConfig:
    """Everything ``synthgen run`` takes; see ``synthgen run --help`` for each field."""

    count: int
    out: str = "synthetic"
    model: str | None = None  # None = the bundled default model
    format: str = "parquet"
    encoding: str = "png"  # png, or raw uint8 pixels (parquet only)
    shard_size: int = 10_000
    seed: int = 0
    labels: str | None = None
    batch_size: int | None = None  # None: 256 on CPU, 2048 on a GPU (fewer for larger images)
    precision: str = "fp32"
    gpus: int | None = None  # None = every GPU the cluster has; 0 = CPU actors
    workers: int | None = None  # CPU actors when running without GPUs; None = one per node (8 lanes at most)
    actors_per_gpu: int = 1
    address: str | None = None
    overwrite: bool = False
    allow_import: bool = False
    progress: bool = True
    max_retries: int = 3
    start_timeout_s: float = 120.0


@dataclass
class RunSummary:
    out: str
    total: int  # images in the dataset
    generated: int  # images made by this run (the rest were already committed)
    bytes: int
    seconds: float  # wall time of the whole run, cluster start included
    generate_seconds: float = 0.0  # from the first shard handed out to the last one committed
    lanes: list[int] = field(default_factory=list)  # each actor's threads taking batches through the model
    device: str = ""  # the torch device(s) the actors run on
    gpu_ids: list[list[int]] = field(default_factory=list)  # Ray's GPU ids held by each actor
    retried_shards: list[int] = field(default_factory=list)

    @property
    def actors(self) -> int:
        return len(self.lanes)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def describe_actors(self) -> str:
        """E.g. "ran 2 actor(s) x 8 lane(s) on cpu", or "ran 3 actor(s) with 2+8+8 lanes on cpu"."""
        uniform = len(set(self.lanes)) == 1
        lanes = f"x {self.lanes[0]} lane(s)" if uniform else f"with {'+'.join(map(str, self.lanes))} lanes"
        gpus = f" holding GPUs {self.gpu_ids}" if any(self.gpu_ids) else ""
        return f"ran {self.actors} actor(s) {lanes} on {self.device}{gpus}"


def run(config: RunConfig) -> RunSummary:
    """Generate (or finish) the dataset described by ``config``.

    Returns:
        What was written, and how fast.
    """
    t0 = time.perf_counter()
    fresh, layout, model_source = _plan_job(config)
    loc = storage.locate(config.out)
    summary = RunSummary(config.out, config.count, 0, 0, 0.0)
    with output_lock(loc):
        manifest = prepare_output(loc, fresh, config.overwrite)
        todo = (s for s in plan_shards(config.count, config.shard_size) if s.shard_id not in manifest.shards)
        if len(manifest.shards) < manifest.num_shards:
            worker = WorkerConfig(model_source, fresh.model["fingerprint"], config.out, layout, config.seed,
                                  fresh.job["labels"], config.batch_size, config.precision,
                                  allow_import=config.allow_import)
            with _ray_session(config.address):
                _generate(config, worker, manifest, loc, todo, summary)
        _finish(loc, manifest)
    summary.bytes = sum(r.bytes for r in manifest.shards.values())
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan_job(config: RunConfig) -> tuple[mf.Manifest, Layout, str]:
    check_run_settings(config)
    ckpt, fingerprint = inspect_checkpoint(config.model)  # the actors build the model; the driver needs no torch
    source = model_reference(config.model)
    plan = parse_label_plan(config.labels, ckpt.class_names)
    job = {"count": config.count, "seed": config.seed, "shard_size": config.shard_size, "format": config.format,
           "encoding": config.encoding, "precision": config.precision, "inference_form": INFERENCE_FORM,
           "labels": plan.to_json(),
           "png_encoder": png_encoder_name(png_settings(config.format)) if config.encoding == "png" else None,
           "parquet_compression": PARQUET_COMPRESSION,
           "raw_layout": RAW_LAYOUT if config.encoding == "raw" else None}
    model = {"source": source, "fingerprint": fingerprint, "arch": ckpt.arch, "image_shape": ckpt.image_shape,
             "latent_dim": ckpt.latent_dim, "class_names": ckpt.class_names, "training": ckpt.training}
    c, h, w = ckpt.image_shape
    # Only what decides the bytes goes into every Parquet file: not paths, which differ between machines.
    stamp = {"job": job, "model": {k: model[k] for k in ("fingerprint", "arch", "image_shape", "class_names")}}
    layout = Layout(config.format, tuple(ckpt.class_names), encoding=config.encoding,
                    image_shape=(h, w, c), file_metadata=stamp)
    return mf.Manifest(job, model), layout, source


def model_reference(model: str | None) -> str:
    """How the manifest names the model: a bundled name as is, a local path made absolute, a URI as is."""
    ref = model or DEFAULT_MODEL
    if ref in bundled_models() or storage.is_uri(ref):
        return ref
    return os.path.abspath(ref)


class _ray_session:
    """Join the cluster at ``address``, reuse this process's Ray, or start a local cluster (and stop it)."""

    def __init__(self, address: str | None):
        self.address, self.started = address, False

    def __enter__(self) -> None:
        if ray.is_initialized():
            return
        if self.address:
            _use_cluster_token()
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = f"--address {self.address}" if self.address else "a local Ray cluster"
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                    "(or copy the head's ~/.ray/auth_token here)" if self.address else "")
            raise SynthgenError(f"cannot start or reach {where}: {str(err).splitlines()[0]}{hint}") from None
        self.started = True

    def __exit__(self, *exc) -> None:
        if self.started:
            ray.shutdown()


def _use_cluster_token() -> None:
    """Send the auth token when one is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

    Ray 2.60's heads enable token authentication by default, but ``ray.init(address=HOST:PORT)`` only looks
    for a token when the address is "auto"; this applies Ray's own lookup for explicit addresses too. A
    RAY_AUTH_MODE the user set is respected, and authentication is never turned off.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _generate(config: RunConfig, worker: WorkerConfig, manifest: mf.Manifest, loc: storage.Location,
              todo: Iterator[ShardSpec], summary: RunSummary) -> None:
    pool = _ActorPool(config, worker)
    summary.lanes, summary.device, summary.gpu_ids = [s.lanes for s in pool.shapes], pool.device, pool.gpu_ids
    bar = tqdm(total=config.count, initial=manifest.rows_done(), unit="img", unit_scale=True,
               disable=not config.progress, desc="generating", smoothing=0.1)
    saver = _ManifestSaver(loc, manifest)
    t0 = time.perf_counter()
    try:
        for record in pool.map_unordered(todo, summary):
            manifest.shards[record.shard_id] = record
            summary.generated += record.rows
            bar.update(record.rows)
            saver.maybe_save()
    finally:
        summary.generate_seconds = time.perf_counter() - t0
        saver.save()
        bar.close()
        pool.shutdown()


class _ManifestSaver:
    """Save the manifest at most once a second while shards land, and always at the end."""

    def __init__(self, loc: storage.Location, manifest: mf.Manifest):
        self.loc, self.manifest, self.last = loc, manifest, 0.0

    def maybe_save(self) -> None:
        if time.monotonic() - self.last >= MANIFEST_SAVE_INTERVAL_S:
            self.save()

    def save(self) -> None:
        mf.save(self.loc, self.manifest)
        self.last = time.monotonic()


def _finish(loc: storage.Location, manifest: mf.Manifest) -> None:
    if len(manifest.shards) < manifest.num_shards:
        raise SynthgenError(f"{len(manifest.shards)} of {manifest.num_shards} shards done; "
                            "re-run the same command to finish")
    if manifest.job["format"] == "png":
        write_png_metadata(loc, [manifest.shards[j].file for j in sorted(manifest.shards)])
    manifest.status = "complete"
    mf.write_card(loc, manifest)
    mf.save(loc, manifest)


class _RayShardGenerator:
    """The actor: a :class:`synthgen.worker.ShardGenerator`, imported in the actor so the driver needs no torch."""

    def __init__(self, config: WorkerConfig):
        from synthgen.worker import ShardGenerator

        self.generator = ShardGenerator(config)

    def __call__(self, spec: ShardSpec) -> mf.ShardRecord:
        return self.generator(spec)

    def ping(self) -> str:
        return self.generator.device

    def placement(self) -> tuple[str, list[int]]:
        """The torch device this actor uses and the GPU ids Ray gave it."""
        return self.generator.device, sorted(int(i) for i in ray.get_gpu_ids())


class _ActorPool:
    """Actors that each hold the model; shards handed out as actors free up, failures retried."""

    def __init__(self, config: RunConfig, worker: WorkerConfig):
        self.config, self.worker = config, worker
        self.shapes = _actor_shapes(config)
        self.remote_cls = ray.remote(_RayShardGenerator)
        self.shape_of: dict[int, _ActorShape] = {}  # id(actor) -> its shape, to replace it alike
        self.actors = [self._new_actor(shape) for shape in self.shapes]
        self.device, self.gpu_ids = self._wait_ready()
        self.in_flight: dict = {}

    def _new_actor(self, shape: _ActorShape):
        worker = WorkerConfig(**{**self.worker.__dict__, "threads": shape.lanes})
        actor = self.remote_cls.options(**shape.options, max_concurrency=IN_FLIGHT_PER_ACTOR,
                                        max_restarts=self.config.max_retries,
                                        max_task_retries=self.config.max_retries,
                                        runtime_env={"env_vars": allocator_env(shape.lanes)}).remote(worker)
        self.shape_of[id(actor)] = shape
        return actor

    def _wait_ready(self) -> tuple[str, list[list[int]]]:
        try:
            answers = ray.get([a.placement.remote() for a in self.actors], timeout=self.config.start_timeout_s)
        except GetTimeoutError:
            raise SynthgenError(f"the cluster could not place {len(self.actors)} actor(s) "
                                f"({_describe(self.shapes)}) within {self.config.start_timeout_s:.0f}s; "
                                "ask for fewer --gpus/--workers") from None
        except (RayActorError, RayTaskError) as err:
            raise SynthgenError(f"an actor could not load the model: {_cause(err)}") from None
        return ",".join(sorted({device for device, _ in answers})), [ids for _, ids in answers]

    def map_unordered(self, todo: Iterator[ShardSpec], summary: RunSummary) -> Iterator[mf.ShardRecord]:
        retry: deque[ShardSpec] = deque()
        attempts: dict[int, int] = {}
        in_flight = self.in_flight  # ObjectRef -> (actor, spec)
        load = {id(a): 0 for a in self.actors}
        while True:
            for actor in list(self.actors):
                while load[id(actor)] < IN_FLIGHT_PER_ACTOR:
                    spec = retry.popleft() if retry else next(todo, None)
                    if spec is None:
                        break
                    in_flight[actor.__call__.remote(spec)] = (actor, spec)
                    load[id(actor)] += 1
            if not in_flight:
                return
            ready: list = []
            while not ready:  # short waits: a blocking ray.wait would hold off Ctrl-C indefinitely
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            actor, spec = in_flight.pop(ready[0])
            load[id(actor)] -= 1
            try:
                yield ray.get(ready[0])
            except RayActorError as err:
                attempts[spec.shard_id] = attempts.get(spec.shard_id, 0) + 1
                if attempts[spec.shard_id] > self.config.max_retries:
                    raise SynthgenError(f"shard {spec.shard_id} failed {attempts[spec.shard_id]} times; "
                                        f"last error: {_cause(err)}") from None
                summary.retried_shards.append(spec.shard_id)
                retry.append(spec)
                self._replace_if_dead(actor, load)
            except RayTaskError as err:
                raise SynthgenError(f"shard {spec.shard_id} failed: {_cause(err)}") from None

    def _replace_if_dead(self, actor, load: dict) -> None:
        try:
            ray.get(actor.ping.remote(), timeout=self.config.start_timeout_s)
        except (RayActorError, GetTimeoutError):
            self.actors.remove(actor)
            fresh = self._new_actor(self.shape_of.pop(id(actor)))
            self.actors.append(fresh)
            load[id(fresh)] = 0

    def shutdown(self) -> None:
        """Stop the actors; cancelling their queued shards first keeps Ray from announcing retries."""
        for ref in self.in_flight:
            ray.cancel(ref)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


@dataclass(frozen=True)
class _ActorShape:
    """One generation actor: its Ray options (resources, and the node it belongs on) and its lanes."""

    options: dict
    lanes: int


def _actor_shapes(config: RunConfig) -> list[_ActorShape]:
    """The actors to start, refusing requests the cluster cannot meet."""
    resources = ray.cluster_resources()
    total_gpus, total_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    gpus = total_gpus if config.gpus is None else config.gpus
    if gpus > total_gpus:  # fails fast, unless an autoscaler can add GPU nodes: then waits for them
        total_gpus, total_cpus = _wait_for_gpus(gpus, total_gpus, total_cpus)
    if gpus:
        actors = gpus * config.actors_per_gpu
        cpus = min(1.0, total_cpus / actors) if total_cpus else 0
        # lanes encode while another lane holds the GPU: share the cluster's cores between the GPU actors
        shape = _ActorShape({"num_gpus": 1 / config.actors_per_gpu, "num_cpus": cpus}, max(1, total_cpus // actors))
        return [shape] * actors
    nodes = {n["NodeID"]: int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]}
    nodes = {node: cpus for node, cpus in nodes.items() if cpus >= 1}
    if not nodes:
        raise SynthgenError("the cluster has no CPUs to run CPU actors on")
    if config.workers is None:
        # One process per node (up to 8 lanes each) rather than one per core: each process holds its own
        # ~300 MiB copy of torch, and lanes in one process use the cores as well as separate processes do.
        # Each actor is sized to its node, so a small head and large workers are all used in full.
        return [_ActorShape({"num_cpus": lanes, "num_gpus": 0,
                             "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}, lanes)
                for node, cpus in nodes.items() for lanes in split_lanes(cpus)]
    threads = max(1, min(max(nodes.values()), total_cpus // config.workers))
    cpus = float(threads) if config.workers * threads <= total_cpus else total_cpus / config.workers
    return [_ActorShape({"num_cpus": cpus, "num_gpus": 0}, threads)] * config.workers


def split_lanes(cpus: int, most: int = MAX_LANES_PER_ACTOR) -> list[int]:
    """A node's CPUs as the lanes of as few actors as hold at most ``most`` lanes each, sized evenly."""
    actors = -(-cpus // most)
    return [cpus // actors + (k < cpus % actors) for k in range(actors)]


def _describe(shapes: list[_ActorShape]) -> str:
    kinds = {(s.options["num_cpus"], s.options["num_gpus"]) for s in shapes}
    return ", ".join(f"{cpus:g} CPU + {gpus:g} GPU each" for cpus, gpus in sorted(kinds))


AUTOSCALE_TIMEOUT_S = float(os.environ.get("SYNTHGEN_AUTOSCALE_TIMEOUT_S", 1200))  # GPU nodes boot in minutes


def _wait_for_gpus(gpus: int, have: int, cpus: int) -> tuple[int, int]:
    """Ask the cluster's autoscaler for ``gpus`` GPUs and wait for them; without one, refuse at once.

    Returns:
        The cluster's GPUs and CPUs once it has enough GPUs.
    """
    if not _autoscaler_can_add_nodes():
        raise SynthgenError(f"--gpus {gpus}: the cluster has {have} GPU(s) and {cpus} CPU(s)")
    from ray.autoscaler.sdk import request_resources

    def say(message: str) -> None:
        print(f"--gpus {gpus}: {message}", file=sys.stderr, flush=True)

    say(f"the cluster has {have} GPU(s); asked its autoscaler for more, waiting up to {AUTOSCALE_TIMEOUT_S:.0f} s")
    request_resources(bundles=[{"GPU": 1}] * gpus)
    start = time.monotonic()
    try:
        while have < gpus:
            waited = time.monotonic() - start
            if waited >= AUTOSCALE_TIMEOUT_S:
                raise SynthgenError(f"--gpus {gpus}: the autoscaler brought only {have} GPU(s) in {waited:.0f} s; "
                                    "see `ray status` on the head (max_workers, instance quotas)")
            time.sleep(2)
            resources = ray.cluster_resources()
            now, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
            if now != have:
                say(f"{now} GPU(s) after {time.monotonic() - start:.0f} s")
            have = now
    finally:
        request_resources(bundles=[])  # the actors' own demand holds the nodes from here on
    return have, cpus


def _autoscaler_can_add_nodes() -> bool:
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
