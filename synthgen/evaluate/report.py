"""``synthgen eval``: is a synthetic dataset faithful, diverse, not a copy of its training images, and useful?

One call reads the real data (the readers ``synthgen train`` uses) and a finished synthgen dataset, trains a
small classifier on the real training split (its penultimate layer is the feature space) and reports:

- FID / KID, overall and per class, next to the same numbers for the real *test* split (what a generator
  drawing fresh images from the real distribution would score);
- precision / recall on k-NN manifolds (fidelity / coverage);
- a memorization audit in pixel and feature space (near-copies of training images, worst pairs drawn);
- TSTR: the classifier trained on synthetic only, on real only (TRTR) and on both, tested on real test data;
- FID / KID on Inception-v3 features, only when its weights are on local disk.

Everything is seeded and runs on a fixed number of torch threads (``--threads``), so the same command gives
the same report whatever the machine's core count (another torch build or instruction set may still differ).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from synthgen.evaluate import features as fx
from synthgen.evaluate import metrics
from synthgen.evaluate.config import COPY_RATIO, EvalConfig
from synthgen.evaluate.data import EvalData, load_eval_data
from synthgen.evaluate.figures import draw_memorization, draw_report

WORST_PAIRS = 16
CLOSE_RMSE = 0.02  # pixel RMSE (0-1 scale) under which two images look the same: about 5 of 255 grey levels
MAX_LISTED = 1000  # flagged indices listed in the report


def evaluate(config: EvalConfig) -> dict:
    """Compute every metric, write the JSON report and its figures.

    Args:
        config: the real data, the synthetic dataset, the output paths and the seed.

    Returns:
        The report (also written to ``config.out``).
    """
    config.check()
    inception_path, inception_why = fx.inception_weights(config.inception_weights)
    data = load_eval_data(config)
    with fx.torch_threads(config.threads):
        report = _scores(config, data, inception_path, inception_why)
    report["figures"] = {"report": config.figure_path,
                         "memorization": os.path.splitext(config.figure_path)[0] + "-memorization.png"}
    draw_report(report, data.train, data.synthetic, data.synthetic_labels, report["figures"]["report"])
    draw_memorization(report["memorization"]["worst_pairs"], data.synthetic, data.synthetic_index,
                      data.train.images, data.train_rows, report["figures"]["memorization"])
    _write_json(config.out, report)
    return report


def _scores(config: EvalConfig, data: EvalData, inception_path: str | None, inception_why: str) -> dict:
    clf_config = fx.ClassifierConfig(steps=config.classifier_steps)
    names = data.class_names
    classifier = fx.train_classifier(data.train.images, data.train.labels, len(names), config.seed, clf_config)
    feats = _standardised(classifier, data)
    return {
        "real": {"path": config.real, "train_images": len(data.train.images), "test_images": len(data.test.images),
                 "test_split": data.test_split, "class_names": names, "image_shape": list(data.train.shape)},
        "synthetic": {"path": config.synthetic, "rows": data.synthetic_rows, "images_used": len(data.synthetic),
                      "model_fingerprint": data.fingerprint},
        "settings": {**asdict(config), "classifier": asdict(clf_config),
                     "feature_space": "penultimate layer of a small CNN trained on the real training split, "
                                      "standardised with the training split's mean and std"},
        "fid_kid": _fid_kid(feats, data, names, config.seed),
        "precision_recall": _precision_recall(feats, config.k),
        "memorization": memorization_audit(data, feats, config.copy_ratio),
        "tstr": _tstr(data, classifier, names, config.seed, clf_config),
        "inception": _inception(data, inception_path, inception_why, config.seed),
    }


# ---------------------------------------------------------------- metrics

@dataclass
class _Features:
    train: np.ndarray
    test: np.ndarray
    synthetic: np.ndarray


def _standardised(classifier: fx.SmallCNN, data: EvalData) -> _Features:
    """Features in units of the real training split's spread, so FID reads the same across runs."""
    train = fx.embed(classifier, data.train.images)  # (N, E)
    mean, std = train.mean(0), train.std(0) + 1e-8
    norm = lambda f: (f - mean) / std
    return _Features(norm(train), norm(fx.embed(classifier, data.test.images)),
                     norm(fx.embed(classifier, data.synthetic)))


def _fid_kid_pair(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    if min(len(a), len(b)) < 2:
        return {"skipped": f"needs at least 2 images on each side ({len(a)} real, {len(b)} synthetic)"}
    kid, kid_std = metrics.kernel_inception_distance(a, b, seed=seed)
    return {"fid": metrics.frechet_distance(a, b), "kid": kid, "kid_std": kid_std}


def _fid_kid(f: _Features, data: EvalData, names: list[str], seed: int) -> dict:
    out = {**_fid_kid_pair(f.train, f.synthetic, seed),
           "baseline_real_test": _fid_kid_pair(f.train, f.test, seed), "per_class": {}}
    for c, name in enumerate(names):
        if not data.conditional:
            out["per_class"] = {"skipped": "unconditional model: synthetic images have no labels"}
            break
        real, syn, test = data.train.labels == c, data.synthetic_labels == c, data.test.labels == c
        out["per_class"][name] = {**_fid_kid_pair(f.train[real], f.synthetic[syn], seed),
                                  "baseline_real_test": _fid_kid_pair(f.train[real], f.test[test], seed),
                                  "real_images": int(real.sum()), "synthetic_images": int(syn.sum())}
    return out


def _precision_recall(f: _Features, k: int) -> dict:
    p, r = metrics.precision_recall(f.train, f.synthetic, k)
    bp, br = metrics.precision_recall(f.train, f.test, k)
    return {"k": k, "precision": p, "recall": r, "baseline_real_test": {"precision": bp, "recall": br}}


def memorization_audit(data: EvalData, f: _Features, copy_ratio: float = COPY_RATIO) -> dict:
    """Nearest real training image of each synthetic image, in pixel and in feature space.

    A synthetic image is a near-copy when, in pixel or in feature space, its distance to the nearest
    training image is below ``copy_ratio`` times its distance to the second nearest (the ratio test of Yoon
    et al., 2023): an exact copy scores 0, an image that sits among many training images scores near 1.
    Pixel-identical training images are merged first, so a duplicated training image cannot hide a copy of
    itself. The same test on the real test split gives the rate of near-duplicates the real data has anyway.

    Returns:
        Near-copy fractions and distances per space, the flagged dataset indices and the worst pairs.
    """
    flat = data.train.images.reshape(len(data.train.images), -1)
    first = np.sort(np.unique(flat, axis=0, return_index=True)[1])  # one training row per distinct image
    space = {"pixel": (fx.pixels(data.synthetic), fx.pixels(data.train.images[first]),
                       fx.pixels(data.test.images)),
             "feature": (f.synthetic, f.train[first], f.test)}
    out, ratios = {"copy_ratio": copy_ratio, "distinct_train_images": len(first)}, {}
    for name, (syn, ref, test) in space.items():
        idx, dist = metrics.nearest(syn, ref, 2)
        ratios[name] = dist[:, 0] / np.maximum(dist[:, 1], 1e-12)
        _, test_dist = metrics.nearest(test, ref, 2)
        test_ratio = test_dist[:, 0] / np.maximum(test_dist[:, 1], 1e-12)
        out[name] = {"near_copy_fraction": float((ratios[name] < copy_ratio).mean()),
                     "median_ratio": float(np.median(ratios[name])),
                     "median_nearest_distance": float(np.median(dist[:, 0])),
                     "baseline_real_test_near_copy_fraction": float((test_ratio < copy_ratio).mean())}
        if name == "pixel":  # RMSE in [0, 1] pixel units: 0.02 is about 5 grey levels
            nearest_row, rmse = first[idx[:, 0]], dist[:, 0] / np.sqrt(syn.shape[1])
            out[name]["median_nearest_rmse"] = float(np.median(rmse))
            out[name]["rmse_below_0.02_fraction"] = float((rmse < CLOSE_RMSE).mean())
            out[name]["baseline_real_test_rmse_below_0.02_fraction"] = float(
                (test_dist[:, 0] / np.sqrt(syn.shape[1]) < CLOSE_RMSE).mean())
    flagged = (ratios["pixel"] < copy_ratio) | (ratios["feature"] < copy_ratio)
    out.update(near_copy_fraction_either=float(flagged.mean()), near_copies=int(flagged.sum()),
               near_copy_indices=data.synthetic_index[flagged][:MAX_LISTED].tolist())
    worst = np.argsort(ratios["pixel"], kind="stable")[:WORST_PAIRS]
    out["worst_pairs"] = [{"synthetic_index": int(data.synthetic_index[j]),
                           "real_train_row": int(data.train_rows[nearest_row[j]]),
                           "pixel_rmse": float(rmse[j]), "pixel_ratio": float(ratios["pixel"][j]),
                           "feature_ratio": float(ratios["feature"][j]), "near_copy": bool(flagged[j])}
                          for j in worst]
    return out


def _tstr(data: EvalData, trained_on_real: fx.SmallCNN, names: list[str], seed: int,
          config: fx.ClassifierConfig) -> dict:
    if not data.conditional:
        return {"skipped": "unconditional model: synthetic images have no labels to train on"}
    test = data.test

    def score(model: fx.SmallCNN, n: int) -> dict:
        proba = fx.predict_proba(model, test.images)
        acc, balanced = metrics.accuracy(test.labels, proba)
        return {"accuracy": acc, "balanced_accuracy": balanced, "auc": metrics.roc_auc(test.labels, proba),
                "train_images": n}

    k = len(names)
    both_x = np.concatenate([data.train.images, data.synthetic])
    both_y = np.concatenate([data.train.labels, data.synthetic_labels])
    out = {"test_images": len(test.images),
           "trained_on_real": score(trained_on_real, len(data.train.images)),
           "trained_on_synthetic": score(fx.train_classifier(data.synthetic, data.synthetic_labels, k, seed,
                                                             config), len(data.synthetic)),
           "trained_on_real_plus_synthetic": score(fx.train_classifier(both_x, both_y, k, seed, config),
                                                   len(both_x))}
    base = out["trained_on_real"]
    out["gain_of_adding_synthetic"] = {m: out["trained_on_real_plus_synthetic"][m] - base[m]
                                       for m in ("accuracy", "balanced_accuracy", "auc")}
    return out


def _inception(data: EvalData, weights: str | None, why: str, seed: int) -> dict:
    if weights is None:
        return {"skipped": why}
    try:
        real = fx.inception_features(data.train.images, weights)
    except ImportError:
        return {"skipped": "torch-fidelity is not installed (pip install torch-fidelity); weights were given"}
    return {**_fid_kid_pair(real, fx.inception_features(data.synthetic, weights), seed), "weights": weights}


def _write_json(path: str, report: dict) -> None:
    def strict(value):  # NaN (an AUC with a class missing from the test split) is not JSON: write null
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strict(v) for v in value]
        return None if isinstance(value, float) and not np.isfinite(value) else value

    with open(path, "w") as f:
        json.dump(strict(report), f, indent=1, allow_nan=False)
        f.write("\n")
