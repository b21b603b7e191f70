"""The on-disk format of a synthgen dataset: file names, the Parquet schema with its Hugging Face features,
and raw pixels.

Parquet shards store each image either as PNG bytes (``encoding="png"``, Hugging Face's Image struct) or as
raw pixels (``encoding="raw"``): one ``fixed_size_binary`` value of H*W*C pixels per row, row-major
(H, W, C), the shape in the column's field metadata; uint8, or for a 16-bit model little-endian uint16 with
``"dtype": "<u2"`` beside the shape (the older layout :func:`raw_pixels` also reads: docs/design.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

# zstd (level 1) rather than pyarrow's default snappy: on bundled-model shards 10% smaller with stored PNGs
# (552 vs 613 B per image, imaging.PARQUET_PNG_SETTINGS) and raw pixels (748 vs 792 B), at the same speed.
PARQUET_COMPRESSION = "zstd"
# Plain pages, no dictionaries: pyarrow's default dictionary-encodes a column chunk until its dictionary passes
# 1 MiB, which for a 1,024-row group of unique PNGs is the whole group, and a reader then copies every image out
# of the dictionary (2.3 -> 1.6 us per row to read, and 0.8% smaller; docs/benchmarks.md). Recorded in the manifest.
PARQUET_DICTIONARY = "none"
PARQUET_OPTIONS = {"compression": PARQUET_COMPRESSION, "use_dictionary": False}
FORMATS = ("parquet", "png", "dicom", "nifti")
# Formats that write one file per image under images/<class>/, indexed by meta/shard-*.parquet (file name, index,
# seed, label and each file's sha256) and, once complete, DIR/metadata.parquet.
FILE_FORMATS = ("png", "dicom", "nifti")
FILE_SUFFIX = {"png": ".png", "dicom": ".dcm", "nifti": ".nii.gz"}
ENCODINGS = ("png", "raw")
RAW_LAYOUT = "fixed_size_binary"  # recorded in the manifest: "fixed_shape_tensor" before synthgen 0.4.0
UNLABELED = -1  # the label column of every image of an unconditional model
UNLABELED_NAME = "unlabeled"  # the class name (and PNG folder) of those images


@dataclass(frozen=True)
class Layout:
    """What every shard of one dataset shares."""

    format: str
    class_names: tuple[str, ...]
    encoding: str = "png"
    image_shape: tuple[int, int, int] = (28, 28, 1)  # (H, W, C) of every image
    bit_depth: int = 8  # 16: uint16 pixels (16-bit PNGs, or 2 bytes a raw pixel)
    png_marking: str | None = None  # imaging.PNG_MARKING: every PNG carries the synthetic marking; None: none
    file_metadata: dict[str, Any] = field(default_factory=dict)  # job identity + model, in each Parquet file

    def class_dir(self, label: int) -> str:
        name = self.class_names[label] if 0 <= label < len(self.class_names) else UNLABELED_NAME
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def shard_file(layout: Layout, shard_id: int) -> str:
    """The committed file that stands for shard ``shard_id``, relative to the dataset root."""
    if layout.format == "parquet":  # under data/, so DIR itself holds only the manifest and the card
        return f"data/shard-{shard_id:05d}.parquet"
    return f"meta/shard-{shard_id:05d}.parquet"


def image_file(layout: Layout, index: int, label: int) -> str:
    return f"images/{layout.class_dir(label)}/{index:09d}{FILE_SUFFIX.get(layout.format, '.png')}"


FOLDERS = ("data", "meta", "images")  # where shard_file and image_file put files; the root holds only our own
# Every name shard_file and image_file can produce, relative to the dataset root (ids and indices may outgrow
# their zero padding).
_WRITTEN_FILE = re.compile(r"(data|meta)/shard-\d{5,}\.parquet|images/[^/]+/\d{9,}\.(png|dcm|nii\.gz)")


def is_written_file(rel_path: str) -> bool:
    """Whether a path relative to the dataset root is one that :func:`shard_file` or :func:`image_file` names."""
    return _WRITTEN_FILE.fullmatch(rel_path) is not None


def hf_features(class_names: tuple[str, ...], encoding: str = "png") -> dict[str, Any]:
    label = ({"names": list(class_names), "_type": "ClassLabel"} if class_names
             else {"dtype": "int64", "_type": "Value"})
    image = {"image": {"_type": "Image"}} if encoding == "png" else {}
    return {**image, "index": {"dtype": "int64", "_type": "Value"},
            "seed": {"dtype": "uint64", "_type": "Value"}, "label": label}


RAW_DTYPES = {8: "|u1", 16: "<u2"}  # numpy's names, byte order included


def image_type(layout: Layout) -> pa.DataType:
    if layout.encoding == "raw":
        return pa.binary(int(np.prod(layout.image_shape)) * np.dtype(RAW_DTYPES[layout.bit_depth]).itemsize)
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def raw_pixels(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> np.ndarray | None:
    """(N, H, W, C) uint8 (or uint16) pixels of a raw image column, or None when ``column`` holds none.

    Reads synthgen's fixed-size binary (shape, and for 16-bit pixels the dtype, from the field metadata) and
    the ``fixed_shape_tensor`` of datasets written by synthgen 0.2-0.3.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        if column.type.value_type != pa.uint8() or len(column.type.shape) != 3:
            raise ValueError(f"raw image tensors must be uint8 (H, W, C), got {column.type}")
        return column.to_numpy_ndarray() if len(column) else np.zeros((0, *column.type.shape), np.uint8)
    shape = json.loads((field.metadata or {}).get(b"shape", b"null"))
    if not pa.types.is_fixed_size_binary(column.type) or not isinstance(shape, list) or len(shape) != 3:
        return None
    dtype = (field.metadata or {}).get(b"dtype", b"|u1").decode()
    if dtype not in RAW_DTYPES.values():
        raise ValueError(f"raw image column: pixel dtype {dtype!r} is not one synthgen writes (uint8, <u2)")
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize != column.type.byte_width:
        raise ValueError(f"raw image column: {column.type.byte_width} bytes per row do not hold shape {shape} "
                         f"of {dtype}")
    if column.null_count:
        raise ValueError(f"raw image column: {column.null_count} row(s) without pixels")
    if not len(column):
        return np.zeros((0, *shape), dtype.newbyteorder("="))
    flat = np.frombuffer(column.buffers()[1], dtype, count=len(column) * int(np.prod(shape)),
                         offset=column.offset * column.type.byte_width)
    return flat.reshape(len(column), *shape).astype(dtype.newbyteorder("="), copy=False)


def parquet_schema(layout: Layout) -> pa.Schema:
    shape = {"shape": json.dumps(list(layout.image_shape))} if layout.encoding == "raw" else None
    if shape is not None and layout.bit_depth != 8:  # 8-bit columns keep the metadata of earlier versions
        shape["dtype"] = RAW_DTYPES[layout.bit_depth]
    schema = pa.schema([pa.field("image", image_type(layout), metadata=shape), ("index", pa.int64()),
                        ("seed", pa.uint64()), ("label", pa.int64())])
    hf = {"info": {"features": hf_features(layout.class_names, layout.encoding)}}
    return schema.with_metadata({"huggingface": json.dumps(hf), "synthgen": json.dumps(layout.file_metadata,
                                                                                      sort_keys=True)})


def digest_column(fmt: str) -> str:
    """The metadata column holding each image file's sha256 ("png_sha256" since 0.1, "sha256" for the others)."""
    return "png_sha256" if fmt == "png" else "sha256"


def png_meta_schema(fmt: str = "png") -> pa.Schema:
    """The schema of a file-per-image shard's metadata part (meta/shard-*.parquet)."""
    return pa.schema([("file_name", pa.string()), ("index", pa.int64()), ("seed", pa.uint64()),
                      ("label", pa.int64()), (digest_column(fmt), pa.string())])
