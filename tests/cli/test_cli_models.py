"""synthgen train / sample / models through the real Typer app: files out, one-line errors in."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthgen.checkpoint import DEFAULT_MODEL, load_checkpoint
from synthgen.cli import app

runner = CliRunner()
TINY = ["--width", "32", "--latent-dim", "16", "--batch-size", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def breast_subset(tmp_path_factory: pytest.TempPathFactory, breast_npz: str) -> str:
    """96 real BreastMNIST training images, both classes."""
    with np.load(breast_npz) as d:
        images, labels = d["train_images"][:96], d["train_labels"][:96]
    path = tmp_path_factory.mktemp("cli-data") / "breast96.npz"
    np.savez(path, train_images=images, train_labels=labels)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, breast_subset: str) -> dict[str, Path]:
    """One epoch of each architecture, trained through the CLI."""
    root = tmp_path_factory.mktemp("cli-train")
    outs = {}
    for arch in ("dcgan", "vae"):
        out = root / arch
        result = runner.invoke(app, ["train", "--data", breast_subset, "--arch", arch, "--out", str(out),
                                     "--epochs", "1", "--class-names", "malignant,normal", *TINY])
        assert result.exit_code == 0, result.output
        assert f"saved {out}" in result.output
        outs[arch] = out
    return outs


def _error(args: list[str], *needles: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        return img.size


@pytest.mark.parametrize("arch", ["dcgan", "vae"])
def test_train_writes_checkpoint_and_samples(trained: dict[str, Path], arch: str) -> None:
    out = trained[arch]
    for name in ("config.json", "model.safetensors", "training_state.safetensors", "samples/epoch-001.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(str(out))
    assert ckpt.config.arch == arch and ckpt.config.class_names == ["malignant", "normal"]


def test_sample_every_class_in_rows(trained: dict[str, Path], tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--model", str(trained["dcgan"]), "--count", "4", "--seed", "3",
                                 "--out", str(grid), "--scale", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "malignant, normal" in result.output
    assert _png_size(grid) == (4 * 30 + 2, 2 * 30 + 2)  # one row of 4 per class, 2 px padding


def test_sample_label_by_name_equals_by_index(trained: dict[str, Path], tmp_path: Path) -> None:
    paths = {}
    for label in ("normal", "1", "0"):
        paths[label] = tmp_path / f"{label}.png"
        result = runner.invoke(app, ["sample", "--model", str(trained["vae"]), "--label", label, "--count", "8",
                                     "--out", str(paths[label]), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    assert paths["normal"].read_bytes() == paths["1"].read_bytes()
    assert paths["normal"].read_bytes() != paths["0"].read_bytes()


def test_sample_bundled_default_model(tmp_path: Path) -> None:
    grid = tmp_path / "bundled.png"
    result = runner.invoke(app, ["sample", "--out", str(grid), "--count", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert DEFAULT_MODEL in result.output or "bundled" in result.output
    with Image.open(grid) as img:
        pixels = np.asarray(img)
    assert pixels.std() > 10  # real content, not a blank sheet


def test_models_lists_the_bundled_model() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if row.startswith(DEFAULT_MODEL))
    assert "dcgan" in line and "malignant,normal" in line and "1x28x28" in line
    assert load_checkpoint(DEFAULT_MODEL).fingerprint[:12] in line


def test_the_bundled_diffusion_model_is_listed_samples_and_matches_its_card(tmp_path: Path) -> None:
    from synthgen.checkpoint import bundled_root, data_terms, read_config

    name = "breastmnist-diffusion"
    listed = runner.invoke(app, ["models"])
    line = next(row for row in listed.output.splitlines() if row.startswith(name))
    fingerprint = load_checkpoint(name).fingerprint
    assert "diffusion" in line and "malignant,normal" in line and fingerprint[:12] in line
    assert f"`{fingerprint}`" in (bundled_root() / name / "README.md").read_text()  # the card names these weights
    terms = data_terms(name, read_config(name))  # from config.json: no data_terms.json beside it
    assert terms["license"] == "CC-BY-4.0" and "MedMNIST v2" in terms["citation"]
    grid = tmp_path / "diffusion.png"
    result = runner.invoke(app, ["sample", "--model", name, "--out", str(grid), "--count", "4", "--sampler",
                                 "dpm++", "--steps", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with Image.open(grid) as img:
        pixels = np.asarray(img)
    assert pixels.std() > 10  # real content, not a blank sheet


def test_train_missing_data(tmp_path: Path) -> None:
    _error(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o"), *TINY],
           "nope.npz", "--data")


def test_train_npz_without_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 28, 28), np.uint8))
    _error(["train", "--data", str(bad), "--out", str(tmp_path / "o"), *TINY], "bad.npz", "it has: pixels")


def test_train_zero_epochs(breast_subset: str, tmp_path: Path) -> None:
    _error(["train", "--data", breast_subset, "--out", str(tmp_path / "o"), "--epochs", "0", *TINY], "--epochs")
    assert not (tmp_path / "o").exists()


def test_train_refuses_existing_out(trained: dict[str, Path], breast_subset: str) -> None:
    _error(["train", "--data", breast_subset, "--out", str(trained["vae"]), "--arch", "vae", "--epochs", "1",
            *TINY], "already holds a checkpoint")


def test_sample_pickle_checkpoint_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    evil = Path(shutil.copytree(trained["dcgan"], tmp_path / "evil"))
    (evil / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    _error(["sample", "--model", str(evil), "--out", str(tmp_path / "g.png")], "model.safetensors", "pickle")
    assert not (tmp_path / "g.png").exists()


def test_sample_bad_label_and_count(trained: dict[str, Path], tmp_path: Path) -> None:
    out = str(tmp_path / "g.png")
    _error(["sample", "--model", str(trained["dcgan"]), "--label", "benign", "--out", out],
           "--label", "malignant, normal")
    _error(["sample", "--model", str(trained["dcgan"]), "--count", "0", "--out", out], "--count")
    _error(["sample", "--model", str(tmp_path / "nothing"), "--out", out], "nothing")


def test_sample_of_a_model_with_nan_weights_is_one_line(tmp_path, tiny_checkpoint):
    from conftest import make_tiny_checkpoint

    from synthgen.checkpoint import save_checkpoint

    make_tiny_checkpoint(tmp_path / "nan")
    ckpt = load_checkpoint(str(tmp_path / "nan"))
    ckpt.model.label_embed.weight.data[1] = float("nan")  # class 1's images become NaN
    save_checkpoint(str(tmp_path / "nan"), ckpt.model, ckpt.config)
    _error(["sample", "--model", str(tmp_path / "nan"), "--count", "4", "--out", str(tmp_path / "g.png"),
            "--device", "cpu"], "image 4: the generator's output is not finite", "precision fp32")
    assert not (tmp_path / "g.png").exists()
