"""The generation actor's body, a plain callable: load the model once, turn shard specs into shards.

Ray wraps this class in :mod:`synthgen.engine`; tests call it directly, without Ray (as in Ray's
batch-inference pattern). Encoding and writing of one batch overlap the generation of the next, on a
single helper thread, so at most two batches are in memory.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from synthgen import storage
from synthgen.checkpoint import load_checkpoint
from synthgen.errors import SynthgenError
from synthgen.imaging import encode_png
from synthgen.manifest import ShardRecord
from synthgen.plan import LabelPlan, ShardSpec, image_seeds
from synthgen.sampling import generate
from synthgen.writers import Layout, ShardWriter


@dataclass(frozen=True)
class WorkerConfig:
    """What every actor of a job needs; small and picklable, so Ray ships it to each actor."""

    model: str
    fingerprint: str
    out: str
    layout: Layout
    seed: int
    labels: dict  # LabelPlan.to_json()
    batch_size: int = 256
    precision: str = "fp32"
    device: str = "auto"  # auto = cuda when this process sees a GPU
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    allow_import: bool = False


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
        ckpt = load_checkpoint(config.model, device=self.device, allow_import=config.allow_import)
        if ckpt.fingerprint != config.fingerprint:
            raise SynthgenError(f"{config.model}: the model changed since the job started "
                                f"(fingerprint {ckpt.fingerprint[:12]}, job has {config.fingerprint[:12]})")
        self.model = ckpt.model
        self.latent_dim = ckpt.config.latent_dim
        self.label_plan = LabelPlan.from_json(config.labels)
        self.loc = storage.locate(config.out)
        self.encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthgen-encode")

    def __call__(self, spec: ShardSpec) -> ShardRecord:
        writer = ShardWriter(self.loc, self.config.layout, spec)
        pending: Future | None = None
        try:
            for start in range(spec.start, spec.stop, self.config.batch_size):
                indices = np.arange(start, min(start + self.config.batch_size, spec.stop), dtype=np.int64)
                seeds = image_seeds(self.config.seed, indices)
                labels = self.label_plan.labels(indices)
                images = generate(self.model, seeds, labels, batch_size=self.config.batch_size,
                                  precision=self.config.precision, latent_dim=self.latent_dim)
                if pending is not None:
                    pending.result()  # keeps order and bounds memory to two batches
                pending = self.encoder.submit(_encode_and_add, writer, indices, seeds, labels, images)
            if pending is not None:
                pending.result()
            return writer.commit()
        except BaseException:
            if pending is not None:
                pending.cancel()
            writer.abort()
            raise

    def ping(self) -> str:
        """For the engine's start-up check: which device this actor runs on."""
        return self.device


def _encode_and_add(writer: ShardWriter, indices, seeds, labels, images: np.ndarray) -> None:
    writer.add(indices, seeds, labels, [encode_png(image) for image in images])
