"""Shard writers: Parquet shards with a Hugging Face image column, or a PNG ImageFolder tree.

Parquet shards store each image either as PNG bytes (``encoding="png"``, Hugging Face's Image struct) or as
raw uint8 pixels (``encoding="raw"``, for training code that wants no decode step): one ``fixed_size_binary``
value of H*W*C bytes per row, row-major (H, W, C), the shape in the column's field metadata
(:func:`raw_pixels` reads it back). Not Arrow's ``fixed_shape_tensor``, which synthgen 0.2-0.3 wrote and
still reads: its list storage makes Parquet write and read levels for every pixel (bundled model, 10k
images: 8.4 vs 0.87 us per image to write, 1.8 vs 0.4 to read, the same 748 B per image), and Hugging Face
``datasets`` cannot load it, while it loads fixed-size binary as bytes.

Both take rows in index order (any batching) and produce bytes that depend only on the rows: Parquet row
groups are cut every ``ROW_GROUP_ROWS`` rows counted from the shard's start, never at batch boundaries.
A shard appears under its final name only when complete (:func:`synthgen.storage.open_atomic`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen import storage
from synthgen.manifest import ShardRecord
from synthgen.plan import ShardSpec

ROW_GROUP_ROWS = 1024
# zstd (level 1) rather than pyarrow's default snappy: on bundled-model shards 10% smaller with stored PNGs
# (552 vs 613 B per image, imaging.PARQUET_PNG_SETTINGS) and raw pixels (748 vs 792 B), at the same speed.
PARQUET_COMPRESSION = "zstd"
FORMATS = ("parquet", "png")
ENCODINGS = ("png", "raw")
RAW_LAYOUT = "fixed_size_binary"  # recorded in the manifest: "fixed_shape_tensor" before synthgen 0.4.0
UNLABELED = "unlabeled"


@dataclass(frozen=True)
class Layout:
    """What every shard of one dataset shares."""

    format: str
    class_names: tuple[str, ...]
    encoding: str = "png"
    image_shape: tuple[int, int, int] = (28, 28, 1)  # (H, W, C) of every image
    file_metadata: dict[str, Any] = field(default_factory=dict)  # job identity + model, in each Parquet file

    def class_dir(self, label: int) -> str:
        name = self.class_names[label] if 0 <= label < len(self.class_names) else UNLABELED
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def shard_file(layout: Layout, shard_id: int) -> str:
    """The committed file that stands for shard ``shard_id``, relative to the dataset root."""
    if layout.format == "parquet":  # under data/, so DIR itself holds only the manifest and the card
        return f"data/shard-{shard_id:05d}.parquet"
    return f"meta/shard-{shard_id:05d}.parquet"


def image_file(layout: Layout, index: int, label: int) -> str:
    return f"images/{layout.class_dir(label)}/{index:09d}.png"


# Every name shard_file and image_file can produce, relative to the dataset root (ids and indices may outgrow
# their zero padding).
_WRITTEN_FILE = re.compile(r"(data|meta)/shard-\d{5,}\.parquet|images/[^/]+/\d{9,}\.png")


def is_written_file(rel_path: str) -> bool:
    """Whether a path relative to the dataset root is one that :func:`shard_file` or :func:`image_file` names."""
    return _WRITTEN_FILE.fullmatch(rel_path) is not None


def hf_features(class_names: tuple[str, ...], encoding: str = "png") -> dict[str, Any]:
    label = ({"names": list(class_names), "_type": "ClassLabel"} if class_names
             else {"dtype": "int64", "_type": "Value"})
    image = {"image": {"_type": "Image"}} if encoding == "png" else {}
    return {**image, "index": {"dtype": "int64", "_type": "Value"},
            "seed": {"dtype": "uint64", "_type": "Value"}, "label": label}


def image_type(layout: Layout) -> pa.DataType:
    if layout.encoding == "raw":
        return pa.binary(int(np.prod(layout.image_shape)))
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def raw_pixels(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> np.ndarray | None:
    """(N, H, W, C) uint8 pixels of a raw image column, or None when ``column`` holds none.

    Reads synthgen's fixed-size binary (shape from the field metadata) and the ``fixed_shape_tensor`` of
    datasets written by synthgen 0.2-0.3.
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
    if int(np.prod(shape)) != column.type.byte_width:
        raise ValueError(f"raw image column: {column.type.byte_width} bytes per row do not hold shape {shape}")
    if column.null_count:
        raise ValueError(f"raw image column: {column.null_count} row(s) without pixels")
    if not len(column):
        return np.zeros((0, *shape), np.uint8)
    flat = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * column.type.byte_width,
                         offset=column.offset * column.type.byte_width)
    return flat.reshape(len(column), *shape)


def parquet_schema(layout: Layout) -> pa.Schema:
    shape = {"shape": json.dumps(list(layout.image_shape))} if layout.encoding == "raw" else None
    schema = pa.schema([pa.field("image", image_type(layout), metadata=shape), ("index", pa.int64()),
                        ("seed", pa.uint64()), ("label", pa.int64())])
    hf = {"info": {"features": hf_features(layout.class_names, layout.encoding)}}
    return schema.with_metadata({"huggingface": json.dumps(hf), "synthgen": json.dumps(layout.file_metadata,
                                                                                      sort_keys=True)})


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink):
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self.sink.write(view)
        self.sha.update(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Writes one shard: call :meth:`add` with rows in index order, then :meth:`commit` once."""

    def __init__(self, loc: storage.Location, layout: Layout, spec: ShardSpec):
        self.loc, self.layout, self.spec = loc, layout, spec
        self.schema = parquet_schema(layout) if layout.format == "parquet" else None
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.counts = np.zeros(max(1, len(layout.class_names)), dtype=np.int64)
        self.next_index = spec.start
        self.image_bytes = 0
        self.path = loc.join(shard_file(layout, spec.shard_id))
        self._atomic = storage.open_atomic(loc, self.path)
        self._hashing = _Hashing(self._atomic.__enter__())
        schema = self.schema if self.schema is not None else _png_meta_schema()
        self._parquet = pq.ParquetWriter(self._hashing, schema, compression=PARQUET_COMPRESSION)

    def add(self, indices: np.ndarray, seeds: np.ndarray, labels: np.ndarray,
            images: list[bytes] | np.ndarray) -> None:
        """Append rows; ``indices`` must continue exactly where the previous call stopped.

        Args:
            indices, seeds, labels: (B,) columns of the rows.
            images: B PNG byte strings, or (B, H, W, C) uint8 pixels for ``encoding="raw"``.
        """
        assert indices[0] == self.next_index and indices[-1] == self.next_index + len(indices) - 1
        self.next_index += len(indices)
        self.counts += np.bincount(np.clip(labels, 0, None), minlength=len(self.counts))[: len(self.counts)]
        if self.schema is not None:
            batch = self._parquet_rows(indices, seeds, labels, images)
        else:
            batch = self._png_rows(indices, seeds, labels, images)
        self.pending.append(batch)
        self.pending_rows += len(indices)
        while self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _parquet_rows(self, indices, seeds, labels, images) -> pa.RecordBatch:
        if self.layout.encoding == "raw":
            pixels = np.ascontiguousarray(images, dtype=np.uint8)  # (B, H, W, C); the buffer keeps it alive
            assert pixels.shape[1:] == tuple(self.layout.image_shape), (pixels.shape, self.layout.image_shape)
            image = pa.FixedSizeBinaryArray.from_buffers(image_type(self.layout), len(pixels),
                                                         [None, pa.py_buffer(pixels)])
        else:
            paths = pa.array([f"{i:09d}.png" for i in indices.tolist()], pa.string())
            image = pa.StructArray.from_arrays([pa.array(images, pa.binary()), paths], names=["bytes", "path"])
        return pa.RecordBatch.from_arrays(
            [image, pa.array(indices, pa.int64()), pa.array(seeds, pa.uint64()), pa.array(labels, pa.int64())],
            schema=self.schema)

    def _png_rows(self, indices, seeds, labels, pngs) -> pa.RecordBatch:
        names, digests = [], []
        for index, label, png in zip(indices.tolist(), labels.tolist(), pngs):
            name = image_file(self.layout, index, label)
            storage.write_bytes_atomic(self.loc, self.loc.join(name), png)
            names.append(name)
            digests.append(hashlib.sha256(png).hexdigest())
            self.image_bytes += len(png)
        return pa.RecordBatch.from_arrays(
            [pa.array(names, pa.string()), pa.array(indices, pa.int64()), pa.array(seeds, pa.uint64()),
             pa.array(labels, pa.int64()), pa.array(digests, pa.string())], schema=_png_meta_schema())

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending).combine_chunks()
        self._parquet.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self.pending = rest.to_batches() if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def commit(self) -> ShardRecord:
        """Finish the file, move it into place and describe it for the manifest."""
        assert self.next_index == self.spec.stop, "shard committed before all its rows were added"
        if self.pending_rows:
            self._flush(self.pending_rows)
        self._parquet.close()
        self._atomic.__exit__(None, None, None)
        file_bytes = self._hashing.size
        names = self.layout.class_names or (UNLABELED,)
        counts = {name: int(n) for name, n in zip(names, self.counts) if n}
        extra = 0 if self.layout.format == "parquet" else self.image_bytes
        return ShardRecord(self.spec.shard_id, shard_file(self.layout, self.spec.shard_id), self.spec.start,
                           self.spec.stop, self.spec.count, file_bytes + extra, self._hashing.sha.hexdigest(),
                           counts)

    def abort(self) -> None:
        """Drop a shard that failed midway; nothing appears under its final name."""
        try:
            self._parquet.close()
        finally:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _png_meta_schema() -> pa.Schema:
    return pa.schema([("file_name", pa.string()), ("index", pa.int64()), ("seed", pa.uint64()),
                      ("label", pa.int64()), ("png_sha256", pa.string())])


def write_png_metadata(loc: storage.Location, shard_files: list[str], class_names: tuple[str, ...] = ()) -> None:
    """Join the PNG shards' metadata parts into one ``metadata.parquet`` (the ImageFolder convention), so that
    ``load_dataset("imagefolder", data_dir=DIR)`` gives each image its index, seed, label (a ClassLabel named
    by the schema's ``huggingface`` metadata) and PNG checksum.

    Its ``seed`` column holds each seed as a decimal string, where the shard parts hold uint64: the
    imagefolder builder turns metadata rows into Python ints and back through Arrow's int64, which fails on
    the half of all seeds at or above 2**63 (datasets 5.2). Synthgen's readers take either.
    """
    path = loc.join("metadata.parquet")
    label = hf_features(class_names)["label"]
    features = {"file_name": {"dtype": "string", "_type": "Value"}, "index": {"dtype": "int64", "_type": "Value"},
                "seed": {"dtype": "string", "_type": "Value"}, "label": label,
                "png_sha256": {"dtype": "string", "_type": "Value"}}
    schema = _png_meta_schema()
    schema = schema.set(schema.get_field_index("seed"), pa.field("seed", pa.string()))
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    with storage.open_atomic(loc, path) as out:
        writer = pq.ParquetWriter(out, schema, compression=PARQUET_COMPRESSION)
        for name in shard_files:
            with loc.fs.open_input_file(loc.join(name)) as f:
                writer.write_table(pq.read_table(f).cast(schema))  # uint64 seeds -> decimal strings
        writer.close()
