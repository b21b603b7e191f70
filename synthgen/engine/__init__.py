"""The engine, the only package that imports ray to generate: the run, progress and resume here; the actor pool
and its retries in :mod:`synthgen.engine.pool`, actor placement in :mod:`synthgen.engine.placement`, which
cluster a run joins or starts in :mod:`synthgen.engine.session`.

The driver plans shards, hands them to a pool of :class:`synthgen.worker.ShardGenerator` actors (two in
flight per actor, so a slow actor simply takes fewer), and records each committed shard in the manifest.
Actors write their shards themselves; only small shard records travel back. An actor that dies is
restarted by Ray and its shard retried; when restarts run out the shard goes to another actor. Because a
shard's bytes depend only on its indices, a retried or resumed shard is identical to a first attempt.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from synthgen import manifest as mf
from synthgen import storage
from synthgen.capacity import SpaceCheck
from synthgen.checkpoint import DEFAULT_MODEL, bundled_models, inspect_checkpoint
from synthgen.engine.placement import split_lanes  # noqa: F401 (part of the engine's interface)
from synthgen.engine.pool import ActorPool
from synthgen.engine.session import ray_session
from synthgen.errors import SynthgenError
from synthgen.imaging import png_encoder_name, png_settings
from synthgen.output import output_lock, plan_output, write_output
from synthgen.plan import INFERENCE_FORM, parse_label_plan, plan_shards
from synthgen.settings import check_run_settings
from synthgen.worker_config import WorkerConfig
from synthgen.writers import PARQUET_COMPRESSION, RAW_LAYOUT, Layout, write_png_metadata

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
        manifest, replace = plan_output(loc, fresh, config.overwrite)  # refusals first: nothing written yet
        if len(manifest.shards) == manifest.num_shards:
            write_output(loc, manifest, replace)
        else:
            worker = WorkerConfig(model_source, fresh.model["fingerprint"], config.out, layout, config.seed,
                                  fresh.job["labels"], config.batch_size, config.precision,
                                  allow_import=config.allow_import)
            with ray_session(config.address):
                pool = ActorPool(config, worker)  # the cluster takes the job, or refuses it, before any write
                try:
                    write_output(loc, manifest, replace)
                    _generate(config, pool, manifest, loc, summary)
                finally:
                    pool.shutdown()
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
    t0 = time.perf_counter()
    try:
        for record in pool.map_unordered(todo, summary):
            manifest.shards[record.shard_id] = record
            summary.generated += record.rows
            done += record.rows
            bar.update(record.rows)
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


def _finish(loc: storage.Location, manifest: mf.Manifest) -> None:
    if len(manifest.shards) < manifest.num_shards:
        raise SynthgenError(f"{len(manifest.shards)} of {manifest.num_shards} shards done; "
                            "re-run the same command to finish")
    if manifest.job["format"] == "png":
        write_png_metadata(loc, [manifest.shards[j].file for j in sorted(manifest.shards)],
                           tuple(manifest.model.get("class_names") or ()))
    manifest.status = "complete"
    mf.write_card(loc, manifest)
    mf.save(loc, manifest)
