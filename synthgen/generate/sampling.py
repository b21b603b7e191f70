"""Per-image seeds -> noise -> generator -> uint8 images. Takes a model and seeds, returns arrays; no files.

Determinism across batching: CPU kernels pick another code path for small batch shapes (measured: batches
of 1-11 rows give a few pixels one level off from 12 and more), so a forward pass never runs fewer than
``MIN_BATCH`` rows (a shorter one is padded); from there on, rows per pass never change the pixels. Runs of
images are cut into passes of even size (:func:`pass_bounds`), not into full passes and a padded remainder:
a 10,000-image shard at 256 rows is 40 passes of 250 rather than 40 of 256 with 240 rows of padding (measured
end to end on 2 cores, 6 interleaved pairs: +1.9% images/s). Noise is made on the host from the per-image
seeds (:mod:`synthgen.generate.rng`), so it is the same whichever device runs the model.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from synthgen.generate.rng import normal_from_seeds

MIN_BATCH = 64
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def latent_dim_of(model: nn.Module) -> int:
    """The latent size a synthgen generator expects (its config's ``latent_dim``)."""
    config = getattr(model, "config", None)
    dim = getattr(config, "latent_dim", None)
    if dim is None and isinstance(config, dict):
        dim = config.get("latent_dim")
    if not isinstance(dim, int):
        raise ValueError("model has no config.latent_dim; pass latent_dim explicitly")
    return dim


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8, rounding half away from zero."""
    x = images.float().clamp(-1, 1)  # a new tensor, so the steps below may work in place
    x = x.add_(1).mul_(127.5).round_().to(torch.uint8)  # (B, C, H, W)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, H, W, C)


def _autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def generate(
    model: nn.Module,
    seeds: np.ndarray,
    labels: np.ndarray | None,
    *,
    batch_size: int = 256,
    precision: str = "fp32",
    latent_dim: int | None = None,
) -> np.ndarray:
    """Generate one image per seed.

    Args:
        model: a generator in eval mode, ``model(z, labels) -> (B, C, H, W)`` in [-1, 1].
        seeds: (N,) uint64 per-image seeds (:func:`synthgen.generate.plan.image_seeds`).
        labels: (N,) int64 classes, or None / all -1 for an unconditional model.
        batch_size: the most rows per forward pass; passes are sized evenly (:func:`pass_bounds`), and one
            under MIN_BATCH rows is padded to MIN_BATCH.
        precision: "fp32", "bf16" or "fp16" (autocast).
        latent_dim: the model's latent size; read from ``model.config`` when omitted.

    Returns:
        (N, H, W, C) uint8 images.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    if labels is not None and (len(labels) == 0 or np.all(np.asarray(labels) < 0)):
        labels = None
    dim = latent_dim if latent_dim is not None else latent_dim_of(model)
    device = next(model.parameters()).device
    chunks = []
    for start, stop in pass_bounds(len(seeds), batch_size):
        rows = max(stop - start, MIN_BATCH)
        z = _padded(normal_from_seeds(seeds[start:stop], dim), rows)  # (rows, latent)
        y = None if labels is None else _padded(np.asarray(labels[start:stop], dtype=np.int64), rows)
        z_t = _to_device(z, device)
        y_t = None if y is None else _to_device(y, device)
        with _autocast(device, precision):
            out = model(z_t, y_t)  # (rows, C, H, W)
        chunks.append(to_uint8(out[: stop - start]))
    if not chunks:
        raise ValueError("no seeds given")
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def pass_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """Cut ``count`` rows into the fewest forward passes of at most ``max(batch_size, MIN_BATCH)`` rows,
    of sizes that differ by one at most: 10,000 rows at 256 give 40 passes of 250.

    Args:
        count: rows to generate.
        batch_size: the most rows per pass (at least 1).

    Returns:
        (start, stop) of each pass, in order, covering [0, count).
    """
    passes = -(-count // max(batch_size, MIN_BATCH))
    edges = [k * count // passes for k in range(passes + 1)] if passes else [0]  # floors: sizes differ by <= 1
    return list(zip(edges, edges[1:]))


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor
    # pinned host memory lets the copy run asynchronously with the host's work on the next batch
    return tensor.pin_memory().to(device, non_blocking=True)


def make_deterministic(device: torch.device | str) -> None:
    """Pin the numerics of the GPU path: no cuDNN autotuning (it picks kernels by timing, run to run) and
    no TF32 in fp32 convolutions, so a given card and precision always give the same pixels."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """Pad along axis 0 to ``size`` rows with zeros; padding rows are computed and discarded."""
    if len(rows) == size:
        return rows
    pad = np.zeros((size - len(rows),) + rows.shape[1:], dtype=rows.dtype)
    return np.concatenate([rows, pad])
