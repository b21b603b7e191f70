"""The generation actor's body, a plain callable: load the model once, turn shard specs into shards.

Ray wraps it in :mod:`synthgen.generate.engine.pool`; tests call it without Ray. ``lanes`` threads in one
process each take whole batches through the stages of :class:`~synthgen.generate.sampling.ImageRecipe`: noise
and labels on the host, the device slot (forward and uint8 conversion only), then, outside the slot, the copy
back, the PNG encoder and the writer, which gets rows in index order. Why lanes, and the measurements:
docs/design.md and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from synthgen import storage
from synthgen.checkpoint import load_checkpoint
from synthgen.dataset.files import file_encoder
from synthgen.dataset.manifest import ShardRecord
from synthgen.dataset.writers import ShardWriter
from synthgen.errors import SynthgenError
from synthgen.generate.config import WorkerConfig
from synthgen.generate.device import resolve_device
from synthgen.generate.diffusion_settings import with_sampler
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import LabelPlan, ShardSpec, image_seeds
from synthgen.generate.sampling import (
    MIN_BATCH,
    ImageRecipe,
    Lane,
    NonFiniteOutput,
    conditional_labels,
    make_deterministic,
    pass_bounds,
)

# Default rows per forward pass for a 28x28 image; larger images get proportionally fewer rows (never under
# MIN_BATCH). On CPU a batch's buffers must stay under the actor's fixed mmap threshold (config.allocator_env), or
# every batch page-faults them afresh: 256 rows do, 512 do not (measurements: docs/benchmarks.md, docs/design.md).
CPU_BATCH, GPU_BATCH = 256, 2048
REFERENCE_PIXELS = 28 * 28


def default_batch_size(device: str, image_shape: tuple[int, int, int]) -> int:
    """Rows per forward pass when the user gave none: enough to keep the device busy, bounded in memory."""
    base = GPU_BATCH if device.startswith("cuda") else CPU_BATCH
    _, height, width = image_shape
    return max(MIN_BATCH, base * REFERENCE_PIXELS // (height * width))


class ShardGenerator:
    """Callable ``(ShardSpec) -> ShardRecord`` that generates, encodes and commits one shard."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.device = str(resolve_device(config.device))
        on_gpu = self.device.startswith("cuda")
        self.lanes = config.lanes or len(os.sched_getaffinity(0))
        if not on_gpu:
            torch.set_num_threads(1)  # parallelism comes from the lanes, one core each
        make_deterministic(self.device)
        ckpt = load_checkpoint(config.model, device=self.device, allow_import=config.allow_import)
        if ckpt.fingerprint != config.fingerprint:
            raise SynthgenError(f"{config.model}: the model changed since the job started "
                                f"(fingerprint {ckpt.fingerprint[:12]}, job has {config.fingerprint[:12]})")
        self.model = with_sampler(prepare_model(ckpt.model), config.sampler)
        latent_dim = ckpt.config.latent_dim if config.sampler is None else self.model.latent_dim
        self.recipe = ImageRecipe(self.model, config.precision, latent_dim, ckpt.config.bit_depth)
        if ckpt.config.bit_depth != config.layout.bit_depth:
            raise SynthgenError(f"{config.model}: a {ckpt.config.bit_depth}-bit model, but the dataset holds "
                                f"{config.layout.bit_depth}-bit images")
        # the stages a lane runs; a simulated device (generate/simulated_device.py) swaps in a stand-in forward
        self.host_stage, self.device_stage = self.recipe.host_stage, self.recipe.device_stage
        self.batch_size = config.batch_size or default_batch_size(self.device, ckpt.config.image_shape)
        self.label_plan = LabelPlan.from_json(config.labels)
        self.encode = file_encoder(config.layout)  # PNG, DICOM or NIfTI bytes per image, in the lanes
        self.loc = storage.locate(config.out)
        # one batch on a GPU at a time bounds device memory; the other lanes' host work overlaps it
        self.device_slots = threading.BoundedSemaphore(1 if on_gpu else self.lanes)
        self.slot_seconds = 0.0  # time the slot was held: the device's busy time when one lane holds it
        self.progress: dict[int, int] = {}  # shard id -> rows handed to its writer, for the driver's bar
        self._lane = threading.local()
        self.pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="synthgen-lane")
        # one-time set-up and kernel JIT happen here, not in a timed shard (a pass of another row count, e.g.
        # 250 for a 10,000-image shard, may still build its own oneDNN primitives on first use)
        # (a diffusion sampler's network only ever sees chunks of one shape: one pass of one chunk does it)
        if config.sampler is None:
            self._batch(np.zeros(self.batch_size, dtype=np.int64))
        else:
            self._warm_diffusion()

    def __call__(self, spec: ShardSpec) -> ShardRecord:
        writer = ShardWriter(self.loc, self.config.layout, spec)
        pending: deque[Future] = deque()
        self.progress[spec.shard_id] = 0
        try:
            for start, stop in pass_bounds(spec.count, self.batch_size):  # even passes: no padding rows
                indices = np.arange(spec.start + start, spec.start + stop, dtype=np.int64)
                pending.append(self.pool.submit(self._batch, indices))
                if len(pending) > self.lanes:
                    self._add(writer, spec, pending.popleft().result())
            while pending:
                self._add(writer, spec, pending.popleft().result())
            return writer.commit()
        except BaseException:
            for future in pending:
                future.cancel()
            writer.abort()
            raise
        finally:
            self.progress.pop(spec.shard_id, None)

    def _add(self, writer: ShardWriter, spec: ShardSpec, batch: tuple) -> None:
        writer.add(*batch)
        self.progress[spec.shard_id] += len(batch[0])

    def _batch(self, indices: np.ndarray) -> tuple:
        """One lane's work: ``(indices, seeds, labels, encoded files or raw pixels)`` for a run of indices."""
        seeds = image_seeds(self.config.seed, indices)
        labels = self.label_plan.labels(indices)
        lane = self._lane_resources()
        host = self.host_stage(seeds, conditional_labels(labels), lane)  # before the slot, beside the other lanes
        with self.device_slots:
            started = time.perf_counter()
            copying = self.device_stage(host, lane)  # the forward and the conversion only
            self.slot_seconds += time.perf_counter() - started
        try:
            images = copying.result()  # (B, H, W, C): the copy back, waited for outside the slot
        except NonFiniteOutput as err:
            raise SynthgenError(str(NonFiniteOutput(int(indices[err.image]), err.precision))) from None
        encoded = images if self.config.layout.encoding == "raw" else self.encode(indices, labels, images)
        return indices, seeds, labels, encoded

    def _warm_diffusion(self) -> None:
        z = torch.zeros(self.model.chunk_rows, self.model.latent_dim, device=self.recipe.device)
        labels = torch.zeros(len(z), dtype=torch.int64, device=self.recipe.device)
        with torch.inference_mode():
            self.model.shape_probe(z, labels if self.label_plan.class_names else None)

    def _lane_resources(self) -> Lane:
        """This lane thread's stream and pinned buffers, made on its first batch."""
        lane = getattr(self._lane, "resources", None)
        if lane is None:
            lane = self._lane.resources = Lane(self.recipe.device)
        return lane
