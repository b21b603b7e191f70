"""The numbers ``synthgen eval`` reports, as plain numpy over feature (or pixel) vectors.

- FID: Frechet distance between Gaussians fitted to two feature sets (Heusel et al., 2017);
- KID: unbiased squared MMD with the cubic polynomial kernel, averaged over random subsets
  (Binkowski et al., 2018);
- precision / recall on k-NN manifolds (Kynkaanniemi et al., 2019);
- nearest neighbours for the memorization audit, and ROC AUC / accuracy for TSTR.

No scipy or scikit-learn: the matrix square root comes from symmetric eigendecompositions, which is exact
for the positive semi-definite covariances FID needs and never returns the complex noise ``sqrtm`` can.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1024  # rows per block of pairwise distances: bounds memory at _CHUNK x N floats


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` (N, D) and ``b`` (M, D).

    Returns:
        ||mu_a - mu_b||^2 + Tr(C_a) + Tr(C_b) - 2 Tr((C_a C_b)^1/2), clipped at 0 (rounding).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D) each
    # Tr((C_a C_b)^1/2) = Tr((C_a^1/2 C_b C_a^1/2)^1/2), and the latter matrix is symmetric PSD
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    middle = root_a @ np.atleast_2d(cov_b) @ root_a  # (D, D)
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    fid = ((mu_a - mu_b) ** 2).sum() + np.trace(np.atleast_2d(cov_a)) + np.trace(np.atleast_2d(cov_b)) \
        - 2 * tr_root
    return float(max(fid, 0.0))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3 over random equal-size subsets of ``a`` and ``b``.

    Args:
        a, b: feature sets (N, D) and (M, D), each with at least 2 rows.
        subsets: how many subset pairs to average.
        subset_size: rows per subset (capped at the smaller set's size).
        seed: picks the subsets.

    Returns:
        Mean and standard deviation of MMD^2 over the subsets.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    d, rng, values = a.shape[1], np.random.default_rng(seed), []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3  # (m, m)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (N, M), computed in float64 and clipped at 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T  # (N, M)
    return np.clip(d, 0, None)


def nearest(query: np.ndarray, ref: np.ndarray, k: int = 2, exclude_self: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``ref`` for each row of ``query``, in blocks so memory stays bounded.

    Args:
        query: (N, D); ref: (M, D).
        k: neighbours per query row (k <= M, or M - 1 with ``exclude_self``).
        exclude_self: ``query`` is ``ref``; skip each row's own entry.

    Returns:
        Indices into ``ref`` (N, k) and Euclidean distances (N, k), nearest first.
    """
    idx, dist = np.empty((len(query), k), np.int64), np.empty((len(query), k))
    for start in range(0, len(query), _CHUNK):
        d = squared_distances(query[start:start + _CHUNK], ref)  # (chunk, M)
        if exclude_self:
            rows = np.arange(len(d))
            d[rows, start + rows] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.argsort(d, axis=1)[:, :k]
        # the expansion |x|^2 + |y|^2 - 2xy cancels inexactly (an exact copy came out at 5e-7 with this
        # CPU's BLAS): the k found are measured again directly, so a copy is at distance 0 exactly
        queries = np.asarray(query[start:start + _CHUNK], np.float64)[:, None, :]  # (chunk, 1, D)
        exact = np.sqrt(((queries - np.asarray(ref[part], np.float64)) ** 2).sum(-1))  # (chunk, k)
        order = exact.argsort(1, kind="stable")
        idx[start:start + len(d)] = np.take_along_axis(part, order, 1)
        dist[start:start + len(d)] = np.take_along_axis(exact, order, 1)
    return idx, dist


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    Each set's manifold is the union of balls around its samples, each ball's radius the distance to that
    sample's k-th nearest neighbour in its own set. Precision: share of ``fake`` inside the real manifold
    (fidelity); recall: share of ``real`` inside the fake manifold (diversity, coverage).

    Returns:
        (precision, recall), each in [0, 1].
    """
    return _inside(fake, real, _radii(real, k)), _inside(real, fake, _radii(fake, k))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(x) - 1)
    return nearest(x, x, k, exclude_self=True)[1][:, -1]


def _inside(query: np.ndarray, ref: np.ndarray, radii: np.ndarray) -> float:
    hits = 0
    for start in range(0, len(query), _CHUNK):
        d = np.sqrt(squared_distances(query[start:start + _CHUNK], ref))  # (chunk, M)
        hits += int((d <= radii[None, :]).any(1).sum())
    return hits / len(query)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from class probabilities: binary (score of class 1) or macro one-vs-rest for > 2 classes.

    Args:
        labels: (N,) true classes in range(K).
        scores: (N, K) predicted probabilities.

    Returns:
        The AUC; NaN when a class needed for it is missing from ``labels``.
    """
    k = scores.shape[1]
    classes = [1] if k == 2 else range(k)
    aucs = [_binary_auc(labels == c, scores[:, c]) for c in classes]
    return float(np.mean(aucs))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg), ties counted half (average ranks)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Plain and balanced (mean per-class recall) accuracy of the arg-max prediction.

    Returns:
        (accuracy, balanced accuracy); the second ignores classes absent from ``labels``.
    """
    pred = scores.argmax(1)
    per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float((pred == labels).mean()), float(np.mean(per_class))
