"""16-bit models end to end through the CLI (train, run in every encoding, verify, show, sample, preview, the
readers of synthgen.data and Hugging Face), the PNG marking, and a dataset started unmarked finished unmarked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from synthgen.checkpoint import read_config
from synthgen.data import SyntheticImageDataset, loader
from synthgen.dataset import manifest as mf
from synthgen.imaging import (
    DIGITAL_SOURCE_TYPE,
    PARQUET_PNG_SETTINGS,
    decode_png,
    encode_png,
    png_marking,
)
from synthgen.readers import load_images

from test_cli_run import invoke, run_args  # the CLI tests' shared helpers


@pytest.fixture(scope="module")
def model16(tmp_path_factory, breast_npz) -> str:
    """A tiny DCGAN trained 2 epochs on 96 BreastMNIST images widened to 16 bits (x257: 0..65535)."""
    root = tmp_path_factory.mktemp("depth")
    with np.load(breast_npz) as d:
        images, labels = d["train_images"][:96].astype(np.uint16) * 257, d["train_labels"][:96]
    np.savez(root / "b16.npz", train_images=images, train_labels=labels)
    out = root / "m16"
    result = invoke("train", "--data", str(root / "b16.npz"), "--out", str(out), "--epochs", "2", "--width", "32",
                    "--latent-dim", "16", "--batch-size", "16", "--device", "cpu", "--class-names",
                    "malignant,normal", "-q")
    assert result.exit_code == 0, result.output
    return str(out)


def test_a_16bit_source_trains_a_16bit_model(model16):
    config = read_config(model16)
    assert config.bit_depth == 16 and config.pixels["dtype"] == "uint16"
    assert "2**bit_depth - 1" in config.pixels["mapping"]
    grid = Image.open(Path(model16) / "samples" / "epoch-002.png")
    assert grid.mode == "I;16"  # the sample grid keeps the depth too


@pytest.mark.parametrize("fmt,encoding", [("parquet", "png"), ("parquet", "raw"), ("png", "png")])
def test_a_16bit_model_writes_16bit_output_spanning_the_range(model16, tmp_path, ray_local, fmt, encoding):
    out = tmp_path / "ds"
    result = invoke(*run_args(model16, out, "--format", fmt, "--encoding", encoding))
    assert result.exit_code == 0, result.output
    assert invoke("verify", str(out)).exit_code == 0
    shown = invoke("show", str(out), "--index", "123", "--out", str(tmp_path / "x.png"))
    assert shown.exit_code == 0 and ("identical PNG bytes" if encoding == "png" else "identical pixels") in shown.output
    assert Image.open(tmp_path / "x.png").mode == "I;16"
    images, _, indices = SyntheticImageDataset(str(out)).arrays()
    assert images.dtype == np.uint16 and np.array_equal(indices, np.arange(300))
    # far beyond 8 bits: thousands of distinct levels over more than a quarter of the range
    assert len(np.unique(images)) > 4096 and int(images.max()) - int(images.min()) > 2**14
    x, _ = SyntheticImageDataset(str(out))[5]
    assert torch.equal(x, torch.from_numpy(images[5].transpose(2, 0, 1).astype(np.float32)) / 65535)
    for cache in (False, tmp_path / "cache"):
        batch, _ = next(iter(loader(str(out), batch_size=300, shuffle=False, num_workers=0, cache=cache)))
        assert torch.allclose(batch * 65535, torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["bit_depth"] == 16
    if encoding == "raw":
        field = pq.read_schema(out / "data" / "shard-00000.parquet").field("image")
        assert field.metadata[b"dtype"] == b"<u2" and field.type.byte_width == 28 * 28 * 2
    assert load_images(str(out)).images.dtype == np.uint16  # synthgen's own output trains again, exactly


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_a_16bit_model_writes_16bit_dicom_and_nifti(model16, tmp_path, ray_local, fmt):
    out = tmp_path / "ds"
    result = invoke(*run_args(model16, out, "--format", fmt))
    assert result.exit_code == 0, result.output
    assert invoke("verify", str(out)).exit_code == 0
    shown = invoke("show", str(out), "--index", "123", "--out", str(tmp_path / "x.png"))
    assert shown.exit_code == 0 and "identical" in shown.output and "bytes" in shown.output, shown.output
    images, _, indices = SyntheticImageDataset(str(out)).arrays()
    assert images.dtype == np.uint16 and np.array_equal(indices, np.arange(300))
    assert len(np.unique(images)) > 4096 and int(images.max()) - int(images.min()) > 2**14


def test_hugging_face_decodes_a_16bit_parquet_dataset(model16, tmp_path, ray_local):
    from datasets import load_dataset

    out = tmp_path / "ds"
    assert invoke(*run_args(model16, out)).exit_code == 0
    ds = load_dataset("parquet", data_dir=str(out / "data"), split="train", cache_dir=str(tmp_path / "hf"))
    ours = SyntheticImageDataset(str(out))
    for k in (0, 150, 299):
        image = ds[k]["image"]
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(image), ours.row(k)["image"][:, :, 0])


def test_sample_and_preview_draw_a_16bit_model(model16, tmp_path, ray_local):
    assert invoke("sample", "--model", model16, "--count", "4", "--out", str(tmp_path / "g.png")).exit_code == 0
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    out = tmp_path / "ds"
    assert invoke(*run_args(model16, out)).exit_code == 0
    assert invoke("preview", str(out), "--out", str(tmp_path / "sheet.png"), "--per-class", "4").exit_code == 0
    assert np.asarray(Image.open(tmp_path / "sheet.png").convert("L")).std() > 0


def test_every_png_is_marked_synthetic_with_model_and_index(tiny_checkpoint, tmp_path, ray_local):
    for fmt in ("parquet", "png"):
        out = tmp_path / fmt
        assert invoke(*run_args(tiny_checkpoint, out, "--format", fmt)).exit_code == 0
        manifest = mf.load(mf.storage.locate(str(out)))
        assert manifest.job["png_marking"] == "xmp-iptc-trainedAlgorithmicMedia-1"
        if fmt == "parquet":
            png = pq.read_table(out / "data" / "shard-00002.parquet").column("image")[17]["bytes"].as_py()
        else:
            png = next((out / "images").glob("*/000000217.png")).read_bytes()
        text = png_marking(png)
        xmp = text["XML:com.adobe.xmp"]
        assert f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"' in xmp
        assert f'synthgen:ModelFingerprint="{manifest.model["fingerprint"]}"' in xmp
        assert 'synthgen:Index="000000217"' in xmp and "not a real scan" in text["Description"]
        assert decode_png(png).shape == (28, 28, 1)  # any decoder still reads it


def test_a_dataset_started_unmarked_is_finished_unmarked(tiny_checkpoint, tmp_path, ray_local):
    """A 0.6.0 dataset (its manifest has no png_marking) gets 0.6.0's bytes for the shards it misses."""
    out = tmp_path / "old"
    assert invoke(*run_args(tiny_checkpoint, tmp_path / "new")).exit_code == 0
    started = json.loads((tmp_path / "new" / "manifest.json").read_text())
    started["job"].pop("png_marking")
    started.update(status="in_progress", shards=[], rows=0, bytes=0, class_counts={})
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(started))  # as 0.6.0 left it, killed before any shard
    assert invoke(*run_args(tiny_checkpoint, out)).exit_code == 0
    shard = out / "data" / "shard-00001.parquet"
    table = pq.read_table(shard)
    assert b"png_marking" not in table.schema.metadata[b"synthgen"]
    for cell in table.column("image").to_pylist()[:5]:
        png = cell["bytes"]
        assert "XML:com.adobe.xmp" not in png_marking(png)
        assert png == encode_png(decode_png(png), PARQUET_PNG_SETTINGS)  # 0.6.0's encoder output, unmarked
    first = shard.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["shard_id"] != 1]
    manifest["status"] = "in_progress"
    (out / "manifest.json").write_text(json.dumps(manifest))
    shard.unlink()
    assert invoke(*run_args(tiny_checkpoint, out)).exit_code == 0  # resumed: the same unmarked bytes again
    assert shard.read_bytes() == first
    assert "png_marking" not in json.loads((out / "manifest.json").read_text())["job"]


# ---------------------------------------------------------------- sizes: 128, 256 and non-square

@pytest.mark.parametrize("arch,size,source", [("dcgan", None, (256, 192)), ("vae", "128", (28, 28)),
                                              ("dcgan", "128", (28, 28))])
def test_larger_and_non_square_models_train_and_run(tmp_path, ray_local, arch, size, source):
    """A 256x192 source keeps its aspect without --image-size; a 28x28 one is resized to --image-size 128."""
    rng = np.random.default_rng(0)
    h, w = source
    ramp = np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w)  # (H, W): smooth, with some noise
    images = np.clip(ramp[None] + rng.integers(-8, 8, (16, h, w)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "src.npz", train_images=images, train_labels=np.arange(16) % 2)
    model = tmp_path / "m"
    flags = ["--image-size", size] if size else []
    trained = invoke("train", "--data", str(tmp_path / "src.npz"), "--out", str(model), "--arch", arch,
                     "--epochs", "1", "--width", "128", "--latent-dim", "8", "--batch-size", "8", "--device",
                     "cpu", "-q", *flags)
    assert trained.exit_code == 0, trained.output
    expected = [1, 256, 192] if size is None else [1, 128, 128]
    assert read_config(str(model)).image_shape == expected
    out = tmp_path / "ds"
    ran = invoke("run", "--count", "64", "--shard-size", "32", "--model", str(model), "--out", str(out),
                 "--gpus", "0", "--workers", "1", "--no-progress")
    assert ran.exit_code == 0, ran.output
    assert invoke("verify", str(out)).exit_code == 0
    assert invoke("show", str(out), "--index", "40").exit_code == 0
    images, _, _ = SyntheticImageDataset(str(out)).arrays()
    assert images.shape == (64, expected[1], expected[2], 1)


@pytest.mark.slow
def test_a_non_square_diffusion_model_trains_and_runs(tmp_path, ray_local):
    """128x96 16-bit images keep their size and depth in a diffusion model too (5 UNet levels: 8x6 at the bottom;
    256x192's six levels: tests/test_diffusion_models.py)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 65535, (8, 128, 96), dtype=np.uint16)
    np.savez(tmp_path / "src.npz", train_images=images, train_labels=np.arange(8) % 2)
    model = tmp_path / "m"
    trained = invoke("train", "--data", str(tmp_path / "src.npz"), "--out", str(model), "--arch", "diffusion",
                     "--epochs", "1", "--width", "8", "--batch-size", "4", "--device", "cpu", "-q")
    assert trained.exit_code == 0, trained.output
    assert read_config(str(model)).image_shape == [1, 128, 96] and read_config(str(model)).bit_depth == 16
    out = tmp_path / "ds"
    ran = invoke("run", "--count", "4", "--model", str(model), "--out", str(out), "--gpus", "0", "--workers", "1",
                 "--steps", "2", "--no-progress")
    assert ran.exit_code == 0, ran.output
    assert invoke("show", str(out), "--index", "3").exit_code == 0
    pixels, _, _ = SyntheticImageDataset(str(out)).arrays()
    assert pixels.shape == (4, 128, 96, 1) and pixels.dtype == np.uint16
    bad = invoke("train", "--data", str(tmp_path / "src.npz"), "--out", str(tmp_path / "x"), "--arch", "diffusion",
                 "--image-size", "100x60", "-q")
    assert bad.exit_code != 0 and "--image-size 100x60 is not one a diffusion" in bad.output


@pytest.mark.parametrize("flag,needle", [("0x5", "--image-size 0x5 is not one"),
                                         ("3000x3000", "--image-size 3000x3000 is not one"),
                                         ("30", "--image-size 30x30 is not one"),
                                         ("big", "--image-size must be H or HxW")])
def test_an_impossible_image_size_is_one_line_and_writes_nothing(breast_npz, tmp_path, flag, needle):
    result = invoke("train", "--data", breast_npz, "--out", str(tmp_path / "m"), "--image-size", flag, "-q")
    assert result.exit_code != 0 and needle in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "m").exists()


def test_mixed_depths_fail_train_in_one_line_naming_the_file(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 9000, np.uint16)).save(tmp_path / "src" / "a" / "1.png")
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(tmp_path / "src" / "a" / "2.png")
    result = invoke("train", "--data", str(tmp_path / "src"), "--out", str(tmp_path / "m"), "-q")
    assert result.exit_code != 0 and "2.png" in result.output and "bit depth" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
