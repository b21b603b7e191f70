"""Writers: atomic commits, row groups independent of batching, and files that HF, Ray Data and pyarrow read."""

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from synthgen import storage
from synthgen.dataset.format import PARQUET_COMPRESSION, Layout, image_file, is_written_file, raw_pixels, shard_file
from synthgen.dataset.writers import ROW_GROUP_ROWS, ShardWriter, write_png_metadata
from synthgen.generate.plan import ShardSpec, image_seeds
from synthgen.imaging import decode_png, encode_png

CLASSES = ("malignant", "normal")


def _write(root, fmt, spec, step):
    loc = storage.locate(root)
    writer = ShardWriter(loc, Layout(fmt, CLASSES, file_metadata={"job": {"seed": 1}}), spec)
    indices = spec.indices()
    pngs = [encode_png(np.full((28, 28, 1), i % 251, np.uint8)) for i in indices]
    for s in range(0, spec.count, step):
        sl = slice(s, s + step)
        writer.add(indices[sl], indices[sl].astype(np.uint64) * 3, indices[sl] % 2, pngs[sl])
    return writer.commit(), loc


@pytest.mark.parametrize("fmt", ["parquet", "png"])
def test_bytes_do_not_depend_on_batching(tmp_path, fmt):
    spec = ShardSpec(2, 2 * 2500, 3 * 2500)
    a, _ = _write(tmp_path / "a", fmt, spec, 256)
    b, _ = _write(tmp_path / "b", fmt, spec, 333)
    assert a == b  # same sha256, size, rows and class counts
    assert a.rows == 2500 and a.class_counts == {"malignant": 1250, "normal": 1250}


def test_parquet_shard_layout(tmp_path):
    record, loc = _write(tmp_path, "parquet", ShardSpec(0, 0, 3000), 500)
    path = loc.join(record.file)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == record.sha256
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [ROW_GROUP_ROWS] * 2 + [952]
    table = pq.read_table(path)
    assert table.column_names == ["image", "index", "seed", "label"]
    assert decode_png(table.column("image")[5]["bytes"].as_py()).shape == (28, 28, 1)
    assert b"huggingface" in table.schema.metadata and b"synthgen" in table.schema.metadata
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    assert {chunk.compression for chunk in chunks} == {PARQUET_COMPRESSION.upper()}
    assert os.listdir(tmp_path / "data") == ["shard-00000.parquet"]  # no temporaries left


def test_aborted_shard_leaves_nothing(tmp_path):
    loc = storage.locate(tmp_path)
    writer = ShardWriter(loc, Layout("parquet", CLASSES), ShardSpec(0, 0, 10))
    writer.add(np.arange(5), np.arange(5, dtype=np.uint64), np.zeros(5, np.int64), [b"x"] * 5)
    writer.abort()
    assert os.listdir(tmp_path / "data") == []


def test_png_tree_is_an_imagefolder(tmp_path):
    record, loc = _write(tmp_path, "png", ShardSpec(0, 0, 10), 4)
    assert sorted(os.listdir(tmp_path / "images")) == ["malignant", "normal"]
    png = tmp_path / "images" / "normal" / "000000003.png"
    from PIL import Image
    assert Image.open(png).mode == "L"
    meta = pq.read_table(loc.join(record.file))
    assert meta.column("file_name")[3].as_py() == "images/normal/000000003.png"


def test_png_tree_with_its_metadata_loads_as_a_hf_imagefolder(tmp_path, monkeypatch):
    """``load_dataset("imagefolder", data_dir=DIR)`` on a PNG tree: every image with its index, seed (as a
    string: half of all seeds are >= 2**63, which the imagefolder builder cannot hold), class name and PNG
    checksum; synthgen's own Dataset reads the same file back to integer seeds."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    loc, layout, files = storage.locate(tmp_path / "ds"), Layout("png", CLASSES), []
    seeds = image_seeds(0, np.arange(40))
    assert seeds.max() >= 2**63  # what broke the imagefolder builder when seeds were stored as uint64
    for spec in (ShardSpec(0, 0, 25), ShardSpec(1, 25, 40)):
        writer = ShardWriter(loc, layout, spec)
        idx = spec.indices()
        writer.add(idx, seeds[idx], idx % 2, [encode_png(np.full((28, 28, 1), i, np.uint8)) for i in idx])
        files.append(writer.commit().file)
    write_png_metadata(loc, files, CLASSES)
    from datasets import load_dataset
    ds = load_dataset("imagefolder", data_dir=str(tmp_path / "ds"), split="train").sort("index")
    assert len(ds) == 40 and ds.features["label"].names == list(CLASSES)
    assert ds["seed"] == [str(s) for s in seeds.tolist()] and ds["label"] == [i % 2 for i in range(40)]
    assert np.array_equal(np.asarray(ds[33]["image"]), np.full((28, 28), 33, np.uint8))
    from synthgen.data import SyntheticImageDataset
    mine = SyntheticImageDataset(str(tmp_path / "ds"))  # no manifest here: read through metadata.parquet
    assert mine.info.layout == "png" and mine.info.class_names == list(CLASSES)
    assert [mine.row(i)["seed"] for i in range(40)] == seeds.tolist()  # Python ints again


def test_hf_datasets_ray_data_and_pyarrow_read_the_shards(tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for j in range(2):
        _write(tmp_path / "ds", "parquet", ShardSpec(j, j * 100, (j + 1) * 100), 64)
    from datasets import load_dataset
    ds = load_dataset("parquet", data_files=str(tmp_path / "ds" / "data" / "shard-*.parquet"), split="train")
    assert len(ds) == 200 and ds.features["label"].names == list(CLASSES)
    assert ds[7]["image"].size == (28, 28) and ds[7]["label"] == 1
    rows = ray_local.data.read_parquet(str(tmp_path / "ds" / "data")).take(3)
    assert len(rows) == 3 and set(rows[0]) >= {"image", "index", "seed", "label"}
    assert pads.dataset(str(tmp_path / "ds" / "data"), format="parquet").count_rows() == 200


def test_raw_pixels_are_fixed_size_binary_that_hf_and_pyarrow_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    layout = Layout("parquet", CLASSES, encoding="raw", image_shape=(28, 14, 3))
    writer = ShardWriter(storage.locate(tmp_path / "ds"), layout, ShardSpec(0, 0, 50))
    pixels = np.random.default_rng(0).integers(0, 256, (50, 28, 14, 3), dtype=np.uint8)
    for s in range(0, 50, 16):  # batches that do not divide the shard
        rows = np.arange(s, min(s + 16, 50))
        writer.add(rows, rows.astype(np.uint64), rows % 2, pixels[s:s + 16])
    writer.commit()
    table = pq.read_table(tmp_path / "ds" / "data")
    field = table.schema.field("image")
    assert field.type == pa.binary(28 * 14 * 3) and field.metadata == {b"shape": b"[28, 14, 3]"}
    assert np.array_equal(raw_pixels(table.column("image"), field), pixels)
    assert np.array_equal(raw_pixels(table.column("image").slice(7, 5), field), pixels[7:12])  # offsets
    from datasets import load_dataset
    ds = load_dataset("parquet", data_dir=str(tmp_path / "ds" / "data"), split="train")
    assert np.frombuffer(ds[9]["image"], np.uint8).reshape(28, 14, 3).tolist() == pixels[9].tolist()


def test_raw_pixels_reads_the_tensor_layout_of_synthgen_0_3():
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 5, 1), dtype=np.uint8)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1), pa.uint8()), 30)
    tensors = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.uint8(), [6, 5, 1]), flat)
    assert np.array_equal(raw_pixels(tensors, pa.field("image", tensors.type)), pixels)
    floats = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [6, 5, 1]),
                                            pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(120, np.float32)), 30))
    with pytest.raises(ValueError, match="must be uint8"):
        raw_pixels(floats, pa.field("image", floats.type))
    png_column = pa.array([{"bytes": b"x", "path": None}])
    assert raw_pixels(png_column, pa.field("image", png_column.type)) is None
    unlabelled = pa.array([b"ab"], pa.binary(2))  # fixed-size binary without synthgen's shape: not ours
    assert raw_pixels(unlabelled, pa.field("image", unlabelled.type)) is None
    wrong = pa.field("image", unlabelled.type, metadata={"shape": "[2, 2, 1]"})
    with pytest.raises(ValueError, match="2 bytes per row do not hold shape"):
        raw_pixels(unlabelled, wrong)


def test_is_written_file_knows_every_name_the_writers_give():
    for fmt in ("parquet", "png", "dicom", "nifti"):
        layout = Layout(fmt, ("a b", "c/d"))
        assert all(is_written_file(shard_file(layout, j)) for j in (0, 7, 123456))
        assert all(is_written_file(image_file(layout, i, label)) for i in (0, 10**9 + 3) for label in (0, 1, -1))
    assert not any(map(is_written_file, ["data/notes.csv", "images/000000001.png", "data/x/shard-00001.parquet",
                                         "README.md", "images/a/1.png", "images/a/000000001.nii",
                                         "images/a/000000001.dcm.gz"]))
