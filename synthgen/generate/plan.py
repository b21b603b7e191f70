"""Pure planning: (count, base seed, shard size, label plan) -> shards, per-image seeds and labels.

Nothing here imports torch or ray. Image i of a job is fully determined by (model, base seed S, i, label
plan); shard size, batch size, actor count and retries only decide who computes it and where it is stored.

The rules (stable across versions; changing one changes every dataset's bytes):

- shard j covers indices [j*K, min((j+1)*K, N));
- image i's seed is the 64-bit word w1:w0 of Philox4x32-10 with key (lo32(S), hi32(S)) and counter
  (lo32(i), hi32(i), 0, 0); its noise is :func:`synthgen.generate.rng.normal_from_seeds` of that seed, so a row's
  ``seed`` column alone reproduces its noise;
- labels: ``balanced`` gives image i the class i mod K; ``single`` one class; ``weights`` a low-discrepancy
  (golden-ratio Weyl) sequence u_i = frac((i+1) / phi), computed exactly in 64-bit integers, and class c
  where u_i falls in the c-th slice of the cumulative weights, so every stretch of indices holds the
  classes in very nearly the asked proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from synthgen.dataset.format import UNLABELED
from synthgen.errors import SynthgenError
from synthgen.generate.rng import philox4x32, split64

MAX_SEED = 2**64 - 1
MAX_COUNT = 2**63 - 1  # indices are int64 (the ``index`` column, and numpy's index arithmetic)
PRECISIONS = ("fp32", "bf16", "fp16")
# How the generator runs while sampling (generate.inference_form): batch norms folded into the layer before
# them, thin stride-2 ConvTranspose layers as sub-pixel convolutions, weights channels-last. Other kernels run, so a
# few pixels move by one level: it is recorded, with the precision, in every manifest. Datasets of synthgen
# 0.1.0 used "plain".
INFERENCE_FORM = "bn-folded,subpixel-thin-deconv,channels-last"
INFERENCE_FORMS = ("plain", INFERENCE_FORM)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # round(2**64 / phi), odd


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work and of storage: the images with indices in [start, stop)."""

    shard_id: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start

    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=np.int64)


def num_shards(count: int, shard_size: int) -> int:
    return -(-count // shard_size)


def shard_spec(shard_id: int, count: int, shard_size: int) -> ShardSpec:
    """Shard ``shard_id`` of a job: indices [j*K, min((j+1)*K, N))."""
    return ShardSpec(shard_id, shard_id * shard_size, min((shard_id + 1) * shard_size, count))


def shard_of(index: int, shard_size: int) -> int:
    """The shard that holds image ``index``."""
    return index // shard_size


def plan_shards(count: int, shard_size: int) -> Iterator[ShardSpec]:
    """The shards of a job of ``count`` images, lazily (a million-image job holds no list of them).

    Args:
        count: images in the job, N >= 1.
        shard_size: images per shard, K >= 1.

    Returns:
        ShardSpec j = [j*K, min((j+1)*K, N)) for j = 0 .. ceil(N/K)-1.
    """
    check_counts(count, shard_size)
    for j in range(num_shards(count, shard_size)):
        yield shard_spec(j, count, shard_size)


def check_counts(count: int, shard_size: int) -> None:
    if count < 1:
        raise SynthgenError(f"--count must be at least 1, got {count}")
    if count > MAX_COUNT:
        raise SynthgenError(f"--count must be at most 2**63-1 (image indices are int64), got {count}")
    if shard_size < 1:
        raise SynthgenError(f"--shard-size must be at least 1, got {shard_size}")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SynthgenError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise SynthgenError(f"--seed must be between 0 and 2**64-1, got {seed}")


def image_seeds(base_seed: int, indices: np.ndarray) -> np.ndarray:
    """Per-image 64-bit seeds for ``indices`` under base seed ``base_seed`` (see the module rules).

    Returns:
        uint64 array shaped like ``indices``.
    """
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
    lo, hi = split64(idx)
    counter = np.stack([lo, hi, np.zeros_like(lo), np.zeros_like(lo)], axis=-1)  # (n, 4)
    key = np.array([base_seed & 0xFFFFFFFF, base_seed >> 32], dtype=np.uint64)
    words = philox4x32(counter, key)
    seeds = (words[:, 1] << np.uint64(32)) | words[:, 0]
    return seeds.reshape(np.shape(indices))


@dataclass(frozen=True)
class LabelPlan:
    """Which class each index gets. ``kind`` is none (unconditional model), balanced, single or weights."""

    kind: str
    class_names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()  # normalised, one per class (kind == "weights" or "single")

    def labels(self, indices: np.ndarray) -> np.ndarray:
        """int64 class of each index; -1 for an unconditional model."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.kind == "none":
            return np.full(idx.shape, UNLABELED, dtype=np.int64)
        if self.kind == "balanced":
            return idx % len(self.class_names)
        if self.kind == "single":
            return np.full(idx.shape, self.weights.index(1.0), dtype=np.int64)
        u = (idx.astype(np.uint64) + np.uint64(1)) * _GOLDEN  # wraps mod 2**64: frac((i+1)/phi)
        return np.searchsorted(self._thresholds(), u, side="right").astype(np.int64)

    def _thresholds(self) -> np.ndarray:
        cumulative = np.cumsum(self.weights)[:-1]
        return np.array([min(int(c * 2.0**64), 2**64 - 1) for c in cumulative], dtype=np.uint64)

    def to_json(self) -> dict:
        return {"kind": self.kind, "class_names": list(self.class_names), "weights": list(self.weights)}

    @classmethod
    def from_json(cls, raw: dict) -> LabelPlan:
        return cls(raw["kind"], tuple(raw["class_names"]), tuple(raw["weights"]))


def parse_label_plan(text: str | None, class_names: list[str]) -> LabelPlan:
    """Turn ``--labels`` into a plan.

    Args:
        text: None or "balanced" (equal classes), one class ("malignant" or "0"), or weights
            ("malignant=0.7,normal=0.3"; names or indices; normalised to sum 1).
        class_names: the model's classes; empty for an unconditional model.

    Returns:
        The label plan.
    """
    names = tuple(class_names)
    if not names:
        if text not in (None, "", "none"):
            raise SynthgenError(f"--labels {text!r}: this model is unconditional (it has no classes)")
        return LabelPlan("none")
    if text in (None, "", "balanced"):
        return LabelPlan("balanced", names)
    if "=" not in text:
        one = [0.0] * len(names)
        one[_class_index(text.strip(), names)] = 1.0
        return LabelPlan("single", names, tuple(one))
    weights = [0.0] * len(names)
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            raise SynthgenError(f"--labels: {part.strip()!r} is not name=weight") from None
        if not math.isfinite(w) or w < 0:
            raise SynthgenError(f"--labels: weight of {name.strip()!r} must be a number >= 0")
        weights[_class_index(name.strip(), names)] += w
    total = sum(weights)
    if total <= 0:
        raise SynthgenError("--labels: the weights add up to 0")
    return LabelPlan("weights", names, tuple(w / total for w in weights))


def _class_index(name: str, names: tuple[str, ...]) -> int:
    if name in names:
        return names.index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise SynthgenError(f"--labels: unknown class {name!r}; this model's classes are {', '.join(names)}")
