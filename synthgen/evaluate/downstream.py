"""Is the synthetic data useful? Classifiers trained on real, synthetic and real + synthetic (per recipe),
``repeats`` seeds each, scored on the real test split with paired bootstrap intervals.

The real training split is cut once into a fit part and a validation part (stratified, seeded by a constant,
so every seed and every ``--seed`` sees the same cut): classifiers train on the fit part (plus synthetic
images) and stop on the validation part; the test split only scores them.
"""

from __future__ import annotations

import time

import numpy as np

from synthgen.evaluate import classifier as clf
from synthgen.evaluate import intervals, metrics
from synthgen.evaluate.data import EvalData
from synthgen.recipes import Recipe, synthetic_rows
from synthgen.splits import fit_share, validation_split


class _Trainer:
    """Trains the classifiers of one evaluation on the same validation part, settings and thread count."""

    def __init__(self, data: EvalData, config: clf.ClassifierConfig):
        self.data, self.config, self.k = data, config, len(data.class_names)
        fit, val = validation_split(data.train.labels)
        self.fit_x, self.fit_y = data.train.images[fit], data.train.labels[fit]
        self.val_x, self.val_y = data.train.images[val], data.train.labels[val]
        self.runs: list[dict] = []

    def train(self, name: str, x: np.ndarray, y: np.ndarray, seed: int, init: clf.SmallCNN | None = None
              ) -> clf.SmallCNN:
        start = time.perf_counter()
        model = clf.train_classifier(x, y, self.k, seed, self.config, self.val_x, self.val_y, init=init)
        self.runs.append({"arm": name, "seed": seed, "train_images": len(x), **model.trained,
                          "seconds": time.perf_counter() - start})
        return model

    def recipe(self, recipe: Recipe, fit_x: np.ndarray, fit_y: np.ndarray, seed: int, name: str
               ) -> clf.SmallCNN:
        rows = synthetic_rows(recipe, fit_y, self.data.synthetic_labels, seed)
        syn_x, syn_y = self.data.synthetic[rows], self.data.synthetic_labels[rows]
        if recipe.kind == "pretrain":
            first = self.train(f"{name} (synthetic stage)", syn_x, syn_y, seed)
            return self.train(name, fit_x, fit_y, seed, init=first)
        return self.train(name, np.concatenate([fit_x, syn_x]), np.concatenate([fit_y, syn_y]), seed)

    def proba(self, model: clf.SmallCNN) -> np.ndarray:
        return clf.predict_proba(model, self.data.test.images)


def downstream(data: EvalData, config: clf.ClassifierConfig, seed: int, repeats: int, recipes: list[Recipe],
               real_fractions: list[float]) -> tuple[dict, clf.SmallCNN]:
    """TRTR, TSTR and each recipe over ``repeats`` classifier seeds (``seed``, ``seed + 1``, ...).

    Returns:
        (the report's "downstream" section, the first real-trained classifier: the feature space).
    """
    trainer, test_y = _Trainer(data, config), data.test.labels
    arms: dict[str, list[np.ndarray]] = {"real": [], "synthetic": [], **{r.name: [] for r in recipes}}
    first = None
    for s in range(seed, seed + repeats):
        model = trainer.train("real", trainer.fit_x, trainer.fit_y, s)
        first = model if first is None else first
        arms["real"].append(trainer.proba(model))
        arms["synthetic"].append(trainer.proba(trainer.train("synthetic", data.synthetic, data.synthetic_labels,
                                                             s)))
        for r in recipes:
            arms[r.name].append(trainer.proba(trainer.recipe(r, trainer.fit_x, trainer.fit_y, s, r.name)))
    gains = {f"real + synthetic ({r.name}) - real": (r.name, "real") for r in recipes}
    out = {"test_images": len(test_y), "fit_images": len(trainer.fit_y), "validation_images": len(trainer.val_y),
           "seeds": list(range(seed, seed + repeats)), **intervals.bootstrap(test_y, arms, gains, seed=seed)}
    for name, probs in arms.items():
        out["arms"][name]["balanced_accuracy"] = float(np.mean([metrics.accuracy(test_y, p)[1] for p in probs]))
    out["verdicts"] = {name: intervals.verdict(g) for name, g in out["gains"].items()}
    first_two = {"real": arms["real"], recipes[0].name: arms[recipes[0].name]}
    out["real_fractions"] = [_fraction(trainer, recipes[0], seed, repeats, f, first_two) for f in real_fractions]
    out["classifier_runs"] = trainer.runs
    return out, first


def _fraction(trainer: _Trainer, recipe: Recipe, seed: int, repeats: int, fraction: float,
              whole: dict[str, list[np.ndarray]]) -> dict:
    """AUC on a share of the real fit images, without and with synthetic images (``recipe``); share 1 is
    the main comparison (``whole``), not trained again."""
    part = fit_share(trainer.fit_y, fraction)
    x, y = trainer.fit_x[part], trainer.fit_y[part]
    arms: dict[str, list[np.ndarray]] = whole if fraction == 1 else {"real": [], recipe.name: []}
    for s in range(seed, seed + repeats) if fraction < 1 else ():
        arms["real"].append(trainer.proba(trainer.train(f"real {fraction:g}", x, y, s)))
        arms[recipe.name].append(trainer.proba(trainer.recipe(recipe, x, y, s, f"{recipe.name} {fraction:g}")))
    boot = intervals.bootstrap(trainer.data.test.labels, arms, {"gain": (recipe.name, "real")}, seed=seed)
    return {"fraction": fraction, "real_images": len(y), "recipe": recipe.name, **boot}
