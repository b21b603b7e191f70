"""synthgen eval / preview on real BreastMNIST: sane FID, planted copies found, bad input in one line.

Classifiers train for a few dozen steps here: enough for a feature space, far from a good classifier.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import write_dataset
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.data import SyntheticImageDataset
from synthgen.errors import SynthgenError
from synthgen.evaluate import figures, metrics
from synthgen.evaluate.config import EvalConfig
from synthgen.evaluate.features import EVAL_THREADS
from synthgen.evaluate.report import evaluate
from synthgen.splits import real_share_rows

STEPS = "40"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def quick(real: str, synthetic: Path, tmp_path: Path, **kw) -> dict:
    kw.setdefault("classifier_steps", int(STEPS))
    kw.setdefault("repeats", 1)
    kw.setdefault("encoder_steps", 30)
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    config = EvalConfig(real=real, synthetic=str(synthetic), out=str(tmp_path / "report.json"), **kw)
    return evaluate(config)


def timeless(report: dict) -> dict:
    """The report without what may differ between identical runs: timings and whether the cache was hit."""
    report = json.loads(json.dumps(report))
    del report["seconds"], report["feature_spaces"]["autoencoder"]["cache"]
    for run in report["downstream"]["classifier_runs"]:
        del run["seconds"]
    return report


@pytest.fixture(scope="module")
def copies(tmp_path_factory, breast) -> Path:
    """The real training split itself, as a synthgen dataset."""
    return write_dataset(tmp_path_factory.mktemp("copies") / "ds", breast.images, breast.labels,
                         ["malignant", "normal"], 200)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_checkpoint, ray_local) -> Path:
    """What `synthgen run` makes from an untrained generator: noise-like images, labelled."""
    out = tmp_path_factory.mktemp("gen") / "ds"
    result = invoke("run", "--count", "200", "--shard-size", "100", "--model", tiny_checkpoint, "--out",
                    str(out), "--gpus", "0", "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    return out


PLANTED = [3, 50, 77, 120, 199]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, generated, breast) -> Path:
    """The generated images with five replaced by training images (two of them nudged by one grey level)."""
    images, labels, _ = SyntheticImageDataset(generated).arrays()
    rows = [10, 400, 11, 545, 250]
    images[PLANTED] = breast.images[rows]
    images[PLANTED[:2]] = np.clip(images[PLANTED[:2]].astype(int) + 1, 0, 255).astype(np.uint8)
    labels[PLANTED] = breast.labels[rows]
    return write_dataset(tmp_path_factory.mktemp("planted") / "ds", images, labels, ["malignant", "normal"], 100)


def test_metrics_on_known_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4)) * 2 + 1  # FID = 4*1 + 4*(1 + 4 - 2*2) = 8
    assert metrics.frechet_distance(a, b) == pytest.approx(8, rel=0.05)
    assert metrics.precision_recall(a[:500], a[500:1000])[0] > 0.8
    assert metrics.precision_recall(a[:500], a[:500] + 50) == (0.0, 0.0)
    labels, scores = rng.integers(0, 2, 400), rng.random(400)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = (pos[:, None] > neg[None]).mean()  # AUC = P(score of a positive > score of a negative)
    assert metrics.roc_auc(labels, np.stack([1 - scores, scores], 1)) == pytest.approx(brute)
    three = np.eye(3)[[0, 1, 2, 1]]  # one-vs-rest over 3 classes, perfect scores
    assert metrics.roc_auc(np.array([0, 1, 2, 1]), three) == 1.0


def test_nearest_puts_exact_copies_at_distance_zero():
    """The fast |x|^2 + |y|^2 - 2xy form left copies at ~5e-7 with some BLAS kernels; copies must read 0."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (300, 784)).astype(np.float32) / 255  # scans in [0, 1], as fx.pixels gives
    idx, dist = metrics.nearest(ref[[3, 50, 77]], ref, 2)
    assert idx[:, 0].tolist() == [3, 50, 77] and dist[:, 0].tolist() == [0.0, 0.0, 0.0]
    brute = np.sqrt(((ref[3] - ref.astype(np.float64)) ** 2).sum(1))
    assert dist[0, 1] == pytest.approx(np.sort(brute)[1])
    idx, dist = metrics.nearest(ref[:5], ref, 1, exclude_self=True)
    assert (dist[:, 0] > 0).all() and (idx[:, 0] != np.arange(5)).all()


def test_real_against_itself_is_near_zero(breast_npz, copies, tmp_path):
    report = quick(breast_npz, copies, tmp_path)
    for space in ("classifier", "autoencoder"):
        fk, pr = report["feature_spaces"][space]["fid_kid"], report["feature_spaces"][space]["precision_recall"]
        # unbiased MMD^2 of a set against itself: -2/(n-1) (mean k(x, x) - mean k(x, y)), never above 0; the
        # autoencoder's standardised codes have heavier tails than the classifier's (-0.21 there at n = 546)
        assert fk["fid"] < 1e-6 and -1 < fk["kid"] <= 1e-9
        assert all(c["fid"] < 1e-6 for c in fk["per_class"].values())
        assert pr["precision"] == 1.0 and pr["recall"] == 1.0
    assert report["memorization"]["near_copy_fraction_either"] == 1.0  # a copy is a copy
    assert report["real"]["class_names"] == ["malignant", "normal"]  # the model's names for "0", "1"
    inception = report["feature_spaces"]["inception"]
    assert inception == {"skipped": inception["skipped"], "good_for": inception["good_for"]}
    assert "no Inception-v3 weights given" in inception["skipped"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["feature_spaces"]["autoencoder"]["fid_kid"]["fid"] == fk["fid"]  # fk: the last space looped
    assert (tmp_path / "report.png").stat().st_size > 0
    assert set(report["seconds"]) >= {"load data", "downstream classifiers", "memorization audit", "figures"}


def test_noise_against_real_is_far_and_copies_are_found(breast_npz, planted, tmp_path):
    # 200 steps: the weight average of a 40-step run still holds half the random initialisation
    report = quick(breast_npz, planted, tmp_path, classifier_steps=200)
    fk = report["feature_spaces"]["classifier"]["fid_kid"]
    assert fk["fid"] > 20 * fk["baseline_real_test"]["fid"] and fk["fid"] > 10
    assert report["feature_spaces"]["classifier"]["precision_recall"]["baseline_real_test"]["precision"] > 0.5
    mem = report["memorization"]
    assert sorted(mem["near_copy_indices"]) == PLANTED and mem["near_copies"] == 5
    worst = mem["worst_pairs"][:5]
    assert sorted(p["synthetic_index"] for p in worst) == PLANTED
    assert {p["real_train_row"] for p in worst} == {10, 400, 11, 545, 250}
    down = report["downstream"]
    assert down["arms"]["real"]["auc"] > 0.7  # the real-data classifier learned something
    assert set(down["arms"]) == {"real", "synthetic", "all"}
    assert list(down["gains"]) == ["real + synthetic (all) - real"]
    assert down["fit_images"] + down["validation_images"] == 546 and down["test_images"] == 156
    assert (tmp_path / "report-memorization.png").stat().st_size > 0


def test_same_seed_same_report_and_holdout(copies, tmp_path):
    # --real without a test split (a Parquet folder): 20% is held out; --max-images caps both sides
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not weights")
    def run():
        return quick(str(copies), copies, tmp_path, max_images=100, seed=5, classifier_steps=10,
                     inception_weights=str(weights))
    if importlib.util.find_spec("torch_fidelity") is not None:
        with pytest.raises(SynthgenError, match="cannot load as Inception-v3 weights"):
            run()
        return
    a = run()
    assert a["feature_spaces"]["inception"]["skipped"] == ("torch-fidelity is not installed (pip install "
                                                           "torch-fidelity); weights were given")
    b = run()
    assert a["feature_spaces"]["autoencoder"]["cache"]["cached"] is False  # trained once, then read
    assert b["feature_spaces"]["autoencoder"]["cache"]["cached"] is True
    assert timeless(a) == timeless(b) and a["synthetic"]["images_used"] == 100 and a["real"]["train_images"] == 100
    assert a["real"]["test_split"].startswith("held-out 20%") and a["real"]["test_images"] == 100
    exact = [p for p in a["memorization"]["worst_pairs"] if p["pixel_rmse"] == 0]
    assert exact and all(p["real_train_row"] == p["synthetic_index"] for p in exact)  # rows of --real


def test_report_does_not_depend_on_the_process_thread_count(copies, tmp_path):
    # a classifier's sums split by torch thread count: eval runs on its own fixed count (--threads)
    before = torch.get_num_threads()
    def run(**kw):
        return quick(str(copies), copies, tmp_path, max_images=100, seed=5, classifier_steps=10, **kw)
    reports = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            reports.append(timeless(run()))
            assert torch.get_num_threads() == count  # the process's count is restored
    finally:
        torch.set_num_threads(before)
    assert reports[0] == reports[1] and reports[0]["settings"]["threads"] == EVAL_THREADS
    # --threads is honoured; whether 1 and EVAL_THREADS threads give other sums depends on the CPU's kernels
    # (they did on the AVX-512 host of 12-02, not on 12-07's), so that is not asserted
    assert run(threads=1)["settings"]["threads"] == 1


def test_cli_eval_and_preview(breast_npz, planted, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("eval", "--real", breast_npz, "--synthetic", str(planted), "--out", str(out),
                    "--classifier-steps", STEPS, "--max-images", "150", "--repeats", "2",
                    "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert "classifier features: FID " in result.output and "autoencoder features: FID " in result.output
    assert "test AUC by training data (mean of 2 seeds, 95% interval): real " in result.output
    assert "real + synthetic (all) - real: " in result.output and "took load data" in result.output
    assert "inception features: skipped" in result.output and out.is_file()
    assert json.loads(out.read_text())["settings"]["threads"] == EVAL_THREADS  # the flag's default is the library's
    sheet = tmp_path / "sheet.png"
    shown = invoke("preview", str(planted), "--out", str(sheet), "--per-class", "4")
    assert shown.exit_code == 0 and "malignant 4, normal 4" in shown.output and sheet.stat().st_size > 0


def test_cli_bad_input(breast_npz, retina_npz, copies, breast, tmp_path, monkeypatch):
    def args(real, syn, *extra):
        return ("eval", "--real", real, "--synthetic", str(syn), "--out", str(tmp_path / "r.json"),
                "--classifier-steps", "1", *extra)
    partial = write_dataset(tmp_path / "partial", breast.images[:100], breast.labels[:100], ["a", "b"], 50,
                            complete=False)
    three = write_dataset(tmp_path / "three", breast.images[:30], breast.labels[:30], ["a", "b", "c"], 30)
    (tmp_path / "empty").mkdir()
    cases = [
        (args(retina_npz, copies), "images are 3x28x28 (C x H x W) but the synthetic dataset's are 1x28x28"),
        (args(breast_npz, three), "classes 0, 1 do not match the synthetic dataset's a, b, c"),
        (args(breast_npz, partial), "incomplete dataset (1 of 2 shards"),
        (args(breast_npz, tmp_path / "empty"), "not a synthgen dataset"),
        (args(breast_npz, tmp_path / "nope"), "no such dataset directory"),
        (args(str(tmp_path / "x.npz"), copies), "--real " + str(tmp_path / "x.npz") + ": no such file or directory"),
        (args(breast_npz, copies, "--inception-weights", str(tmp_path / "w.pth")), "w.pth: no such file"),
        (args(breast_npz, copies, "--max-images", "3"), "--max-images must be at least 10"),
        (args(breast_npz, copies, "--threads", "0"), "--threads must be at least 1"),
        (args(breast_npz, copies, "--repeats", "0"), "--repeats must be 1 to 100"),
        (args(breast_npz, copies, "--recipe", "all,mixup"), "--recipe: unknown recipe 'mixup'"),
        (args(breast_npz, copies, "--recipe", "ratio:x"), "--recipe: recipe 'ratio:x': give a number"),
        (args(breast_npz, copies, "--recipe", "fraction:1.5"), "the fraction must be between 0 and 1"),
        (args(breast_npz, copies, "--real-fractions", "0.1,2"), "--real-fractions: each must be in (0, 1]"),
        (args(breast_npz, copies, "--real-fractions", "a"), "--real-fractions 'a': give comma-separated"),
        (("eval", "--real", breast_npz, "--synthetic", str(copies), "--out", str(tmp_path / "no/r.json")),
         "does not exist"),
        (("eval", "--real", breast_npz, "--synthetic", str(copies), "--out", str(tmp_path / "empty"),
          "--classifier-steps", "1"), "--out " + str(tmp_path / "empty") + ": is a directory"),
        (("preview", str(copies), "--out", str(tmp_path / "s.png"), "--per-class", "0"),
         "--per-class must be at least 1"),
        (("preview", str(partial)), "incomplete dataset"),
    ]
    for argv, message in cases:
        result = invoke(*argv)
        assert result.exit_code == 1 and message in result.output, (argv, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    monkeypatch.setenv("SYNTHGEN_INCEPTION_WEIGHTS", str(tmp_path / "env.pth"))
    result = invoke(*args(breast_npz, copies))
    assert result.exit_code == 1 and "$SYNTHGEN_INCEPTION_WEIGHTS" in result.output


def test_cli_recipes_and_real_fractions(breast_npz, copies, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("eval", "--real", breast_npz, "--synthetic", str(copies), "--out", str(out),
                    "--classifier-steps", "10", "--repeats", "2", "--recipe", "topup,pretrain",
                    "--real-fractions", "0.25,1", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    down = json.loads(out.read_text())["downstream"]
    assert list(down["arms"]) == ["real", "synthetic", "topup", "pretrain"] and down["seeds"] == [0, 1]
    assert all(len(arm["per_seed"]) == 2 and arm["low"] <= arm["high"] for arm in down["arms"].values())
    assert [row["fraction"] for row in down["real_fractions"]] == [0.25, 1.0]
    assert down["real_fractions"][0]["real_images"] == 31 + 85  # a quarter of each class's fit part (125, 339)
    with np.load(breast_npz) as d:  # the images synthgen train --real-share 0.25 trains a generator on
        assert len(real_share_rows(d["train_labels"].reshape(-1), 0.25)) == 31 + 85
    stages = [r["arm"] for r in down["classifier_runs"] if r["seed"] == 0]
    assert stages[:5] == ["real", "synthetic", "topup", "pretrain (synthetic stage)", "pretrain"]
    assert "real + synthetic (pretrain) - real: " in result.output and "0.25 of the real images" in result.output
    from PIL import Image
    with Image.open(out.with_suffix(".png")) as figure:  # the data-efficiency chart is drawn in it
        assert (np.asarray(figure.convert("RGB")) == figures.REAL_COLOUR).all(axis=2).sum() > 50


@pytest.mark.parametrize("better", ["real", "topup"])
def test_the_data_efficiency_chart_draws_the_better_arm_higher(better):
    def arms(real: float, synthetic: float) -> dict:
        return {"real": {"auc": real, "low": real - 0.03, "high": real + 0.03},
                "topup": {"auc": synthetic, "low": synthetic - 0.03, "high": synthetic + 0.03}}
    high, low = 0.9, 0.7
    rows = [{"fraction": f, "real_images": n, "recipe": "topup",
             "arms": arms(high, low) if better == "real" else arms(low, high)} for f, n in ((0.1, 46), (1, 464))]
    chart = np.asarray(figures._efficiency_chart(rows, 700))[40:]  # below the legend
    heights = {name: np.nonzero((chart == colour).all(axis=2))[0].mean()
               for name, colour in (("real", figures.REAL_COLOUR), ("topup", figures.SYNTHETIC_COLOUR))}
    other = "topup" if better == "real" else "real"
    assert heights[better] < heights[other] - 50  # image rows grow downwards


def test_eval_reads_a_dicom_dataset_and_leaves_its_results_on_the_card(breast_npz, tiny_checkpoint, ray_local,
                                                                        tmp_path):
    out = tmp_path / "dicom"
    made = invoke("run", "--count", "120", "--shard-size", "60", "--model", tiny_checkpoint, "--out", str(out),
                  "--format", "dicom", "--gpus", "0", "--workers", "1", "--no-progress")
    assert made.exit_code == 0, made.output
    assert "Not evaluated yet" in (out / "README.md").read_text()
    report = quick(breast_npz, out, tmp_path, max_images=100)
    summary = json.loads((out / "eval.json").read_text())
    assert summary["memorization"]["near_copies"] == report["memorization"]["near_copies"]
    card = (out / "README.md").read_text()
    assert "## Evaluation and memorization" in card and "**Memorization**: " in card
    assert f"FID {report['feature_spaces']['classifier']['fid_kid']['fid']:.2f}" in card
    assert invoke("verify", str(out)).exit_code == 0  # eval.json and the card are not strays
