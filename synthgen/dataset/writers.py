"""Shard writers: Parquet shards with a Hugging Face image column, or a tree of one file per image (PNG
ImageFolder, DICOM or NIfTI; :mod:`synthgen.dataset.files` encodes them).

Both take rows in index order (any batching) and produce bytes that depend only on the rows: Parquet row
groups are cut every ``ROW_GROUP_ROWS`` rows counted from the shard's start, never at batch boundaries.
A shard appears under its final name only when complete (:func:`synthgen.storage.open_atomic`).
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen import storage
from synthgen.dataset.format import (
    PARQUET_OPTIONS,
    RAW_DTYPES,
    UNLABELED_NAME,
    Layout,
    digest_column,
    hf_features,
    image_file,
    image_type,
    parquet_schema,
    png_meta_schema,
    shard_file,
)
from synthgen.dataset.manifest import ShardRecord
from synthgen.generate.plan import ShardSpec

ROW_GROUP_ROWS = 1024


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
        schema = self.schema if self.schema is not None else png_meta_schema(layout.format)
        self._parquet = pq.ParquetWriter(self._hashing, schema, **PARQUET_OPTIONS)

    def add(self, indices: np.ndarray, seeds: np.ndarray, labels: np.ndarray,
            images: list[bytes] | np.ndarray) -> None:
        """Append rows; ``indices`` must continue exactly where the previous call stopped.

        Args:
            indices, seeds, labels: (B,) columns of the rows.
            images: B encoded files (PNG, DICOM or NIfTI bytes), or (B, H, W, C) uint8 (uint16) pixels for
                ``encoding="raw"``.
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
            dtype = RAW_DTYPES[self.layout.bit_depth]  # uint16 little-endian, whatever the host
            pixels = np.ascontiguousarray(images, dtype=dtype)  # (B, H, W, C); the buffer keeps it alive
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
             pa.array(labels, pa.int64()), pa.array(digests, pa.string())], schema=png_meta_schema(self.layout.format))

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
        names = self.layout.class_names or (UNLABELED_NAME,)
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


def write_png_metadata(loc: storage.Location, shard_files: list[str], class_names: tuple[str, ...] = (),
                       fmt: str = "png") -> None:
    """Join the file-per-image shards' metadata parts into one ``metadata.parquet`` (the ImageFolder convention:
    for DICOM and NIfTI it is the index of the files), so that
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
                digest_column(fmt): {"dtype": "string", "_type": "Value"}}
    schema = png_meta_schema(fmt)
    schema = schema.set(schema.get_field_index("seed"), pa.field("seed", pa.string()))
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    with storage.open_atomic(loc, path) as out:
        writer = pq.ParquetWriter(out, schema, **PARQUET_OPTIONS)
        for name in shard_files:
            with loc.fs.open_input_file(loc.join(name)) as f:
                writer.write_table(pq.read_table(f).cast(schema))  # uint64 seeds -> decimal strings
        writer.close()
