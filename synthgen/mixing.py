"""Real images as training items, the item every synthgen dataset yields, and real + synthetic mixing.

Every dataset in :mod:`synthgen.data` and here yields ``(image, label)``: a float ``(C, H, W)`` tensor in
[0, 1] (:func:`to_tensor`), or ``transform(PIL image)`` when a transform is given, and an int label (-1 for an
unconditional model). :class:`RealImageDataset` reads real images the way ``synthgen train`` does, so
:func:`mix` can interleave them with synthetic ones at a fixed fraction.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from synthgen.errors import SynthgenError
from synthgen.readers import ImageSet, are_placeholder_names, load_images

Transform = Callable[[Image.Image], Any]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 or uint16 (H, W, C) -> float32 (C, H, W) in [0, 1] (divided by 255 or 65535)."""
    top = float(np.iinfo(image.dtype).max)
    # np.array copies: arrays from PIL are read-only, which torch warns about
    return torch.from_numpy(np.array(image.transpose(2, 0, 1))).float().div_(top)  # (C, H, W)


class RealImageDataset(Dataset):
    """Real images (MedMNIST ``.npz``, class folders or Parquet, read by :func:`synthgen.readers.load_images`)
    yielding exactly what :class:`SyntheticImageDataset` yields."""

    def __init__(self, source: str | ImageSet, split: str = "train", transform: Transform | None = None):
        self.data = source if isinstance(source, ImageSet) else load_images(str(source), split)
        self.class_names = self.data.class_names
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.data.images[i], int(self.data.labels[i])  # (H, W, C) uint8 or uint16 (I;16 for PIL)
        if self.transform is not None:
            return self.transform(Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)), label
        return to_tensor(image), label


class MixedDataset(Dataset):
    """Real and synthetic items interleaved so that every prefix holds the asked synthetic fraction.

    Position ``i`` is synthetic when ``floor((i+1)*S/N) > floor(i*S/N)`` (S synthetic of N in all), so the
    fraction holds exactly overall and to within one item in any prefix; which real or synthetic item comes
    next follows a seeded permutation of each source (cycled when more are needed than it holds).
    """

    def __init__(self, real: Dataset, synthetic: Dataset, synthetic_fraction: float, length: int | None = None,
                 seed: int = 0):
        if not 0.0 <= synthetic_fraction <= 1.0:
            raise SynthgenError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
        _check_same_classes(real, synthetic)
        if length is None:  # use every real item once, and as many synthetic as the fraction asks
            if synthetic_fraction == 1.0:
                length = len(synthetic)
            else:
                length = len(real) + round(len(real) * synthetic_fraction / (1 - synthetic_fraction))
        self.real, self.synthetic, self.length = real, synthetic, int(length)
        self.num_synthetic = round(self.length * synthetic_fraction)
        for name, ds, need in (("real", real, self.length - self.num_synthetic),
                               ("synthetic", synthetic, self.num_synthetic)):
            if need and len(ds) == 0:
                raise SynthgenError(f"mix: the {name} dataset is empty but {need} {name} items are asked for")
        rng = np.random.default_rng(seed)
        self._real_order = rng.permutation(len(real))
        self._syn_order = rng.permutation(len(synthetic))
        self.class_names = getattr(real, "class_names", None) or getattr(synthetic, "class_names", None)

    def __len__(self) -> int:
        return self.length

    def source(self, i: int) -> tuple[str, int]:
        """Which dataset position ``i`` comes from ("real" or "synthetic") and the item's index in it."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a mix of {self.length} items")
        s, n = self.num_synthetic, self.length
        synthetic_before = i * s // n
        if (i + 1) * s // n > synthetic_before:
            return "synthetic", int(self._syn_order[synthetic_before % len(self._syn_order)])
        real_before = i - synthetic_before
        return "real", int(self._real_order[real_before % len(self._real_order)])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        which, j = self.source(int(i))
        return (self.synthetic if which == "synthetic" else self.real)[j]


def _check_same_classes(real: Dataset, synthetic: Dataset) -> None:
    a, b = getattr(real, "class_names", None), getattr(synthetic, "class_names", None)
    # names "0", "1", ... are a reader's placeholders (data without names): they match by position only
    named = a and b and not are_placeholder_names(a) and not are_placeholder_names(b)
    if a and b and (len(a) != len(b) or (named and list(a) != list(b))):
        raise SynthgenError(f"mix: real data has classes {', '.join(a)} but the synthetic data has "
                            f"{', '.join(b)}; labels would not mean the same thing")


def mix(real: Dataset, synthetic: Dataset, synthetic_fraction: float = 0.5, length: int | None = None,
        seed: int = 0) -> MixedDataset:
    """Real + synthetic training data with a fixed synthetic fraction (augmentation).

    Args:
        real: e.g. a :class:`RealImageDataset`.
        synthetic: e.g. a :class:`SyntheticImageDataset`; both must yield the same kind of items.
        synthetic_fraction: share of synthetic items, 0 to 1.
        length: total items; default: every real item once plus the synthetic ones the fraction needs.
        seed: decides which items of each source come where.

    Returns:
        A map-style dataset in which exactly ``round(length * synthetic_fraction)`` items are synthetic.
    """
    return MixedDataset(real, synthetic, synthetic_fraction, length, seed)
