"""95% intervals for downstream AUCs: a paired bootstrap over test images and classifier seeds.

Every arm (trained on real, on synthetic, on both, ...) is scored on the same test images with the same
seeds, so one resample (seeds drawn with replacement, test images drawn with replacement within each
class) scores every arm at once. The difference of two arms on the same resamples is a paired difference,
whose interval is much narrower than the two intervals side by side would suggest.
"""

from __future__ import annotations

import numpy as np

from synthgen.evaluate import metrics

RESAMPLES = 1000
LEVEL = 0.95


def _resample_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test rows drawn with replacement within each class, so every class keeps its count (AUC stays defined)."""
    rows = [rng.choice(members, len(members)) for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.concatenate(rows)


def bootstrap(labels: np.ndarray, arms: dict[str, list[np.ndarray]], gains: dict[str, tuple[str, str]],
              resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean AUC over seeds of each arm and of each paired gain, with percentile intervals.

    Args:
        labels: (N,) test classes.
        arms: arm name -> one (N, K) probability array per classifier seed (the same seeds in every arm).
        gains: gain name -> (arm, baseline arm); the gain is arm minus baseline on the same resamples.
        resamples: bootstrap draws.
        seed: seeds the draws.

    Returns:
        {"arms": {name: {auc, low, high, per_seed}}, "gains": {name: {auc, low, high, holds_zero}},
         "level", "resamples"}; ``auc`` is the mean over seeds on the whole test split.
    """
    seeds = {len(p) for p in arms.values()}
    if len(seeds) != 1:
        raise ValueError(f"every arm needs the same number of seeds, got {sorted(seeds)}")
    n_seeds = seeds.pop()
    per_seed = {name: np.array([metrics.roc_auc(labels, p) for p in probs]) for name, probs in arms.items()}
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(resamples) for name in arms}
    for b in range(resamples):
        rows, picked = _resample_rows(labels, rng), rng.integers(0, n_seeds, n_seeds)
        for name, probs in arms.items():
            draws[name][b] = np.mean([metrics.roc_auc(labels[rows], probs[s][rows]) for s in picked])
    tail = (1 - LEVEL) / 2 * 100

    def interval(d: np.ndarray) -> list[float]:
        return [float(np.nanpercentile(d, tail)), float(np.nanpercentile(d, 100 - tail))]

    out = {"level": LEVEL, "resamples": resamples, "seed_count": n_seeds, "arms": {}, "gains": {}}
    for name, values in per_seed.items():
        low, high = interval(draws[name])
        out["arms"][name] = {"auc": float(np.mean(values)), "low": low, "high": high,
                             "per_seed": values.tolist(), "spread": float(values.max() - values.min())}
    for name, (arm, base) in gains.items():
        low, high = interval(draws[arm] - draws[base])
        out["gains"][name] = {"auc": float(np.mean(per_seed[arm] - per_seed[base])), "low": low, "high": high,
                              "holds_zero": bool(low <= 0 <= high)}
    return out


def verdict(gain: dict) -> str:
    """One line on a gain from :func:`bootstrap`: 'no measurable gain' when its interval holds zero."""
    span = f"{gain['auc']:+.3f} AUC (95% interval {gain['low']:+.3f} to {gain['high']:+.3f})"
    if gain["holds_zero"]:
        return f"no measurable gain: {span}"
    return ("measurable gain: " if gain["low"] > 0 else "measurable loss: ") + span
