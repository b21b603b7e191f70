"""Intervals, recipes and the downstream classifier's guards, on known answers and real BreastMNIST."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import ConcatDataset

from synthgen.data import RealImageDataset
from synthgen.evaluate import classifier as clf
from synthgen.evaluate import intervals, metrics
from synthgen.splits import validation_split
from synthgen.recipes import Recipe, parse_recipe, recipe_datasets, synthetic_rows


def _probs(labels: np.ndarray, signal: float, rng: np.random.Generator) -> np.ndarray:
    score = signal * labels + rng.normal(size=len(labels))
    p = 1 / (1 + np.exp(-score))
    return np.stack([1 - p, p], 1)  # (N, 2)


def test_paired_bootstrap_tells_a_gain_from_none():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    weak = [_probs(labels, 1.0, rng) for _ in range(3)]
    same = [p.copy() for p in weak]
    strong = [_probs(labels, 3.0, rng) for _ in range(3)]
    out = intervals.bootstrap(labels, {"real": weak, "same": same, "strong": strong},
                              {"same": ("same", "real"), "strong": ("strong", "real")}, resamples=200)
    real = out["arms"]["real"]
    assert real["low"] < real["auc"] < real["high"] and real["auc"] == pytest.approx(
        np.mean([metrics.roc_auc(labels, p) for p in weak]))
    assert out["gains"]["same"]["holds_zero"] and out["gains"]["same"]["auc"] == 0
    assert intervals.verdict(out["gains"]["same"]).startswith("no measurable gain")
    assert not out["gains"]["strong"]["holds_zero"] and out["gains"]["strong"]["low"] > 0
    assert intervals.verdict(out["gains"]["strong"]).startswith("measurable gain: +")
    with pytest.raises(ValueError, match="same number of seeds"):
        intervals.bootstrap(labels, {"a": weak, "b": weak[:2]}, {})


def test_recipes_pick_the_asked_synthetic_rows():
    real = np.array([0] * 10 + [1] * 40)
    syn = np.array([0, 1] * 50)  # 50 of each
    assert len(synthetic_rows(parse_recipe("all"), real, syn)) == 100
    assert len(synthetic_rows(parse_recipe("ratio:0.5"), real, syn)) == 25
    assert parse_recipe("fraction:0.5") == Recipe("ratio", 1.0) and parse_recipe("ratio:2").name == "ratio:2"
    assert len(synthetic_rows(parse_recipe("ratio:10"), real, syn)) == 100  # never repeats an image
    top = synthetic_rows(parse_recipe("topup"), real, syn, seed=1)
    assert (syn[top] == 0).all() and len(top) == 30  # the rarer class, up to the larger one's 40
    assert np.array_equal(top, synthetic_rows(parse_recipe("topup"), real, syn, seed=1))
    for bad, message in (("mixup", "unknown recipe"), ("ratio:0", "above 0"), ("fraction:1", "between 0 and 1"),
                         ("topup:3", "takes no value"), ("ratio:", "give a number")):
        with pytest.raises(ValueError, match=message):
            parse_recipe(bad)


def test_recipe_datasets_for_pytorch(breast_npz):
    real = RealImageDataset(breast_npz)
    synthetic = RealImageDataset(breast_npz, split="val")  # stands in for synthetic images: same classes
    [topped] = recipe_datasets("topup", real, synthetic)
    counts = np.bincount(real.data.labels)
    assert isinstance(topped, ConcatDataset) and len(topped) == len(real) + min(
        counts.max() - counts.min(), int((synthetic.data.labels == counts.argmin()).sum()))
    first, second = recipe_datasets("pretrain", real, synthetic)
    assert first is synthetic and second is real
    import synthgen.data

    assert synthgen.data.recipe_datasets is recipe_datasets  # the helper users find beside mix()


def test_classifier_is_seeded_and_stops_on_validation(breast):
    fit, val = validation_split(breast.labels)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(breast.labels)
    assert np.array_equal(val, validation_split(breast.labels)[1])  # the cut depends on the data only
    config = clf.ClassifierConfig(steps=60, check_every=20, patience=1)

    def run(seed: int) -> clf.SmallCNN:
        return clf.train_classifier(breast.images[fit], breast.labels[fit], 2, seed, config, breast.images[val],
                                    breast.labels[val])

    a, b, c = run(0), run(0), run(1)
    assert a.trained == b.trained and 20 <= a.trained["best_step"] <= a.trained["steps"] <= 60
    proba = clf.predict_proba(a, breast.images[val])
    assert np.array_equal(proba, clf.predict_proba(b, breast.images[val]))
    assert not np.array_equal(proba, clf.predict_proba(c, breast.images[val]))  # the seed matters
    assert a.trained["val_auc"] == pytest.approx(metrics.roc_auc(breast.labels[val], proba))
    weights = clf.class_weights(breast.labels[fit], 2)
    counts = np.bincount(breast.labels[fit])
    assert float((weights.numpy() * counts).sum()) == pytest.approx(len(fit), rel=1e-5)
    assert weights[0] > weights[1]  # malignant is the rarer class here


def test_by_default_a_classifier_runs_its_whole_schedule_and_keeps_its_best_checkpoint(breast):
    """Early stopping quit runs in a plateau before the learning rate annealed (docs/evaluation.md)."""
    fit, val = validation_split(breast.labels)

    def run(patience: int | None) -> clf.SmallCNN:
        config = clf.ClassifierConfig(steps=100, check_every=10, patience=patience)
        return clf.train_classifier(breast.images[fit], breast.labels[fit], 2, 0, config, breast.images[val],
                                    breast.labels[val])

    whole, early = run(None), run(1)
    assert clf.ClassifierConfig().patience is None
    assert whole.trained["steps"] == 100 and early.trained["steps"] < 100
    # the same trajectory, seen longer: its best checkpoint is at least as good on the validation part
    assert whole.trained["val_auc"] >= early.trained["val_auc"]


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_short_runs_train(breast, steps):
    """--classifier-steps 10 crashed in the learning-rate schedule (a zero-length warm-up)."""
    config = clf.ClassifierConfig(steps=steps)
    model = clf.train_classifier(breast.images[:64], breast.labels[:64], 2, 0, config, breast.images[64:96],
                                 breast.labels[64:96])
    assert model.trained["steps"] == steps


def test_an_unknown_stopping_rule_is_refused_before_training():
    with pytest.raises(ValueError, match="stop must be auc, loss or none"):
        clf.train_classifier(np.zeros((4, 28, 28, 1), np.uint8), np.array([0, 1, 0, 1]), 2, 0,
                             clf.ClassifierConfig(stop="nne"))
