"""The recipe for image i: per-image seeds -> noise -> generator -> uint8 (or, for a 16-bit model, uint16) pixels.
Arrays in, arrays out; no files.

:class:`ImageRecipe` is that recipe, cut into the stages a GPU actor pipelines: the host stage (noise and
labels, numpy, and their copy to the device started), the device stage (forward and uint8 conversion, copy
back started) and the wait for the copy back. :func:`generate` runs the stages one after the other; the
actor, ``synthgen show``, ``synthgen sample`` and training's sample grids all come through here, so they make
the same bytes on the same device.

Determinism across batching: CPU kernels pick another code path for small batch shapes (measured: batches
of 1-11 rows give a few pixels one level off from 12 and more), so a forward pass never runs fewer than
``MIN_BATCH`` rows (a shorter one is padded); from there on, rows per pass never change the pixels. Runs of
images are cut into passes of even size (:func:`pass_bounds`), not into full passes and a padded remainder.
Noise is made on the host from the per-image seeds (:mod:`synthgen.generate.rng`), so it is the same whichever
device runs the model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synthgen.generate.rng import normal_from_seeds

MIN_BATCH = 64
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteOutput(ValueError):
    """The generator gave inf or NaN for an image: clamping would turn it into arbitrary pixels."""

    def __init__(self, image: int, precision: str):
        self.image, self.precision = image, precision
        hint = ("; use --precision bf16, which has fp32's range (fp16 overflows above 65504)" if precision == "fp16"
                else "; the model itself overflows or holds inf/NaN weights")
        super().__init__(f"image {image}: the generator's output is not finite (inf or NaN) at precision "
                         f"{precision}{hint}")


@dataclass
class HostBatch:
    """The host stage's output: one forward pass's inputs, on their way to the device (on a CPU, already
    there), padded to at least MIN_BATCH rows."""

    z: torch.Tensor  # (rows, latent) float32
    y: torch.Tensor | None  # (rows,) int64, or None for an unconditional model
    count: int  # real rows; the rest is padding, computed and discarded


class Lane:
    """One lane's device resources, made once and reused batch after batch: on CUDA its own stream and
    pinned host buffers (so its copies run beside other lanes' forwards); on CPU nothing."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self.stream is not None:  # the model's weights were put on the device on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(device))
        self.buffers: dict[str, torch.Tensor] = {}

    def pinned(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A pinned host tensor of ``like``'s shape and dtype, grown when a larger pass comes."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != like.dtype or buffer.shape[1:] != like.shape[1:] \
                or len(buffer) < len(like):
            buffer = torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
            self.buffers[name] = buffer
        return buffer[: len(like)]

    def upload(self, name: str, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor; on CUDA through a pinned buffer, asynchronously on this lane's stream."""
        tensor = torch.from_numpy(array)
        if self.stream is None:
            return tensor
        staged = self.pinned(name, tensor)
        staged.copy_(tensor)
        return staged.to(self.device, non_blocking=True)


class PendingImages:
    """A pass's pixels on their way to the host; :meth:`result` waits for them, outside the device slot."""

    def __init__(self, pixels: torch.Tensor, finite: torch.Tensor, precision: str, copied=None):
        self.pixels, self.finite, self.precision, self.copied = pixels, finite, precision, copied

    def result(self) -> np.ndarray:
        """(count, H, W, C) uint8 (uint16 for a 16-bit model), owned by the caller; raises
        :class:`NonFiniteOutput` for a bad row."""
        if self.copied is not None:
            self.copied.synchronize()
        finite = self.finite.numpy()  # (count,) bool
        if not finite.all():
            raise NonFiniteOutput(int(np.argmin(finite)), self.precision)
        # a lane's pinned buffer is reused by its next pass: hand out a copy
        return self.pixels.numpy().copy() if self.copied is not None else self.pixels.numpy()


class ImageRecipe:
    """The recipe for image i, in stages: (model in its inference form, seeds, labels, precision) -> pixels.

    Args:
        model: a generator in eval mode on its device, ``model(z, labels) -> (B, C, H, W)`` in [-1, 1].
        precision: "fp32", "bf16" or "fp16" (autocast).
        latent_dim: the model's latent size; read from ``model.config`` when omitted.
        bit_depth: the checkpoint's (``CheckpointConfig.bit_depth``): 8 -> uint8 pixels, 16 -> uint16.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", latent_dim: int | None = None,
                 bit_depth: int = 8):
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
        if bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
        self.model, self.precision, self.bit_depth = model, precision, bit_depth
        self.latent_dim = latent_dim if latent_dim is not None else latent_dim_of(model)
        self.device = next(model.parameters()).device
        # a diffusion sampler pads to its own fixed chunk of rows; padding to MIN_BATCH would only add work
        self.min_rows = 1 if getattr(model, "chunk_rows", None) else MIN_BATCH

    def host_stage(self, seeds: np.ndarray, labels: np.ndarray | None, lane: Lane) -> HostBatch:
        """Noise and labels of one pass, padded to MIN_BATCH rows, and their copy to the device started on the
        lane's stream: numpy and a memcpy, so lanes run it side by side, outside the device slot."""
        seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
        rows = max(len(seeds), self.min_rows)
        z = _padded(normal_from_seeds(seeds, self.latent_dim), rows)  # (rows, latent)
        y = None if labels is None else _padded(np.asarray(labels, dtype=np.int64), rows)  # (rows,)
        with torch.cuda.stream(lane.stream) if lane.stream is not None else contextlib.nullcontext():
            return HostBatch(lane.upload("z", z), None if y is None else lane.upload("y", y), len(seeds))

    @torch.inference_mode()
    def device_stage(self, batch: HostBatch, lane: Lane) -> PendingImages:
        """Forward and uint8 conversion, then the copy back started; returns once the device has done the
        forward (so one slot holder at a time bounds the activations on the device), not the copy."""
        with torch.cuda.stream(lane.stream) if lane.stream is not None else contextlib.nullcontext():
            with _autocast(self.device, self.precision):
                out = self.model(batch.z, batch.y)[: batch.count]  # (count, C, H, W); after the copy in
            finite = finite_rows(out)  # (count,)
            pixels = to_pixels_tensor(out, self.bit_depth)  # (count, H, W, C) uint8 or uint16
            if lane.stream is None:
                return PendingImages(pixels, finite, self.precision)
            forward_done = torch.cuda.Event()
            forward_done.record(lane.stream)
            host_pixels = lane.pinned("pixels", pixels).copy_(pixels, non_blocking=True)
            host_finite = lane.pinned("finite", finite).copy_(finite, non_blocking=True)
            copied = torch.cuda.Event(blocking=True)  # its waiters sleep rather than spin a core each
            copied.record(lane.stream)
        forward_done.synchronize()
        return PendingImages(host_pixels, host_finite, self.precision, copied)

    def run(self, seeds: np.ndarray, labels: np.ndarray | None, lane: Lane) -> np.ndarray:
        """One pass, stage after stage: (count,) seeds -> (count, H, W, C) uint8 or uint16."""
        return self.device_stage(self.host_stage(seeds, labels, lane), lane).result()


def generate(
    model: nn.Module,
    seeds: np.ndarray,
    labels: np.ndarray | None,
    *,
    batch_size: int = 256,
    precision: str = "fp32",
    latent_dim: int | None = None,
    bit_depth: int = 8,
) -> np.ndarray:
    """Generate one image per seed, in passes of at most ``batch_size`` rows (:class:`ImageRecipe`).

    Args:
        model: a generator in eval mode, ``model(z, labels) -> (B, C, H, W)`` in [-1, 1].
        seeds: (N,) uint64 per-image seeds (:func:`synthgen.generate.plan.image_seeds`).
        labels: (N,) int64 classes, or None / all -1 for an unconditional model.
        batch_size: the most rows per forward pass; passes are sized evenly (:func:`pass_bounds`), and one
            under MIN_BATCH rows is padded to MIN_BATCH.
        precision: "fp32", "bf16" or "fp16" (autocast).
        latent_dim: the model's latent size; read from ``model.config`` when omitted.
        bit_depth: 8 (uint8 pixels) or 16 (uint16), as the checkpoint's config says.

    Returns:
        (N, H, W, C) uint8 images (uint16 for bit_depth 16).

    Raises:
        NonFiniteOutput: the model gave inf or NaN for an image.
    """
    recipe = ImageRecipe(model, precision, latent_dim, bit_depth)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    labels = conditional_labels(labels)
    lane = Lane(recipe.device)
    chunks = []
    for start, stop in pass_bounds(len(seeds), batch_size):
        try:
            chunks.append(recipe.run(seeds[start:stop], None if labels is None else labels[start:stop], lane))
        except NonFiniteOutput as err:
            raise NonFiniteOutput(start + err.image, precision) from None
    if not chunks:
        raise ValueError("no seeds given")
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def conditional_labels(labels: np.ndarray | None) -> np.ndarray | None:
    """None for an unconditional model's labels (None, empty or all -1), else the labels as an array."""
    if labels is None or len(labels) == 0 or np.all(np.asarray(labels) < 0):
        return None
    return np.asarray(labels)


def latent_dim_of(model: nn.Module) -> int:
    """The latent size a synthgen generator expects (its config's ``latent_dim``)."""
    config = getattr(model, "config", None)
    dim = getattr(config, "latent_dim", None)
    if dim is None and isinstance(config, dict):
        dim = config.get("latent_dim")
    if not isinstance(dim, int):
        raise ValueError("model has no config.latent_dim; pass latent_dim explicitly")
    return dim


def finite_rows(images: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) bool: whether each image is free of inf and NaN. On a CPU, one vectorised sum first
    (isfinite over a batch costs about as much as the uint8 conversion there): rows only when it is not finite."""
    if images.device.type == "cpu" and torch.isfinite(images.sum(dtype=torch.float32)):
        return torch.ones(len(images), dtype=torch.bool)
    return torch.isfinite(images).reshape(len(images), -1).all(dim=1)


def to_uint8_tensor(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8 on the same device, rounding half away from zero."""
    x = images.float().clamp(-1, 1)  # a new tensor, so the steps below may work in place
    x = x.add_(1).mul_(127.5).round_().to(torch.uint8)  # (B, C, H, W)
    return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def to_pixels_tensor(images: torch.Tensor, bit_depth: int = 8) -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) pixels of ``bit_depth`` on the same device: uint8 as
    :func:`to_uint8_tensor`, or uint16 = round((x + 1) * 65535 / 2) (checkpoint.INTENSITY_MAPPING)."""
    if bit_depth == 8:
        return to_uint8_tensor(images)
    x = images.float().clamp(-1, 1)  # a new tensor, so the steps below may work in place
    # float32 holds (x + 1) * 32767.5 to within 0.004 of a level: the rounding is the only loss
    x = x.add_(1).mul_(32767.5).round_().to(torch.int32).to(torch.uint16)  # (B, C, H, W)
    return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8 numpy array on the host."""
    return to_uint8_tensor(images).cpu().numpy()


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


def make_deterministic(device: torch.device | str) -> None:
    """Pin the numerics of the GPU path: no cuDNN autotuning (it picks kernels by timing, run to run) and
    no TF32 in fp32 convolutions, so a given card and precision always give the same pixels."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """Pad along axis 0 to ``size`` rows with zeros; padding rows are computed and discarded."""
    if len(rows) == size:
        return rows
    pad = np.zeros((size - len(rows),) + rows.shape[1:], dtype=rows.dtype)
    return np.concatenate([rows, pad])
