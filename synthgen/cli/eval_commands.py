"""``synthgen eval`` and ``synthgen preview``: judge a synthetic dataset against real data, or look at it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from synthgen.cli.common import app, user_errors


@app.command("eval")
def eval_(
    real: Annotated[str, typer.Option(help="Real data the model learned from: MedMNIST .npz (its test split "
                                           "is the test set), class folders or Parquet.")],
    synthetic: Annotated[str, typer.Option(help="A complete synthgen dataset directory or URI.")],
    out: Annotated[str, typer.Option(help="JSON report to write; figures go beside it (.png).")] = "report.json",
    seed: Annotated[int, typer.Option(help="Seeds the subsets and every classifier: same seed, same report."
                                      )] = 0,
    max_images: Annotated[int, typer.Option(help="Use at most this many images of each side (seeded subset)."
                                            )] = 5000,
    k: Annotated[int, typer.Option("--k", help="Neighbours for the precision/recall manifolds.")] = 3,
    classifier_steps: Annotated[int, typer.Option(
        help="Optimiser steps of each classifier; it keeps the weights of its best AUC on a validation part "
             "of the real training split.")] = 1000,
    repeats: Annotated[int, typer.Option(help="Classifier seeds per arm (--seed, --seed + 1, ...): the "
                                              "downstream AUCs come with 95% bootstrap intervals over them.")] = 5,
    recipe: Annotated[str, typer.Option(
        help="Comma-separated ways to add the synthetic images to the real ones, each compared with real "
             "only: all, ratio:R (R per real image), fraction:F, topup (rarer classes only), pretrain "
             "(synthetic first, then real).")] = "all",
    real_fractions: Annotated[str, typer.Option(
        help="Comma-separated shares of the real training images (e.g. 0.1,0.25,1): AUC with and without "
             "synthetic images (the first --recipe) at each. Default: none.")] = "",
    cache_dir: Annotated[Optional[str], typer.Option(
        help="Where the autoencoder feature space is cached (by the training images' sha256); default "
             "$SYNTHGEN_CACHE, else ~/.cache/synthgen.")] = None,
    threads: Annotated[int, typer.Option(
        help="Torch threads for the classifiers. Scores depend on it (sums split differently), so it is fixed "
             "rather than the machine's core count; docs/evaluation.md's figures use 2.")] = 2,
    inception_weights: Annotated[Optional[str], typer.Option(
        help="Local Inception-v3 weights (torch-fidelity's .pth) for FID/KID on Inception features; "
             "default: $SYNTHGEN_INCEPTION_WEIGHTS, else skipped.")] = None,
) -> None:
    """Score a synthetic dataset: usefulness (TRTR, TSTR, recipes) with intervals, FID/KID, precision/recall,
    memorization."""
    from synthgen.evaluate.config import EvalConfig
    from synthgen.evaluate.report import evaluate

    with user_errors():
        config = EvalConfig(real=real, synthetic=synthetic, out=out, seed=seed, max_images=max_images, k=k,
                            classifier_steps=classifier_steps, inception_weights=inception_weights,
                            threads=threads, repeats=repeats, recipes=_list(recipe, str, "--recipe"),
                            real_fractions=_list(real_fractions, float, "--real-fractions"), cache_dir=cache_dir)
        report = evaluate(config)
    for line in summary(report):
        typer.echo(line)


def _list(text: str, kind: type, flag: str) -> list:
    from synthgen.errors import SynthgenError

    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SynthgenError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.1,0.25,1") from None


def summary(report: dict) -> list[str]:
    """The lines ``synthgen eval`` prints: one per feature space, the downstream AUCs and verdicts."""
    from synthgen.evaluate import intervals

    lines = []
    for name, space in report["feature_spaces"].items():
        if "skipped" in space:
            lines.append(f"{name} features: skipped ({space['skipped']})")
            continue
        fk, pr = space["fid_kid"], space["precision_recall"]
        base = pr.get("baseline_real_test", {})
        lines.append(f"{name} features: FID {fk['fid']:.3f} (real test split {fk['baseline_real_test']['fid']:.3f})"
                     + (f", precision {pr['precision']:.3f}, recall {pr['recall']:.3f} (real test split "
                        f"{base['precision']:.3f} / {base['recall']:.3f})" if "precision" in pr else ""))
    mem = report["memorization"]
    lines.append(f"near-copies of training images: {mem['near_copies']} of {report['synthetic']['images_used']} "
                 f"({mem['near_copy_fraction_either']:.1%})")
    down = report["downstream"]
    if "skipped" not in down:
        arms = ", ".join(f"{name} {a['auc']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
                         for name, a in down["arms"].items())
        lines.append(f"test AUC by training data (mean of {len(down['seeds'])} seeds, 95% interval): {arms}")
        lines += [f"{name}: {text}" for name, text in down["verdicts"].items()]
        for row in down["real_fractions"]:
            real, both = row["arms"]["real"], row["arms"][row["recipe"]]
            lines.append(f"{row['fraction']:g} of the real images ({row['real_images']}): real {real['auc']:.3f}, "
                         f"+ synthetic ({row['recipe']}) {both['auc']:.3f}; "
                         f"{intervals.verdict(row['gains']['gain'])}")
    took = ", ".join(f"{name} {t['wall']:.0f} s" for name, t in report["seconds"].items())
    lines.append(f"took {took}")
    lines.append(f"wrote {report['settings']['out']}, {report['figures']['report']}, "
                 f"{report['figures']['memorization']}")
    return lines


@app.command()
def preview(
    path: Annotated[str, typer.Argument(help="Dataset directory or URI.")],
    out: Annotated[str, typer.Option(help="PNG contact sheet to write.")] = "sheet.png",
    per_class: Annotated[int, typer.Option(help="Images shown per class.")] = 16,
) -> None:
    """Write a contact sheet of the first images of each class."""
    from synthgen.evaluate.figures import contact_sheet

    with user_errors():
        counts = contact_sheet(path, out, per_class)
    typer.echo(f"wrote {out}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
