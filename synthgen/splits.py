"""How the real training split is cut: a validation part, the fit part, and shares of the fit part.

One home for the cuts that both ``synthgen eval`` (its classifiers) and ``synthgen train --real-share``
(a generator for the low-data comparison) use, so a generator can be trained on exactly the real images
that eval's ``--real-fractions`` gives its classifiers. Every cut depends on the labels only, never on a
seed the user passes.
"""

from __future__ import annotations

import numpy as np

VAL_FRACTION = 0.15
SPLIT_SEED = 20260  # the fit/validation cut depends on the data only, not on --seed
SHARE_SEED = SPLIT_SEED + 1  # the shares of the fit part likewise


def stratified_part(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows of a stratified share ``fraction`` of ``labels`` (at least one row of each class)."""
    rng, rows = np.random.default_rng(seed), []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        rows.append(members[:max(1, round(len(members) * fraction))])
    return np.sort(np.concatenate(rows))


def validation_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of the real training split."""
    val = stratified_part(labels, VAL_FRACTION, SPLIT_SEED)
    return np.setdiff1d(np.arange(len(labels)), val), val


def fit_share(fit_labels: np.ndarray, fraction: float) -> np.ndarray:
    """Rows (into the fit part) of the stratified share ``fraction`` of the fit part; 1 is all of it."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a share must be in (0, 1], got {fraction:g}")
    return np.arange(len(fit_labels)) if fraction == 1 else stratified_part(fit_labels, fraction, SHARE_SEED)


def real_share_rows(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Rows of the whole training split that ``synthgen eval --real-fractions fraction`` trains its
    classifiers on (the share of the fit part; the validation part is never in it)."""
    fit, _ = validation_split(labels)
    return fit[fit_share(labels[fit], fraction)]
