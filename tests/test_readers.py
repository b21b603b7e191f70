"""synthgen.readers on the real MedMNIST files, image folders, Parquet, and every kind of bad input."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.errors import SynthgenError
from synthgen.readers import are_placeholder_names, load_images, placeholder_names


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _real_subset(npz: str, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz) as d:
        return d["train_images"][:n], d["train_labels"][:n, 0].astype(np.int64)


def _make_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    for k, (img, lab) in enumerate(zip(images, labels)):
        folder = root / names[lab]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{k:03d}.png").write_bytes(_png(img))
    return root


def test_npz_real_breastmnist(breast_npz: str) -> None:
    data = load_images(breast_npz)
    assert data.images.shape == (546, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.shape == (546,)
    assert np.bincount(data.labels).tolist() == [147, 399]  # counts from data/README.md
    assert data.class_names == ["0", "1"]
    assert data.sha256 == "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1"
    assert load_images(breast_npz, split="test").images.shape == (156, 28, 28, 1)


def test_npz_real_retinamnist_rgb(retina_npz: str) -> None:
    data = load_images(retina_npz)
    assert data.images.shape == (1080, 28, 28, 3)
    assert data.class_names == ["0", "1", "2", "3", "4"]
    assert data.shape == (3, 28, 28)


def test_npz_class_names_key(tmp_path: Path, breast_npz: str) -> None:
    images, labels = _real_subset(breast_npz)
    path = tmp_path / "named.npz"
    np.savez(path, train_images=images, train_labels=labels, class_names=np.array(["malignant", "normal"]))
    data = load_images(str(path))
    assert data.class_names == ["malignant", "normal"]
    assert np.array_equal(data.images[..., 0], images) and np.array_equal(data.labels, labels)


def test_data_without_names_gets_the_placeholders_that_mixing_and_eval_match_by_position(breast_npz: str) -> None:
    unnamed = load_images(breast_npz).class_names
    assert unnamed == placeholder_names(2) == ["0", "1"]
    assert are_placeholder_names(unnamed) and not are_placeholder_names(["malignant", "normal"])
    assert not are_placeholder_names(["1", "0"])


def test_folder_of_class_subfolders(tmp_path: Path, breast_npz: str) -> None:
    images, labels = _real_subset(breast_npz)
    root = _make_folder(tmp_path / "folder", images, labels, ["malignant", "normal"])
    (root / "normal" / "notes.txt").write_text("not an image")  # ignored
    data = load_images(str(root))
    assert data.class_names == ["malignant", "normal"]
    assert data.images.shape == (12, 28, 28, 1)
    # files are read class by class, so compare as multisets per class
    for c in (0, 1):
        got = sorted(x.tobytes() for x in data.images[data.labels == c, :, :, 0])
        assert got == sorted(x.tobytes() for x in images[labels == c])
    first = data.sha256
    (root / "normal" / "img099.png").write_bytes(_png(images[0]))
    assert load_images(str(root)).sha256 != first  # the hash covers the folder's contents


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "g.png").write_bytes(_png(np.full((8, 8), 100, np.uint8)))
    (tmp_path / "b" / "c.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    data = load_images(str(tmp_path))
    assert data.images.shape == (2, 8, 8, 3)
    assert (data.images[data.labels == 0] == 100).all()


def test_parquet_hugging_face_struct_and_names(tmp_path: Path, breast_npz: str) -> None:
    images, labels = _real_subset(breast_npz)
    table = pa.table({"image": [{"bytes": _png(x), "path": None} for x in images], "label": labels})
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": ["malignant", "normal"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    data = load_images(str(path))
    assert data.class_names == ["malignant", "normal"]
    assert np.array_equal(data.images[..., 0], images) and np.array_equal(data.labels, labels)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_directory_of_binary_png_shards(tmp_path: Path, breast_npz: str) -> None:
    images, labels = _real_subset(breast_npz)
    meta = {"features": {"label": {"names": ["m", "n"], "_type": "ClassLabel"}}}  # the older layout
    for shard, part in enumerate((slice(0, 5), slice(5, 12))):
        table = pa.table({"image": [_png(x) for x in images[part]], "label": labels[part]})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                       tmp_path / f"shard-{shard:05d}.parquet")
    (tmp_path / ".tmp-abc-shard-00002.parquet").write_bytes(b"half-written")  # in-flight: skipped
    data = load_images(str(tmp_path))
    assert data.class_names == ["m", "n"]
    assert np.array_equal(data.images[..., 0], images) and np.array_equal(data.labels, labels)


def test_parquet_raw_tensor_column_unlabeled(tmp_path: Path, breast_npz: str) -> None:
    """synthgen's --encoding raw (uint8 tensors) from an unconditional model (label -1 everywhere)."""
    images, _ = _real_subset(breast_npz)
    tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(images[..., None]))
    pq.write_table(pa.table({"image": tensors, "label": pa.array([-1] * 12, pa.int64())}),
                   tmp_path / "shard-00000.parquet")
    data = load_images(str(tmp_path))
    assert np.array_equal(data.images[..., 0], images)
    assert data.class_names == ["unlabeled"] and (data.labels == 0).all()


def test_synthgen_png_layout_reads_images_folder(tmp_path: Path, breast_npz: str) -> None:
    """--format png: metadata Parquet without an image column, images under images/<class>/."""
    images, labels = _real_subset(breast_npz)
    _make_folder(tmp_path / "images", images, labels, ["malignant", "normal"])
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.table({"file_name": ["x"], "label": [0]}), tmp_path / "meta" / "shard-00000.parquet")
    data = load_images(str(tmp_path))
    assert data.class_names == ["malignant", "normal"] and len(data.images) == 12
    assert data.source.endswith("images")


def test_synthgen_png_layout_keeps_the_model_class_order(tmp_path: Path, breast_npz: str) -> None:
    """Folder names sort alphabetically; a synthgen dataset's labels follow its model's classes instead."""
    images, labels = _real_subset(breast_npz)
    names = ["zz normal", "aa malignant"]  # model order opposite to the (sanitised) folder order
    for k, (img, lab) in enumerate(zip(images, labels)):
        folder = tmp_path / "images" / names[lab].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:09d}.png").write_bytes(_png(img))
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"class_names": names + ["unused"]}}))
    data = load_images(str(tmp_path))
    assert data.class_names == names + ["unused"]
    assert sorted(data.labels.tolist()) == sorted(labels.tolist())


def test_parquet_real_hf_datasets_export(tmp_path: Path, breast_npz: str) -> None:
    datasets = pytest.importorskip("datasets")
    images, labels = _real_subset(breast_npz, 6)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["malignant", "normal"])})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in images], "label": labels.tolist()},
                                    features=features)
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    data = load_images(str(tmp_path / "hf.parquet"))
    assert data.class_names == ["malignant", "normal"] and len(data.images) == 6


# ---------------------------------------------------------------- bad input: one SynthgenError naming the file

def _raises(path: Path | str, *needles: str) -> None:
    with pytest.raises(SynthgenError) as info:
        load_images(str(path))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_path(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.npz", "nope.npz", "no such file")


def test_corrupt_npz(tmp_path: Path, breast_npz: str) -> None:
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(Path(breast_npz).read_bytes()[:5000])
    _raises(truncated, "cut.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not numpy data at all")
    _raises(garbage, "garbage.npz", "not a .npz archive")  # never np.load's advice to unpickle it
    bare = tmp_path / "bare.npz"  # a .npy under a .npz name: np.load hands back one array, not an archive
    np.save(tmp_path / "bare.npy", np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "bare.npy").rename(bare)
    _raises(bare, "bare.npz", "not a .npz archive")


def test_npz_without_expected_keys_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, np.uint8))
    _raises(path, "keys.npz", "train_images", "it has: x, y")


def test_npz_labels_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "mismatch.npz"
    np.savez(path, train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    _raises(path, "mismatch.npz", "3 images")


def test_npz_zero_images(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, train_images=np.zeros((0, 4, 4), np.uint8), train_labels=np.zeros((0, 1), np.uint8))
    _raises(path, "empty.npz", "zero images")


def test_empty_folder(tmp_path: Path) -> None:
    _raises(tmp_path, str(tmp_path), "empty folder")


def test_class_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    _raises(tmp_path, "/b", "no PNG/JPEG/TIFF images")


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "small.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    (tmp_path / "a" / "large.png").write_bytes(_png(np.zeros((6, 6), np.uint8)))
    _raises(tmp_path, "small.png", "one size")


def test_folder_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _raises(tmp_path, "broken.png", "not a readable PNG/JPEG")


def test_folder_image_whose_header_claims_a_huge_size(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))  # 400 Mpx, no pixel data
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    _raises(tmp_path, "bomb.png", "not a readable PNG/JPEG")


def test_corrupt_parquet_and_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\x00" * 40)
    _raises(bad, "bad.parquet", "Parquet")
    nolabel = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"image": [_png(np.zeros((4, 4), np.uint8))]}), nolabel)
    _raises(nolabel, "nolabel.parquet", "'label'")


def test_parquet_image_column_of_other_type(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"image": [1, 2], "label": [0, 1]}), path)
    _raises(path, "ints.parquet", "not encoded image bytes")


def test_parquet_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}), path)
    _raises(path, "zero.parquet", "zero images")


# ---------------------------------------------------------------- bit depth: 16-bit kept, nothing clipped

RAMP16 = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0, 1040, ..., 65520: above 8 bits


def _encoded(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.frombytes(mode, arr.shape[::-1], arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes()) \
        if mode else Image.fromarray(arr)
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_a_16bit_png_ramp_is_read_as_16_bits_not_clipped(tmp_path: Path) -> None:
    """The issue's case: synthgen <= 0.6 read an I;16 ramp through convert("L") as 0, 255, 255, ..."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ramp.png").write_bytes(_encoded(RAMP16, "PNG"))
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint16 and data.bit_depth == 16
    np.testing.assert_array_equal(data.images[0, :, :, 0], RAMP16)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_tiff_folders_keep_every_value(tmp_path: Path, mode: str) -> None:
    for k, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"x{k}.tif").write_bytes(_encoded(RAMP16 + k, "TIFF", mode))
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint16 and data.images.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(data.images[1, :, :, 0], RAMP16 + 1)


def test_uint16_npz_is_kept_and_8bit_data_stays_8bit(tmp_path: Path, breast_npz: str) -> None:
    path = tmp_path / "ct.npz"
    np.savez(path, train_images=np.stack([RAMP16, RAMP16[::-1]]), train_labels=np.array([0, 1]))
    data = load_images(str(path))
    assert data.images.dtype == np.uint16 and data.images.max() == 65520
    dark = tmp_path / "dark.npz"  # a uint16 array whose values happen to fit 8 bits is still 16-bit data
    np.savez(dark, train_images=np.full((2, 8, 8), 7, np.uint16), train_labels=np.array([0, 1]))
    assert load_images(str(dark)).images.dtype == np.uint16
    assert load_images(breast_npz).images.dtype == np.uint8


def test_8bit_rgb_pngs_stay_8bit(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c.png").write_bytes(_png(np.full((8, 8, 3), 200, np.uint8)))
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint8 and data.images.shape == (1, 8, 8, 3) and data.bit_depth == 8


def test_mixed_bit_depths_in_one_folder_are_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1-deep.png").write_bytes(_encoded(RAMP16, "PNG"))
    (tmp_path / "a" / "2-shallow.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    _raises(tmp_path, "2-shallow.png", "8-bit", "16-bit", "one bit depth")


def test_float_and_wide_data_are_refused_not_converted(tmp_path: Path) -> None:
    floats = tmp_path / "f.npz"
    np.savez(floats, train_images=np.zeros((2, 8, 8), np.float32), train_labels=np.array([0, 1]))
    _raises(floats, "f.npz", "float32", "window")
    wide = tmp_path / "w.npz"
    np.savez(wide, train_images=np.full((2, 8, 8), 70000, np.int32), train_labels=np.array([0, 1]))
    _raises(wide, "w.npz", "0-65535")
    color16 = tmp_path / "c16.npz"
    np.savez(color16, train_images=np.zeros((2, 8, 8, 3), np.uint16), train_labels=np.array([0, 1]))
    _raises(color16, "c16.npz", "16-bit colour")
    (tmp_path / "tif" / "a").mkdir(parents=True)
    (tmp_path / "tif" / "a" / "float.tif").write_bytes(_encoded(RAMP16.astype(np.float32), "TIFF"))
    _raises(tmp_path / "tif", "float.tif", "floating-point")


def test_a_16bit_colour_png_is_refused_not_read_as_8bit(tmp_path: Path) -> None:
    import imagecodecs

    (tmp_path / "a").mkdir()
    rgb16 = np.stack([RAMP16] * 3, axis=-1)
    (tmp_path / "a" / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb16))
    _raises(tmp_path, "rgb16.png", "16-bit colour PNG")
