"""How much does the TRTR AUC of ``synthgen eval``'s classifier move with its seed, and what does one cost?

Trains the downstream classifier (``synthgen.evaluate.classifier``, the eval's defaults) on the fit part of
the real training split, once per seed, stopping on the validation part, and scores it on the test split
(and, for information only, on the .npz's official val split, which nothing here is chosen on).

    python bench/eval_stability.py --data data/breastmnist.npz --seeds 5 --threads 1 --out stab.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from synthgen.evaluate import classifier as clf
from synthgen.evaluate import metrics
from synthgen.splits import validation_split
from synthgen.readers import load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--group", type=int, default=5, help="also: the spread of the mean over consecutive "
                        "groups of this many seeds (what `synthgen eval --repeats G` reports as TRTR)")
    parser.add_argument("--merge", nargs="+", help="instead: summarise these --out files of one setting together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--stop", default="auc", choices=["auc", "loss", "none"], help="ClassifierConfig.stop")
    parser.add_argument("--patience", type=int, default=clf.ClassifierConfig.patience,
                        help="ClassifierConfig.patience (default: none, the whole schedule)")
    parser.add_argument("--seed-list", type=lambda s: [int(x) for x in s.split(",")],
                        help="instead of --first-seed/--seeds: these seeds")
    args = parser.parse_args()
    if args.merge:
        runs = sorted((r for f in args.merge for r in json.load(open(f))["runs"]), key=lambda r: r["seed"])
        return print(json.dumps(group_summary(runs, args.group)))
    torch.set_num_threads(args.threads)
    train, test = load_images(args.data, "train"), load_images(args.data, "test")
    val_official = load_images(args.data, "val")
    fit, val = validation_split(train.labels)
    rows = []
    for seed in args.seed_list or range(args.first_seed, args.first_seed + args.seeds):
        wall, cpu = time.perf_counter(), time.process_time()
        config = clf.ClassifierConfig(stop=args.stop, patience=args.patience)
        model = clf.train_classifier(train.images[fit], train.labels[fit], len(train.class_names), seed, config,
                                     train.images[val], train.labels[val])
        row = {"seed": seed, **model.trained,
               "test_auc": metrics.roc_auc(test.labels, clf.predict_proba(model, test.images)),
               "official_val_auc": metrics.roc_auc(val_official.labels, clf.predict_proba(model, val_official.images)),
               "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        rows.append(row)
        print(json.dumps(row), flush=True)
    aucs = np.array([r["test_auc"] for r in rows])
    val_aucs = np.array([r["official_val_auc"] for r in rows])
    summary = {"data": args.data, "stop": args.stop, "patience": args.patience,
               "official_val_auc_mean": float(val_aucs.mean()), "official_val_auc_spread": float(np.ptp(val_aucs)),
               "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor()
               or platform.machine(), "test_auc_mean": float(aucs.mean()), "test_auc_spread": float(np.ptp(aucs)),
               "cpu_s_per_classifier": float(np.mean([r["cpu_s"] for r in rows])), **group_summary(rows, args.group),
               "runs": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


def group_summary(rows: list[dict], group: int) -> dict:
    """Per-classifier spread, and the spread of the mean test AUC over disjoint groups of ``group`` seeds."""
    aucs = np.array([r["test_auc"] for r in rows])
    means = [float(aucs[i:i + group].mean()) for i in range(0, len(aucs) - group + 1, group)]
    return {"classifiers": len(aucs), "classifier_sd": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
            "group": group, "group_means": means, "group_mean_spread": float(np.ptp(means)) if means else None}


if __name__ == "__main__":
    main()
