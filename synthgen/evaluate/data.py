"""What ``synthgen eval`` compares: both sides read, checked to match, and subsampled (seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen import storage
from synthgen.data import SyntheticImageDataset
from synthgen.dataset.format import UNLABELED
from synthgen.errors import SynthgenError
from synthgen.evaluate.config import EvalConfig
from synthgen.readers import ImageSet, are_placeholder_names, load_images

HOLDOUT = 0.2  # share of --real held out as test data when it has no test split


@dataclass
class EvalData:
    """Both sides, checked to match: uint8 (N, H, W, C) images and labels in the real data's class indices."""

    train: ImageSet
    train_rows: np.ndarray  # each training image's row in --real's training data (reports name these)
    test: ImageSet
    test_split: str
    synthetic: np.ndarray
    synthetic_labels: np.ndarray  # -1 everywhere for an unconditional model
    synthetic_index: np.ndarray  # each image's index in the dataset
    synthetic_rows: int  # in the whole dataset
    fingerprint: str
    class_names: list[str]  # the real data's, or the model's where the real data has only "0", "1", ...

    @property
    def conditional(self) -> bool:
        return bool((self.synthetic_labels >= 0).all())


def load_eval_data(config: EvalConfig) -> EvalData:
    """Read both sides, refuse mismatched shapes or classes, subsample to ``max_images`` (seeded)."""
    dataset = SyntheticImageDataset(config.synthetic)  # refuses incomplete or empty datasets
    train, train_rows, test, test_split = _real_splits(config.real, config.seed)
    _check_shape(train, dataset.info.image_shape, config.real)
    mapping = class_mapping(train.class_names, dataset.class_names, config.real)
    rng = np.random.default_rng(config.seed)
    keep = _cap(len(train.images), config.max_images, rng)
    train, train_rows = _subset(train, keep), train_rows[keep]
    test = _subset(test, _cap(len(test.images), config.max_images, rng))
    take = np.sort(rng.choice(len(dataset), min(len(dataset), config.max_images), replace=False))
    images, labels, index = dataset.arrays(take)
    h, w, c = images.shape[1:]
    _check_shape(train, (c, h, w), config.real)  # a dataset without manifest: known only now
    labels = mapping[labels] if mapping is not None else np.full(len(labels), UNLABELED)
    manifest = dataset.info.manifest
    unnamed_real = mapping is not None and are_placeholder_names(train.class_names)
    names = dataset.class_names if unnamed_real else train.class_names
    return EvalData(train, train_rows, test, test_split, images, labels, index, len(dataset),
                    manifest.model.get("fingerprint", "") if manifest else "", list(names))


def _check_shape(real: ImageSet, synthetic: tuple[int, ...] | None, source: str) -> None:
    if synthetic is not None and tuple(real.shape) != tuple(synthetic):
        raise SynthgenError(f"{source}: images are {'x'.join(map(str, real.shape))} (C x H x W) but the synthetic "
                            f"dataset's are {'x'.join(map(str, synthetic))}; evaluate against the data the model "
                            "learned")


def _real_splits(path: str, seed: int) -> tuple[ImageSet, np.ndarray, ImageSet, str]:
    loc = storage.locate(path)
    if not storage.exists(loc, loc.root):  # checked here: the reader's message names train's --data flag
        raise SynthgenError(f"--real {path}: no such file or directory")
    train = load_images(path, "train")
    try:
        test = load_images(path, "test")
    except SynthgenError:  # an .npz without test arrays
        test = None
    if test is not None and not (len(test.images) == len(train.images) and np.array_equal(test.images,
                                                                                          train.images)):
        return train, np.arange(len(train.images)), test, "test"
    # no separate test split (image folder, one Parquet set): hold out a stratified, seeded share
    rng = np.random.default_rng([seed, 1])
    held = np.zeros(len(train.labels), bool)
    for c in np.unique(train.labels):
        members = rng.permutation(np.flatnonzero(train.labels == c))
        held[members[:max(1, round(len(members) * HOLDOUT))]] = True
    rows = np.flatnonzero(~held)
    return _subset(train, rows), rows, _subset(train, np.flatnonzero(held)), \
        f"held-out {HOLDOUT:.0%} of --real (it has no test split)"


def _cap(n: int, most: int, rng: np.random.Generator) -> np.ndarray:
    """Rows to keep: all of them, or a seeded sorted sample of ``most``."""
    return np.arange(n) if n <= most else np.sort(rng.choice(n, most, replace=False))


def _subset(data: ImageSet, rows: np.ndarray) -> ImageSet:
    return ImageSet(data.images[rows], data.labels[rows], data.class_names, data.sha256, data.source)


def class_mapping(real: list[str], synthetic: list[str], source: str) -> np.ndarray | None:
    """Synthetic label -> real label, or None for an unconditional model.

    Names must match (in any order); a side whose names are just "0", "1", ... (no names in the file)
    matches any names of the same count, by position.
    """
    if not synthetic:
        return None
    if sorted(real) == sorted(synthetic):
        return np.array([real.index(name) for name in synthetic])
    if len(real) == len(synthetic) and (are_placeholder_names(real) or are_placeholder_names(synthetic)):
        return np.arange(len(synthetic))
    raise SynthgenError(f"{source}: classes {', '.join(real)} do not match the synthetic dataset's "
                        f"{', '.join(synthetic)}; evaluate against the data the model learned")
