"""The generation actor's body, a plain callable: load the model once, turn shard specs into shards.

Ray wraps this class in :mod:`synthgen.engine`; tests call it directly, without Ray (as in Ray's
batch-inference pattern). PNG encoding of one batch runs on a pool of threads (the encoder releases the
GIL) while the main thread generates the next; rows reach the writer in index order, and at most
``MAX_PENDING_BATCHES`` batches are held, so memory stays flat whatever the shard size.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from synthgen import storage
from synthgen.checkpoint import load_checkpoint
from synthgen.errors import SynthgenError
from synthgen.imaging import encode_pngs
from synthgen.manifest import ShardRecord
from synthgen.plan import LabelPlan, ShardSpec, image_seeds
from synthgen.sampling import generate, make_deterministic
from synthgen.worker_config import WorkerConfig
from synthgen.writers import ShardWriter


MAX_PENDING_BATCHES = 2
CPU_BATCH, GPU_BATCH = 256, 2048


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ShardGenerator:
    """Callable ``(ShardSpec) -> ShardRecord`` that generates, encodes and commits one shard."""

    def __init__(self, config: WorkerConfig):
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.device = pick_device(config.device)
        make_deterministic(self.device)
        self.batch_size = config.batch_size or (GPU_BATCH if self.device.startswith("cuda") else CPU_BATCH)
        ckpt = load_checkpoint(config.model, device=self.device, allow_import=config.allow_import)
        if ckpt.fingerprint != config.fingerprint:
            raise SynthgenError(f"{config.model}: the model changed since the job started "
                                f"(fingerprint {ckpt.fingerprint[:12]}, job has {config.fingerprint[:12]})")
        self.model = ckpt.model
        self.latent_dim = ckpt.config.latent_dim
        self.label_plan = LabelPlan.from_json(config.labels)
        self.loc = storage.locate(config.out)
        self.encode_threads = config.encode_threads or config.threads or len(os.sched_getaffinity(0))
        self.encoder = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="synthgen-encode")
        self._warm_up()

    def _warm_up(self) -> None:
        """One padded batch, so kernel selection and JIT happen here, before the first shard is timed."""
        indices = np.zeros(1, dtype=np.int64)
        images = generate(self.model, image_seeds(self.config.seed, indices), self.label_plan.labels(indices),
                          batch_size=self.batch_size, precision=self.config.precision,
                          latent_dim=self.latent_dim)
        encode_pngs(images)

    def __call__(self, spec: ShardSpec) -> ShardRecord:
        writer = ShardWriter(self.loc, self.config.layout, spec)
        pending: deque = deque()
        try:
            for start in range(spec.start, spec.stop, self.batch_size):
                indices = np.arange(start, min(start + self.batch_size, spec.stop), dtype=np.int64)
                seeds = image_seeds(self.config.seed, indices)
                labels = self.label_plan.labels(indices)
                images = generate(self.model, seeds, labels, batch_size=self.batch_size,
                                  precision=self.config.precision, latent_dim=self.latent_dim)
                pending.append((indices, seeds, labels, self._encode(images)))
                if len(pending) >= MAX_PENDING_BATCHES:
                    self._write_oldest(writer, pending)
            while pending:
                self._write_oldest(writer, pending)
            return writer.commit()
        except BaseException:
            for *_, encoded in pending:
                for future in encoded if isinstance(encoded, list) else ():
                    future.cancel()
            writer.abort()
            raise

    def _encode(self, images: np.ndarray):
        """Start encoding a batch: futures of PNG chunks, or the pixels themselves for raw encoding."""
        if self.config.layout.encoding == "raw":
            return images
        chunks = np.array_split(images, min(self.encode_threads, len(images)))
        return [self.encoder.submit(encode_pngs, chunk) for chunk in chunks]

    @staticmethod
    def _write_oldest(writer: ShardWriter, pending: deque) -> None:
        indices, seeds, labels, encoded = pending.popleft()
        if isinstance(encoded, list):
            encoded = [png for future in encoded for png in future.result()]
        writer.add(indices, seeds, labels, encoded)
