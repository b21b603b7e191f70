"""The engine, the only package that imports ray to generate: the run, progress and resume here; the actor pool
and its retries in ``pool``, actor placement in ``placement``, which cluster a run joins or starts in ``session``.

The driver plans shards, hands them to a pool of :class:`synthgen.generate.actor.ShardGenerator` actors (two in
flight per actor, so a slow actor simply takes fewer), and records each committed shard in the manifest.
Actors write their shards themselves; only small shard records travel back. An actor that dies is
restarted by Ray and its shard retried; when restarts run out the shard goes to another actor. Because a
shard's bytes depend only on its indices, a retried or resumed shard is identical to a first attempt.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

from synthgen import storage
from synthgen.checkpoint import DEFAULT_MODEL, bundled_models, inspect_checkpoint
from synthgen.dataset import manifest as mf
from synthgen.dataset.capacity import SpaceCheck
from synthgen.dataset.files import layout_of
from synthgen.dataset.output import (
    finish_output,
    output_lock,
    plan_output,
    write_output,
)
from synthgen.generate.config import (
    RunConfig,
    RunSummary,
    WorkerConfig,
    check_run_settings,
)
from synthgen.generate.engine.pool import ActorPool
from synthgen.generate.engine.session import ray_session
from synthgen.generate.plan import parse_label_plan, plan_shards

MANIFEST_SAVE_INTERVAL_S = 1.0


def run(config: RunConfig) -> RunSummary:
    """Generate (or finish) the dataset described by ``config``.

    Returns:
        What was written, and how fast.
    """
    t0 = time.perf_counter()
    fresh, model_source = _plan_job(config)
    loc = storage.locate(config.out)
    summary = RunSummary(config.out, config.count, 0, 0, 0.0)
    with output_lock(loc):
        manifest, replace = plan_output(loc, fresh, config.overwrite)  # refusals first: nothing written yet
        layout = layout_of(manifest)  # of the dataset it continues (a 0.6.0 one: unmarked PNGs)
        if len(manifest.shards) == manifest.num_shards:
            write_output(loc, manifest, replace)
        else:
            worker = WorkerConfig(model_source, fresh.model["fingerprint"], config.out, layout, config.seed,
                                  fresh.job["labels"], config.batch_size, config.precision,
                                  allow_import=config.allow_import, sampler=fresh.job.get("sampler"))
            with ray_session(config.address):
                pool = ActorPool(config, worker)  # the cluster takes the job, or refuses it, before any write
                try:
                    for warning in mf.record_made_on(manifest, pool.made_on, loc.uri):  # or refuses: no write yet
                        print(warning, file=sys.stderr, flush=True)
                    write_output(loc, manifest, replace)
                    _generate(config, pool, manifest, loc, summary)
                finally:
                    pool.shutdown()
        finish_output(loc, manifest)
    summary.bytes = sum(r.bytes for r in manifest.shards.values())
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan_job(config: RunConfig) -> tuple[mf.Manifest, str]:
    check_run_settings(config)
    ckpt, fingerprint = inspect_checkpoint(config.model)  # the actors build the model; the driver needs no torch
    source = model_reference(config.model)
    fresh = mf.new_manifest(config, ckpt, fingerprint, source, parse_label_plan(config.labels, ckpt.class_names))
    return fresh, source


def model_reference(model: str | None) -> str:
    """How the manifest names the model: a bundled name as is, a local path made absolute, a URI as is."""
    ref = model or DEFAULT_MODEL
    if ref in bundled_models() or storage.is_uri(ref):
        return ref
    return os.path.abspath(ref)


def _generate(config: RunConfig, pool: ActorPool, manifest: mf.Manifest, loc: storage.Location,
              summary: RunSummary) -> None:
    summary.lanes, summary.device, summary.gpu_ids = [s.lanes for s in pool.shapes], pool.device, pool.gpu_ids
    if config.precision == "fp16" and pool.device == "cpu":
        # measured on the benchmark VM (AVX-512 BF16, no AVX-512 FP16): 20,000 images at 459 images/s against
        # 11,803 for fp32 and 19,278 for bf16. Warned, not refused: it is a valid dataset identity.
        print("warning: --precision fp16 on CPU actors: torch's fp16 CPU path ran ~25x slower than fp32 on the "
              "benchmark VM; bf16 is the fast reduced precision on CPUs", file=sys.stderr, flush=True)
    todo = (s for s in plan_shards(config.count, config.shard_size) if s.shard_id not in manifest.shards)
    bar = tqdm(total=config.count, initial=manifest.rows_done(), unit="img", unit_scale=True,
               disable=not config.progress, desc="generating", smoothing=0.1)
    saver = _ManifestSaver(loc, manifest)
    space = SpaceCheck(loc, manifest)
    done = manifest.rows_done()

    shown = done  # what the bar shows (a disabled tqdm keeps no count)

    def show(rows_in_flight: int) -> None:  # the bar moves per batch; a retried shard never moves it back
        nonlocal shown
        if done + rows_in_flight > shown:
            bar.update(done + rows_in_flight - shown)
            shown = done + rows_in_flight

    t0 = time.perf_counter()
    try:
        for record in pool.map_unordered(todo, summary, on_progress=show):
            manifest.shards[record.shard_id] = record
            summary.generated += record.rows
            done += record.rows
            show(0)
            saver.maybe_save()
            space(config.count - done - pool.images_in_flight())
    finally:
        summary.generate_seconds = time.perf_counter() - t0
        saver.save()
        bar.close()


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
