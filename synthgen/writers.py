"""Shard writers: Parquet shards with a Hugging Face image column, or a PNG ImageFolder tree.

Parquet shards store each image either as PNG bytes (``encoding="png"``, Hugging Face's Image struct) or as
raw uint8 pixels (``encoding="raw"``, Arrow's canonical ``fixed_shape_tensor`` [H, W, C], for training code
that wants tensors without a decode step; Hugging Face ``datasets`` cannot read that extension type yet).

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


def hf_features(class_names: tuple[str, ...], encoding: str = "png") -> dict[str, Any]:
    label = ({"names": list(class_names), "_type": "ClassLabel"} if class_names
             else {"dtype": "int64", "_type": "Value"})
    image = {"image": {"_type": "Image"}} if encoding == "png" else {}
    return {**image, "index": {"dtype": "int64", "_type": "Value"},
            "seed": {"dtype": "uint64", "_type": "Value"}, "label": label}


def image_type(layout: Layout) -> pa.DataType:
    if layout.encoding == "raw":
        return pa.fixed_shape_tensor(pa.uint8(), list(layout.image_shape))
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def parquet_schema(layout: Layout) -> pa.Schema:
    schema = pa.schema([("image", image_type(layout)), ("index", pa.int64()), ("seed", pa.uint64()),
                        ("label", pa.int64())])
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
            # built from storage: from_numpy_ndarray guesses a permutation when a dimension has size 1
            flat = pa.array(np.ascontiguousarray(images).reshape(-1), pa.uint8())
            storage_array = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(self.layout.image_shape)))
            image = pa.ExtensionArray.from_storage(image_type(self.layout), storage_array)
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


def write_png_metadata(loc: storage.Location, shard_files: list[str]) -> None:
    """Join the PNG shards' metadata parts into one ``metadata.parquet`` (the ImageFolder convention)."""
    path = loc.join("metadata.parquet")
    with storage.open_atomic(loc, path) as out:
        writer = pq.ParquetWriter(out, _png_meta_schema(), compression=PARQUET_COMPRESSION)
        for name in shard_files:
            with loc.fs.open_input_file(loc.join(name)) as f:
                writer.write_table(pq.read_table(f))
        writer.close()
