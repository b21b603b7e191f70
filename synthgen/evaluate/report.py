"""``synthgen eval``: is a synthetic dataset faithful, diverse, not a copy of its training images, and useful?

One call reads the real data (the readers ``synthgen train`` uses) and a finished synthgen dataset and reports:

- downstream usefulness (:mod:`~synthgen.evaluate.downstream`): classifiers trained on real (TRTR), synthetic
  (TSTR) and real + synthetic per recipe, ``--repeats`` seeds each, with paired bootstrap intervals;
- FID / KID and precision / recall, overall and per class, in each feature space side by side (the
  real-trained classifier's, an autoencoder's that sees variety within a class, Inception-v3's when its
  weights are on disk), next to the same numbers for the real *test* split;
- a memorization audit in pixel and classifier-feature space (near-copies, worst pairs drawn);
- how long each part took (wall and CPU seconds).

Everything is seeded and runs on a fixed number of torch threads (``--threads``), so the same command gives
the same report whatever the machine's core count (another torch build or instruction set may still differ).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from synthgen.dataset.card import record_eval
from synthgen.evaluate import classifier as clf
from synthgen.evaluate import encoder as enc
from synthgen.evaluate import features as fx
from synthgen.evaluate import metrics
from synthgen.evaluate.config import COPY_RATIO, EvalConfig
from synthgen.evaluate.data import EvalData, load_eval_data
from synthgen.evaluate.downstream import downstream
from synthgen.evaluate.figures import draw_memorization, draw_report
from synthgen.splits import validation_split

WORST_PAIRS = 16
CLOSE_RMSE = 0.02  # pixel RMSE (0-1 scale) under which two images look the same: about 5 of 255 grey levels
MAX_LISTED = 1000  # flagged indices listed in the report


def evaluate(config: EvalConfig) -> dict:
    """Compute every metric, write the JSON report and its figures.

    Args:
        config: the real data, the synthetic dataset, the output paths, the seed and the repeats.

    Returns:
        The report (also written to ``config.out``).
    """
    config.check()
    clock = _Clock()
    inception_path, inception_why = fx.inception_weights(config.inception_weights)
    data = load_eval_data(config)
    clock.lap("load data")
    with fx.torch_threads(config.threads):
        report = _scores(config, data, inception_path, inception_why, clock)
    report["seconds"] = clock.laps  # the figure shows the parts timed so far; the JSON gets "figures" too
    report["figures"] = {"report": config.figure_path,
                         "memorization": os.path.splitext(config.figure_path)[0] + "-memorization.png"}
    draw_report(report, data.train, data.synthetic, data.synthetic_labels, report["figures"]["report"])
    draw_memorization(report["memorization"]["worst_pairs"], data.synthetic, data.synthetic_index,
                      data.train.images, data.train_rows, report["figures"]["memorization"])
    clock.lap("figures")
    _write_json(config.out, report)
    warning = record_eval(config.synthetic, report)  # the dataset's card quotes it (dataset/card.py)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return report


class _Clock:
    """Wall and CPU seconds of each part of an evaluation (the machine is often shared: CPU time says more)."""

    def __init__(self):
        self.laps: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[name] = {"wall": round(wall - self._wall, 2), "cpu": round(cpu - self._cpu, 2)}
        self._wall, self._cpu = wall, cpu


def _scores(config: EvalConfig, data: EvalData, inception_path: str | None, inception_why: str,
            clock: _Clock) -> dict:
    clf_config = clf.ClassifierConfig(steps=config.classifier_steps)
    names = data.class_names
    if data.conditional:
        useful, classifier = downstream(data, clf_config, config.seed, config.repeats, config.recipe_list,
                                        config.fraction_list)
    else:  # nothing to train on synthetic images without labels; the feature classifier is still needed
        useful = {"skipped": "unconditional model: synthetic images have no labels to train on"}
        fit, val = validation_split(data.train.labels)
        classifier = clf.train_classifier(data.train.images[fit], data.train.labels[fit], len(names),
                                          config.seed, clf_config, data.train.images[val], data.train.labels[val])
    clock.lap("downstream classifiers")
    spaces = {"classifier": _standardised(lambda x: clf.embed(classifier, x), data)}
    encoder, cache = enc.cached_autoencoder(data.train.images, config.seed,
                                            enc.EncoderConfig(steps=config.encoder_steps), config.cache_dir)
    spaces["autoencoder"] = _standardised(lambda x: enc.encode(encoder, x), data)
    clock.lap("autoencoder (read from cache)" if cache["cached"] else "autoencoder (trained, then cached)")
    scored = {name: _space_scores(feats, data, names, config) for name, feats in spaces.items()}
    scored["inception"] = _inception(data, inception_path, inception_why, names, config)
    scored["autoencoder"]["cache"] = cache
    for name, text in GOOD_FOR.items():
        scored[name]["good_for"] = text
    clock.lap("feature-space metrics")
    audit = memorization_audit(data, spaces["classifier"], config.copy_ratio)
    clock.lap("memorization audit")
    return {
        "real": {"path": config.real, "train_images": len(data.train.images), "test_images": len(data.test.images),
                 "test_split": data.test_split, "class_names": names, "image_shape": list(data.train.shape)},
        "synthetic": {"path": config.synthetic, "rows": data.synthetic_rows, "images_used": len(data.synthetic),
                      "model_fingerprint": data.fingerprint},
        "settings": {**asdict(config), "classifier": asdict(clf_config)},
        "feature_spaces": scored,
        "memorization": audit,
        "downstream": useful,
    }


GOOD_FOR = {
    "classifier": "penultimate layer of the real-trained downstream classifier, standardised with the training "
                  "split's mean and std: what separates the classes; blind to variety within a class",
    "autoencoder": "code of an autoencoder trained on the real training images, standardised the same way: "
                   "keeps what makes two images of a class differ, so FID and recall see a collapsed class",
    "inception": "Inception-v3 pool features (ImageNet): comparable with published FIDs, far from medical images",
}


# ---------------------------------------------------------------- metrics

@dataclass
class _Features:
    train: np.ndarray
    test: np.ndarray
    synthetic: np.ndarray


def _standardised(features: Callable[[np.ndarray], np.ndarray], data: EvalData) -> _Features:
    """Features in units of the real training split's spread, so FID reads the same across runs."""
    train = features(data.train.images)  # (N, E)
    mean, std = train.mean(0), train.std(0) + 1e-8
    return _Features((train - mean) / std, (features(data.test.images) - mean) / std,
                     (features(data.synthetic) - mean) / std)


def _space_scores(feats: _Features, data: EvalData, names: list[str], config: EvalConfig) -> dict:
    return {"fid_kid": _fid_kid(feats, data, names, config.seed),
            "precision_recall": _precision_recall(feats, data, names, config.k)}


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


def _pr_pair(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    if min(len(real), len(fake)) < 2:
        return {"skipped": f"needs at least 2 images on each side ({len(real)} real, {len(fake)} synthetic)"}
    p, r = metrics.precision_recall(real, fake, k)
    return {"precision": p, "recall": r}


def _precision_recall(f: _Features, data: EvalData, names: list[str], k: int) -> dict:
    out = {"k": k, **_pr_pair(f.train, f.synthetic, k), "baseline_real_test": _pr_pair(f.train, f.test, k),
           "per_class": {}}
    if data.conditional:
        for c, name in enumerate(names):
            real, syn, test = data.train.labels == c, data.synthetic_labels == c, data.test.labels == c
            out["per_class"][name] = {**_pr_pair(f.train[real], f.synthetic[syn], k),
                                      "baseline_real_test": _pr_pair(f.train[real], f.test[test], k)}
    return out


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


def _inception(data: EvalData, weights: str | None, why: str, names: list[str], config: EvalConfig) -> dict:
    """The same scores on Inception-v3 features (not standardised: published FIDs use them raw)."""
    if weights is None:
        return {"skipped": why}
    try:
        real = fx.inception_features(data.train.images, weights)
    except ImportError:
        return {"skipped": "torch-fidelity is not installed (pip install torch-fidelity); weights were given"}
    feats = _Features(real, fx.inception_features(data.test.images, weights),
                      fx.inception_features(data.synthetic, weights))
    return {**_space_scores(feats, data, names, config), "weights": weights}


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
