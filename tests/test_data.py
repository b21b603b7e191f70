"""synthgen.data: random access, DataLoader workers and ranks each row once, the PNG layout, and mixing.

The datasets are written by synthgen's own ShardWriter from real MedMNIST images, so row i holds a known
image: training image i of the .npz.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from synthgen import storage
from synthgen.data import IterableSyntheticDataset, RealImageDataset, SyntheticImageDataset, mix
from synthgen.dataset import manifest as mf
from synthgen.dataset.format import Layout
from synthgen.dataset.writers import ShardWriter, write_png_metadata
from synthgen.errors import SynthgenError
from synthgen.generate.plan import plan_shards
from synthgen.imaging import encode_png
from synthgen.readers import ImageSet, load_images


def write_dataset(out: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], shard_size: int,
                  fmt: str = "parquet", complete: bool = True, encoding: str = "png",
                  png_settings: dict | None = None) -> Path:
    """A synthgen dataset whose row i is ``images[i]``, written by synthgen's writers with a manifest (PNGs
    compressed one by one unless ``png_settings`` says otherwise, e.g. PARQUET_PNG_SETTINGS as in a run)."""
    loc = storage.locate(out)
    count = len(images)
    job = {"count": count, "seed": 0, "shard_size": shard_size, "format": fmt, "encoding": encoding,
           "precision": "fp32", "labels": {"kind": "test"}}
    model = {"source": "tests", "fingerprint": "f" * 64, "arch": "none", "image_shape": [images.shape[3],
             *images.shape[1:3]], "latent_dim": 1, "class_names": class_names, "training": {}}
    manifest = mf.Manifest(job, model)
    layout = Layout(fmt, tuple(class_names), encoding=encoding, image_shape=images.shape[1:],
                    file_metadata={"job": job, "model": model})
    for spec in plan_shards(count, shard_size):
        if not complete and spec.shard_id > 0:
            break
        writer = ShardWriter(loc, layout, spec)
        idx = spec.indices()
        pixels = images[idx] if encoding == "raw" else [encode_png(images[i], **({"settings": png_settings}
                                                                                if png_settings else {})) for i in idx]
        writer.add(idx, idx.astype(np.uint64) + 7, labels[idx], pixels)
        manifest.shards[spec.shard_id] = writer.commit()
    if fmt == "png" and complete:
        write_png_metadata(loc, [manifest.shards[j].file for j in sorted(manifest.shards)])
    manifest.status = "complete" if complete else "in_progress"
    mf.save(loc, manifest)
    return out


def digest(x: torch.Tensor) -> str:
    """Identify a row by its pixels (the training images used here are all distinct)."""
    return hashlib.sha256((x * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def breast_ds(tmp_path_factory, breast) -> Path:
    """546 rows in 11 shards of 50: eleven row groups to split."""
    return write_dataset(tmp_path_factory.mktemp("breast") / "ds", breast.images, breast.labels,
                         ["malignant", "normal"], 50)


@pytest.fixture(scope="module")
def breast_png(tmp_path_factory, breast) -> Path:
    return write_dataset(tmp_path_factory.mktemp("breast-png") / "ds", breast.images, breast.labels,
                         ["malignant", "normal"], 200, fmt="png")


def test_raw_encoding_reads_the_same_items_as_png(tmp_path, breast, breast_ds):
    raw = SyntheticImageDataset(write_dataset(tmp_path / "raw", breast.images, breast.labels,
                                              ["malignant", "normal"], 50, encoding="raw"))
    png = SyntheticImageDataset(breast_ds)
    assert len(raw) == len(png) == 546
    for i in (0, 49, 50, 333, 545):
        (x_raw, y_raw), (x_png, y_png) = raw[i], png[i]
        assert y_raw == y_png and torch.equal(x_raw, x_png)
    streamed = sorted(digest(x) for x, _ in DataLoader(IterableSyntheticDataset(raw.info.uri), batch_size=None,
                                                          num_workers=2))
    assert streamed == sorted(digest(png[i][0]) for i in range(546))


def test_random_access_crosses_row_groups_and_files(tmp_path, retina_npz):
    retina = load_images(retina_npz)  # RGB; 1070-row shards: row groups of 1024, 46 (shard 0) and 10 (shard 1)
    ds = SyntheticImageDataset(write_dataset(tmp_path / "ds", retina.images, retina.labels,
                                             [str(c) for c in range(5)], 1070))
    assert [p[1:] for p in ds.info.parts] == [(0, 1024), (1, 46), (0, 10)] and len(ds) == 1080
    for i in (1079, 0, 1023, 1024, 1069, 1070, 517, -1):
        x, label = ds[i]
        j = i % len(ds)
        assert x.shape == (3, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(retina.images[j].transpose(2, 0, 1)).float() / 255)
        assert label == retina.labels[j] and ds.row(i)["index"] == j and ds.row(i)["seed"] == j + 7
    with pytest.raises(IndexError):
        ds[1080]
    images, labels, index = ds.arrays(np.array([1075, 3, 1030]))
    assert np.array_equal(images, retina.images[[1075, 3, 1030]]) and index.tolist() == [1075, 3, 1030]


def test_map_style_with_two_workers_reads_every_row_once(breast_ds, breast):
    ds = SyntheticImageDataset(f"file://{breast_ds}")  # URIs go through pyarrow.fs
    assert ds.class_names == ["malignant", "normal"] and len(ds.info.parts) == 11
    expected = sorted(digest(torch.from_numpy(im.transpose(2, 0, 1)) / 255) for im in breast.images)
    assert len(set(expected)) == len(breast.images)
    seen, labels = [], []
    for x, y in DataLoader(ds, batch_size=32, shuffle=True, num_workers=2):
        seen += [digest(im) for im in x]
        labels += y.tolist()
    assert sorted(seen) == expected
    assert sorted(labels) == sorted(breast.labels.tolist())


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_iterable_splits_row_groups_across_ranks_and_workers(breast_ds, breast, world_size):
    expected = sorted(digest(torch.from_numpy(im.transpose(2, 0, 1)) / 255) for im in breast.images)
    seen = []
    for rank in range(world_size):
        ds = IterableSyntheticDataset(breast_ds, rank=rank, world_size=world_size, shuffle=True, seed=3)
        mine = [digest(im) for x, _ in DataLoader(ds, batch_size=16, num_workers=2) for im in x]
        assert len(mine) == len(ds)  # len() is this rank's share
        seen += mine
    assert sorted(seen) == expected  # all ranks together: every row exactly once


def test_iterable_order_is_seeded(breast_ds):
    one = IterableSyntheticDataset(breast_ds, shuffle=True, seed=1)
    first = [digest(x) for x, _ in one][:20]
    assert first == [digest(x) for x, _ in IterableSyntheticDataset(breast_ds, shuffle=True, seed=1)][:20]
    one.set_epoch(1)
    assert [digest(x) for x, _ in one][:20] != first
    plain = [digest(x) for x, _ in IterableSyntheticDataset(breast_ds)]
    assert plain == [digest(SyntheticImageDataset(breast_ds)[i][0]) for i in range(len(plain))]


def test_png_layout_reads_like_parquet(breast_png, breast_ds):
    png, parquet = SyntheticImageDataset(breast_png), SyntheticImageDataset(breast_ds)
    assert png.info.layout == "png" and len(png) == len(parquet) == 546
    for i in (0, 199, 200, 545):
        assert torch.equal(png[i][0], parquet[i][0]) and png[i][1] == parquet[i][1]
    streamed = [digest(x) for x, _ in DataLoader(IterableSyntheticDataset(breast_png, rank=1, world_size=2),
                                                 batch_size=None, num_workers=2)]
    assert len(streamed) == 200  # row groups of 200, 200, 146: rank 1 gets the second
    assert sorted(streamed) == sorted(digest(parquet[i][0]) for i in range(200, 400))


def test_transform_gets_a_pil_image(breast_ds):
    ds = SyntheticImageDataset(breast_ds, transform=lambda img: (img.mode, img.size))
    assert ds[3] == (("L", (28, 28)), ds.row(3)["label"])


def test_mix_holds_the_fraction_in_every_prefix(breast_ds, breast_npz):
    real = RealImageDataset(breast_npz, split="test")  # 156 images
    synthetic = SyntheticImageDataset(breast_ds)
    mixed = mix(real, synthetic, synthetic_fraction=0.25, seed=0)
    sources = [mixed.source(i) for i in range(len(mixed))]
    is_syn = np.array([s == "synthetic" for s, _ in sources])
    assert len(mixed) == 208 and is_syn.sum() == 52  # every real image once, 52/208 = 0.25
    prefix = np.cumsum(is_syn) / np.arange(1, len(mixed) + 1)
    assert np.all(np.abs(prefix - 0.25) <= 1 / np.arange(1, len(mixed) + 1) + 1e-12)
    assert sorted(j for s, j in sources if s == "real") == list(range(156))
    for i in (0, 3, 207):
        which, j = sources[i]
        assert torch.equal(mixed[i][0], (synthetic if which == "synthetic" else real)[j][0])
    longer = mix(real, synthetic, 0.6, length=1000, seed=1)
    assert sum(longer.source(i)[0] == "synthetic" for i in range(1000)) == 600
    assert len(DataLoader(longer, batch_size=100, num_workers=2)) == 10


def test_mix_and_rank_bad_input(breast_ds, retina_npz):
    synthetic = SyntheticImageDataset(breast_ds)
    with pytest.raises(SynthgenError, match="synthetic_fraction must be in"):
        mix(synthetic, synthetic, 1.5)
    with pytest.raises(SynthgenError, match="labels would not mean the same thing"):
        mix(RealImageDataset(retina_npz), synthetic, 0.5)
    with pytest.raises(SynthgenError, match="rank must be in"):
        IterableSyntheticDataset(breast_ds, rank=2, world_size=2)


def test_refuses_incomplete_empty_and_missing(tmp_path, breast):
    partial = write_dataset(tmp_path / "partial", breast.images[:100], breast.labels[:100], ["a", "b"], 50,
                            complete=False)
    with pytest.raises(SynthgenError, match="incomplete dataset"):
        SyntheticImageDataset(partial)
    assert len(SyntheticImageDataset(partial, allow_incomplete=True)) == 50
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthgenError, match="not a synthgen dataset"):
        SyntheticImageDataset(tmp_path / "empty")
    with pytest.raises(SynthgenError, match="no such dataset directory"):
        SyntheticImageDataset(tmp_path / "nope")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "data").write_text("a file, not the shard folder")
    with pytest.raises(SynthgenError, match="not a synthgen dataset"):
        SyntheticImageDataset(tmp_path / "odd")


def test_mix_refuses_classes_named_differently(breast_ds, breast):
    synthetic = SyntheticImageDataset(breast_ds)  # malignant, normal

    def real(names: list[str]) -> RealImageDataset:
        return RealImageDataset(ImageSet(breast.images, breast.labels, names, breast.sha256, "test"))

    for names in (["normal", "malignant"], ["benign", "malignant"]):  # label 0 would mean two things
        with pytest.raises(SynthgenError, match="labels would not mean the same thing"):
            mix(real(names), synthetic, 0.5)
    assert len(mix(real(["malignant", "normal"]), synthetic, 0.5)) == 2 * len(breast.images)
    assert len(mix(real(["0", "1"]), synthetic, 0.5)) == 2 * len(breast.images)  # no names: by position


def test_other_parquet_is_refused_when_opened_not_when_read(tmp_path, breast):
    (tmp_path / "hf" / "data").mkdir(parents=True)  # a Hugging Face export: image and label, no index or seed
    table = pa.table({"image": [{"bytes": encode_png(breast.images[0]), "path": None}], "label": [0]})
    pq.write_table(table, tmp_path / "hf" / "data" / "train-0.parquet")
    with pytest.raises(SynthgenError, match="train-0.parquet: no index, seed column"):
        SyntheticImageDataset(tmp_path / "hf")


def test_row_groups_parse_from_one_fetched_byte_span(tmp_path):
    """What the loader does on object stores: one ranged read of consecutive row groups, parsed at the file's
    own offsets; a read outside the span is an error, not wrong bytes."""
    from synthgen.data import _byte_span

    table = pa.table({"image": [bytes([k]) * 50 for k in range(40)], "label": list(range(40))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    local = pa.OSFile(str(tmp_path / "t.parquet"))
    footer = pq.ParquetFile(local).metadata
    start, stop = _byte_span(footer, [1, 2])
    span = storage.ByteSpan.fetch(local, start, stop)
    got = pq.ParquetFile(span, metadata=footer, pre_buffer=False).read_row_groups([1, 2])
    assert got.equals(table.slice(10, 20))
    assert stop - start < local.size() / 2  # only those two groups were fetched
    with pytest.raises(OSError, match="outside the fetched span"):
        pq.ParquetFile(span, metadata=footer, pre_buffer=False).read_row_groups([3])
