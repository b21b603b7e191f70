"""Ways to add synthetic images to real training data (the recipes ``synthgen eval --recipe`` compares).

- ``all``: every real image plus every synthetic one (what "real + synthetic" meant before recipes);
- ``ratio:R``: R synthetic images per real one, drawn across classes as the synthetic data has them
  (``ratio:1`` puts half synthetic images in each shuffled batch on average, as ``mix(..., 0.5)`` does);
- ``fraction:F``: a share F of synthetic images in the training set, that is ``ratio:F/(1-F)``;
- ``topup``: synthetic images of the rarer classes only, until each class has as many images as the largest;
- ``pretrain``: train on the synthetic images first, then fine-tune on the real ones only.

The row choices are seeded and made here on label arrays, so ``synthgen eval`` and the PyTorch datasets of
:func:`recipe_datasets` pick the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

KINDS = ("all", "ratio", "fraction", "topup", "pretrain")


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: its kind and, for ``ratio``, synthetic images per real image."""

    kind: str
    ratio: float | None = None

    @property
    def name(self) -> str:
        return f"ratio:{self.ratio:g}" if self.kind == "ratio" else self.kind


def parse_recipe(text: str) -> Recipe:
    """``all``, ``ratio:R`` (R > 0), ``fraction:F`` (0 < F < 1), ``topup`` or ``pretrain``; ValueError else."""
    kind, _, value = text.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown recipe {text!r}; use one of all, ratio:R, fraction:F, topup, pretrain")
    if kind in ("ratio", "fraction"):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"recipe {text!r}: give a number, e.g. {kind}:{'1' if kind == 'ratio' else '0.5'}") \
                from None
        if kind == "ratio" and not 0 < number < np.inf:
            raise ValueError(f"recipe {text!r}: the ratio must be above 0")
        if kind == "fraction" and not 0 < number < 1:
            raise ValueError(f"recipe {text!r}: the fraction must be between 0 and 1")
        return Recipe("ratio", number if kind == "ratio" else number / (1 - number))
    if value:
        raise ValueError(f"recipe {text!r}: {kind} takes no value")
    return Recipe(kind)


def synthetic_rows(recipe: Recipe, real_labels: np.ndarray, synthetic_labels: np.ndarray,
                   seed: int = 0) -> np.ndarray:
    """Rows of the synthetic data a recipe trains on beside (or, for ``pretrain``, before) the real data.

    A recipe that needs more synthetic images than there are takes them all (never repeats one).
    """
    rng = np.random.default_rng([seed, 3])
    n_syn = len(synthetic_labels)
    if recipe.kind in ("all", "pretrain"):
        return np.arange(n_syn)
    if recipe.kind == "ratio":
        want = min(n_syn, round(len(real_labels) * recipe.ratio))
        return np.sort(rng.choice(n_syn, want, replace=False))
    counts = np.bincount(real_labels, minlength=int(max(real_labels.max(), synthetic_labels.max())) + 1)
    picked = []
    for c, have in enumerate(counts):  # topup: fill each class up to the largest one
        members = np.flatnonzero(synthetic_labels == c)
        need = min(len(members), int(counts.max() - have))
        picked.append(rng.choice(members, need, replace=False) if need > 0 else members[:0])
    return np.sort(np.concatenate(picked))


def _labels(dataset: Dataset) -> np.ndarray:
    if hasattr(dataset, "data") and hasattr(dataset.data, "labels"):  # RealImageDataset
        return np.asarray(dataset.data.labels)
    if hasattr(dataset, "arrays"):  # SyntheticImageDataset: one pass over its row groups
        return dataset.arrays()[1]
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def recipe_datasets(recipe: Recipe | str, real: Dataset, synthetic: Dataset, seed: int = 0) -> list[Dataset]:
    """The training stages of a recipe, in order: one dataset, or two (synthetic, then real) for ``pretrain``.

    Args:
        recipe: a :class:`Recipe` or its text (``"topup"``, ``"ratio:1"``, ...).
        real, synthetic: e.g. :class:`synthgen.data.RealImageDataset` and
            :class:`synthgen.data.SyntheticImageDataset` (same classes, same item kind).
        seed: which synthetic images a ``ratio`` or ``topup`` recipe takes.

    Returns:
        Datasets to train on one after the other (shuffle each as usual).
    """
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    rows = synthetic_rows(recipe, _labels(real), _labels(synthetic), seed)
    if recipe.kind == "pretrain":
        return [synthetic, real]
    return [ConcatDataset([real, Subset(synthetic, rows.tolist())])]
