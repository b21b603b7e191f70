"""The generation actors: a pool of :class:`synthgen.generate.actor.ShardGenerator` actors, two shards in flight each.

An actor that dies is restarted by Ray and its shard retried; when restarts run out the shard goes to
another actor. Because a shard's bytes depend only on its indices, a retried shard is identical to a first
attempt.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Callable, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from synthgen.dataset import manifest as mf
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig, RunSummary, WorkerConfig, allocator_env
from synthgen.generate.engine.placement import ActorShape, actor_shapes, describe
from synthgen.generate.plan import ShardSpec

# Shards handed to each actor at once. The actor works on them concurrently (a threaded actor; its lanes
# take batches first come, first served), so its cores stay busy while one shard drains and commits.
IN_FLIGHT_PER_ACTOR = 2
# How often the driver asks the actors how far their shards are, for the progress bar. The question runs in its
# own concurrency group, so it is answered while both shard calls are busy.
PROGRESS_POLL_S = 0.25


class _RayShardGenerator:
    """The actor: a :class:`~synthgen.generate.actor.ShardGenerator`, imported in the actor (the driver needs no
    torch). An actor that holds GPUs it cannot use loads nothing and writes nothing: it says why instead of
    running 100x slower on its CPUs."""

    def __init__(self, config: WorkerConfig):
        from synthgen.generate.actor import ShardGenerator
        from synthgen.generate.device import gpu_holder_problem

        self.gpu_ids = sorted(int(i) for i in ray.get_gpu_ids())
        node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        self.problem = gpu_holder_problem(node, self.gpu_ids) if self.gpu_ids else None
        self.generator = None if self.problem else ShardGenerator(config)

    def __call__(self, spec: ShardSpec) -> mf.ShardRecord:
        if self.generator is None:  # a replacement actor that landed on a node without usable CUDA
            raise SynthgenError(self.problem)
        return self.generator(spec)

    def ping(self) -> str:
        return self.generator.device if self.generator else "none"

    @ray.method(concurrency_group="progress")
    def progress(self) -> dict[int, int]:
        """Rows each shard in progress has handed to its writer so far."""
        return dict(self.generator.progress)

    # a probe, not work: an actor whose model does not load will not load it on a retry either, and each retry
    # would print Ray's traceback of the failure to the user's terminal
    @ray.method(max_task_retries=0)
    def placement(self) -> tuple[str, list[int], str | None, dict[str, str] | None]:
        """The torch device this actor uses, the GPU ids Ray gave it, why it cannot use them (or None), and
        where its bytes are made."""
        from synthgen.generate.provenance import made_on

        where = made_on(self.generator.device) if self.generator else None
        return self.ping(), self.gpu_ids, self.problem, where


class ActorPool:
    """Actors that each hold the model; shards handed out as actors free up, failures retried."""

    def __init__(self, config: RunConfig, worker: WorkerConfig):
        self.config, self.worker = config, worker
        self.shapes = actor_shapes(config)
        self.remote_cls = ray.remote(concurrency_groups={"progress": 1})(_RayShardGenerator)
        self.shape_of: dict[int, ActorShape] = {}  # id(actor) -> its shape, to replace it alike
        self.actors = [self._new_actor(shape) for shape in self.shapes]
        self.device, self.gpu_ids, self.made_on = self._wait_ready()
        self.in_flight: dict = {}
        self.progress_asked: dict = {}  # ObjectRef of a progress question -> the actor asked
        self.rows_by_shard: dict[int, int] = {}  # shard id -> rows its actor has made so far

    def _new_actor(self, shape: ActorShape):
        # a GPU actor computes on its GPU or not at all; "auto" would fall back to the CPU without a word
        device = "cuda" if shape.options["num_gpus"] else "cpu"
        worker = WorkerConfig(**{**self.worker.__dict__, "lanes": shape.lanes, "device": device})
        actor = self.remote_cls.options(**shape.options, max_concurrency=IN_FLIGHT_PER_ACTOR,
                                        max_restarts=self.config.max_retries,
                                        max_task_retries=self.config.max_retries,
                                        runtime_env={"env_vars": allocator_env(shape.lanes)}).remote(worker)
        self.shape_of[id(actor)] = shape
        return actor

    def _wait_ready(self) -> tuple[str, list[list[int]], list[dict[str, str]]]:
        try:
            answers = ray.get([a.placement.remote() for a in self.actors], timeout=self.config.start_timeout_s)
        except GetTimeoutError:
            raise SynthgenError(f"the cluster could not place {len(self.actors)} actor(s) "
                                f"({describe(self.shapes)}) within {self.config.start_timeout_s:.0f}s; "
                                "ask for fewer --gpus/--workers") from None
        except (RayActorError, RayTaskError) as err:
            raise SynthgenError(f"an actor could not load the model: {_cause(err)}") from None
        problems = [problem for _, _, problem, _ in answers if problem]
        if problems:
            alike = f"{len(problems)} of {len(answers)} GPU actors cannot use CUDA; " if len(problems) > 1 else ""
            raise SynthgenError(alike + problems[0])
        made_on: list[dict[str, str]] = []  # one entry unless the nodes' library versions differ
        for *_, where in answers:
            made_on += [where] if where not in made_on else []
        return ",".join(sorted({answer[0] for answer in answers})), [answer[1] for answer in answers], made_on

    def map_unordered(self, todo: Iterator[ShardSpec], summary: RunSummary,
                      on_progress: Callable[[int], None] | None = None) -> Iterator[mf.ShardRecord]:
        """Committed shards as they come back; ``on_progress(rows)`` hears of rows made in shards still in
        flight while the driver waits (never of rows in a committed shard)."""
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
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_POLL_S)
                if on_progress is not None and not ready:
                    on_progress(self._rows_in_flight())
            actor, spec = in_flight.pop(ready[0])
            self.rows_by_shard.pop(spec.shard_id, None)
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

    def _rows_in_flight(self) -> int:
        """Rows made so far in the shards in flight, from the actors' latest answers; never waits for one."""
        if self.progress_asked:
            answered, _ = ray.wait(list(self.progress_asked), num_returns=len(self.progress_asked), timeout=0)
            for ref in answered:
                del self.progress_asked[ref]
                try:
                    self.rows_by_shard.update(ray.get(ref))
                except (RayActorError, RayTaskError):
                    pass  # a lost actor: its shards are retried, their rows counted when they land
        asked = {id(actor) for actor in self.progress_asked.values()}
        for actor in self.actors:
            if id(actor) not in asked:
                self.progress_asked[actor.progress.remote()] = actor
        in_flight = {spec.shard_id for _, spec in self.in_flight.values()}
        return sum(rows for shard, rows in self.rows_by_shard.items() if shard in in_flight)

    def images_in_flight(self) -> int:
        """Images in the shards handed out and not yet back."""
        return sum(spec.count for _, spec in self.in_flight.values())

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
    """The last line of what went wrong in an actor; our own errors without their class name."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    line = text[-1] if text else type(cause).__name__
    return line.removeprefix(f"{SynthgenError.__module__}.{SynthgenError.__name__}: ")
