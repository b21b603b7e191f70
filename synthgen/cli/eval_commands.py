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
    classifier_steps: Annotated[int, typer.Option(help="Optimiser steps of each small classifier.")] = 600,
    threads: Annotated[int, typer.Option(
        help="Torch threads for the classifiers. Scores depend on it (sums split differently), so it is fixed "
             "rather than the machine's core count; docs/evaluation.md's figures use 2.")] = 2,
    inception_weights: Annotated[Optional[str], typer.Option(
        help="Local Inception-v3 weights (torch-fidelity's .pth) for FID/KID on Inception features; "
             "default: $SYNTHGEN_INCEPTION_WEIGHTS, else skipped.")] = None,
) -> None:
    """Score a synthetic dataset: FID/KID, precision/recall, memorization audit, TSTR vs TRTR."""
    from synthgen.evaluate.config import EvalConfig
    from synthgen.evaluate.report import evaluate

    config = EvalConfig(real=real, synthetic=synthetic, out=out, seed=seed, max_images=max_images, k=k,
                        classifier_steps=classifier_steps, inception_weights=inception_weights, threads=threads)
    with user_errors():
        report = evaluate(config)
    fk, pr, mem = report["fid_kid"], report["precision_recall"], report["memorization"]
    typer.echo(f"FID {fk['fid']:.3f} (real test split: {fk['baseline_real_test']['fid']:.3f}), "
               f"KID {fk['kid']:.4f}; precision {pr['precision']:.3f}, recall {pr['recall']:.3f}")
    typer.echo(f"near-copies of training images: {mem['near_copies']} of {report['synthetic']['images_used']} "
               f"({mem['near_copy_fraction_either']:.1%})")
    tstr = report["tstr"]
    if "skipped" not in tstr:
        line = ", ".join(f"{name} {tstr[key]['auc']:.3f}" for key, name in (
            ("trained_on_real", "real"), ("trained_on_synthetic", "synthetic"),
            ("trained_on_real_plus_synthetic", "real+synthetic")))
        typer.echo(f"test AUC by training data: {line}")
    if "skipped" in report["inception"]:
        typer.echo(f"Inception-v3 FID skipped: {report['inception']['skipped']}")
    typer.echo(f"wrote {out}, {report['figures']['report']}, {report['figures']['memorization']}")


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
