"""--format dicom and --format nifti end to end: train on DICOM files, generate, verify, show, re-run to the same
bytes, resume after a killed actor, read back with synthgen, nibabel and MONAI; bad flags are one line."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from gated_arch import gated_checkpoint, wait_until_held
from typer.testing import CliRunner

from synthgen.checkpoint import read_config
from synthgen.cli import app
from synthgen.data import SyntheticImageDataset
from synthgen.dataset.dicom import DicomEncoder
from synthgen.dataset.format import Layout
from synthgen.dataset.verify import verify_dataset
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run

LICENSE, CITATION = "CC-BY-4.0", "Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023)"


def tree(out: str | Path) -> dict[str, bytes]:
    """Every file of a dataset's images/ and meta/ folders and its metadata.parquet, by relative path."""
    root = Path(out)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[len(root.parts)] in ("images", "meta", "metadata.parquet")}


@pytest.fixture(scope="module")
def dicom_model(tmp_path_factory, breast) -> str:
    """A tiny DCGAN trained one epoch on 64 BreastMNIST images stored as 8-bit DICOM files with 0.5 mm pixels,
    declaring the data's license and citation."""
    root = tmp_path_factory.mktemp("dicom-data")
    stamp = {"job": {"shard_size": 1000, "spacing": [0.5, 0.5]}, "model": {"fingerprint": "0" * 64}}
    encoder = DicomEncoder(Layout("dicom", ("x",), file_metadata=stamp))
    for k in range(64):
        folder = root / "data" / breast.class_names[breast.labels[k]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k}.dcm").write_bytes(encoder.encode_one(k, 0, breast.images[k]))
    out = root / "model"
    result = CliRunner().invoke(app, ["train", "--data", str(root / "data"), "--out", str(out), "--epochs", "1",
                                      "--width", "32", "--latent-dim", "16", "--batch-size", "32", "--device",
                                      "cpu", "--quiet", "--data-license", LICENSE, "--data-citation", CITATION])
    assert result.exit_code == 0, result.output
    return str(out)


def job(tmp_path, name, model, fmt, **kw) -> RunConfig:
    defaults = {"count": 240, "out": str(tmp_path / name), "model": model, "shard_size": 100, "seed": 5,
                "format": fmt, "progress": False, "gpus": 0, "workers": 1}
    return RunConfig(**{**defaults, **kw})


def test_training_on_dicom_records_spacing_license_and_citation(dicom_model):
    training = read_config(dicom_model).training
    assert training["pixel_spacing"] == [0.5, 0.5]
    assert (training["data_license"], training["data_citation"]) == (LICENSE, CITATION)


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_a_run_verifies_shows_and_rewrites_the_same_bytes(tmp_path, dicom_model, ray_local, fmt):
    first, again = job(tmp_path, "a", dicom_model, fmt), job(tmp_path, "b", dicom_model, fmt, shard_size=60,
                                                                batch_size=64)
    run(first)
    files = tree(first.out)
    suffix = ".dcm" if fmt == "dicom" else ".nii.gz"
    assert len([f for f in files if f.endswith(suffix)]) == 240
    assert verify_dataset(first.out).ok
    run(first)  # a finished dataset: nothing to do, nothing touched
    assert tree(first.out) == files
    run(again)  # other shard and batch sizes: the images are the same, but DICOM series follow the shards
    same = {f: b for f, b in tree(again.out).items() if f.startswith("images/")}
    mine = {f: b for f, b in files.items() if f.startswith("images/")}
    assert same.keys() == mine.keys()
    if fmt == "nifti":
        assert same == mine
    shown = CliRunner().invoke(app, ["show", first.out, "--index", "123"])
    kind = "DICOM" if fmt == "dicom" else "NIfTI"
    assert shown.exit_code == 0 and f"identical {kind} bytes" in shown.output, shown.output
    card = Path(first.out, "README.md").read_text()
    assert "license: cc-by-4.0" in card and CITATION in card and "Not for diagnosis" in card
    assert "0.5 x 0.5 mm" in card


def test_dicom_files_carry_the_training_spacing_and_one_series_per_shard_and_class(tmp_path, dicom_model, ray_local):
    config = job(tmp_path, "d", dicom_model, "dicom")
    run(config)
    meta = pq.read_table(Path(config.out, "metadata.parquet")).to_pylist()
    series = {}
    for row in meta:
        ds = pydicom.dcmread(Path(config.out, row["file_name"]))
        assert [float(s) for s in ds.PixelSpacing] == [0.5, 0.5]
        assert ds.InstanceNumber == row["index"] + 1
        assert ds.private_block(0x0009, "SYNTHGEN 1")[0x02].value == row["label"]
        series.setdefault(ds.SeriesInstanceUID, set()).add((row["index"] // 100, row["label"]))
    assert all(len(keys) == 1 for keys in series.values()) and len(series) == 6  # 3 shards x 2 classes


def test_nifti_spacing_from_the_flag_and_monai_loads_both_formats(tmp_path, dicom_model, ray_local):
    from monai.transforms import LoadImage

    nifti = job(tmp_path, "n", dicom_model, "nifti", spacing="0.7x0.25", count=100)
    dicom = job(tmp_path, "d", dicom_model, "dicom", count=100)
    run(nifti)
    run(dicom)
    ours = SyntheticImageDataset(nifti.out).arrays()[0]
    assert np.array_equal(ours, SyntheticImageDataset(dicom.out).arrays()[0])  # the same images either way
    load = LoadImage(image_only=True)
    for out in (nifti.out, dicom.out):
        rows = pq.read_table(Path(out, "metadata.parquet")).to_pylist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = [load(str(Path(out, row["file_name"]))) for row in rows[:8]]
        for row, image in zip(rows, loaded):
            assert tuple(image.shape) == (28, 28)  # MONAI's 2D layout: (x, y), the PNG reader's too
            assert np.array_equal(np.asarray(image), ours[row["index"], :, :, 0].T)
    img = nib.load(Path(nifti.out, pq.read_table(Path(nifti.out, "metadata.parquet")).column(0)[0].as_py()))
    assert img.header.get_zooms() == pytest.approx((0.25, 0.7)) and b"SYNTHETIC" in img.header["descrip"].tobytes()
    assert json.loads(Path(nifti.out, "manifest.json").read_text())["job"]["spacing"] == [0.7, 0.25]


def test_an_actor_killed_mid_shard_resumes_to_the_uninterrupted_dicom_bytes(tmp_path, tiny_checkpoint, ray_local):
    model, gate = gated_checkpoint(tiny_checkpoint, tmp_path, stop_at=6)
    reference = job(tmp_path, "ref", str(model), "dicom", count=600, batch_size=64, allow_import=True)
    run(reference)  # the gate is not armed: an uninterrupted run of the same model
    (gate / "armed").touch()
    config = job(tmp_path, "killed", str(model), "dicom", count=600, batch_size=64, allow_import=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(config)))
    thread.start()
    try:
        victim = wait_until_held(gate, thread.is_alive)
        manifest = Path(config.out, "manifest.json")
        while not manifest.exists() or not json.loads(manifest.read_text())["shards"]:
            assert thread.is_alive(), "the run ended while an actor was held"
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
    finally:
        (gate / "release").touch()
    thread.join(timeout=240)
    assert not thread.is_alive() and result["summary"].generated == 600
    report = verify_dataset(config.out)
    assert report.ok and report.rows == 600 and not report.strays
    assert tree(config.out) == tree(reference.out)


@pytest.mark.parametrize("args,message", [
    (["--format", "nifti", "--spacing", "abc"], "--spacing must be a positive size in mm"),
    (["--format", "nifti", "--spacing", "0.5x0"], "--spacing must be a positive size in mm"),
    (["--format", "png", "--spacing", "0.5"], "--spacing is for --format nifti"),
    (["--format", "dicom", "--encoding", "raw"], "--encoding must be png or raw"),
    (["--format", "tiff"], "--format must be one of parquet, png, dicom, nifti"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--count", "10", "--out", str(out), "--address", "local", *args])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert not out.exists()
