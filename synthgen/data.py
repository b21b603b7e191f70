"""PyTorch datasets over synthgen output (real images and real+synthetic mixing: :mod:`synthgen.mixing`).

A synthgen dataset is indexed from Parquet footers only: one ``(file, row group, rows)`` entry per row group,
so opening a million-image dataset reads no image. Items are read one row group at a time (the last one is
cached), which makes sequential and DataLoader access cheap without holding the dataset in memory. The PNG
layout is read through its metadata Parquet (``metadata.parquet`` or ``meta/shard-*.parquet``): the row group
gives the file names, each image is one small read.

Every dataset yields ``(image, label)`` as :mod:`synthgen.mixing` describes. Filesystems are opened lazily
and dropped on pickling, so each DataLoader worker opens its own. No Ray here (the engine is the only
package that imports it). ``RealImageDataset`` and ``mix`` are importable from here too.
"""

from __future__ import annotations

import bisect
import io
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from synthgen import storage
from synthgen.dataset import manifest as mf
from synthgen.dataset.files import decode_file
from synthgen.dataset.format import FILE_FORMATS, FILE_SUFFIX, raw_pixels
from synthgen.errors import SynthgenError
from synthgen.imaging import decode_png, to_pil
from synthgen.mixing import RealImageDataset, Transform, mix, to_tensor  # noqa: F401 (README: import from here)
from synthgen.recipes import Recipe, parse_recipe, recipe_datasets  # noqa: F401 (re-exported)


@dataclass
class DatasetInfo:
    """Where a synthgen dataset's rows are: its layout, index Parquet files and their row groups."""

    uri: str
    layout: str  # "parquet" (images inside), or "png", "dicom", "nifti" (file names inside, images beside)
    class_names: list[str]
    image_shape: tuple[int, ...] | None  # (C, H, W) from the manifest; None without one
    parts: list[tuple[str, int, int]] = field(default_factory=list)  # (file, row group, rows), in index order
    part_bytes: list[int] = field(default_factory=list)  # each row group's size in its file (bytes)
    footers: dict[str, pq.FileMetaData] = field(default_factory=dict)  # on object stores: each file's footer,
    # read once here and handed to DataLoader workers, which would otherwise each fetch it again
    manifest: mf.Manifest | None = None
    bit_depth: int | None = 8  # 16: uint16 pixels; None without a manifest (each image says)

    @property
    def pixel_dtype(self) -> np.dtype | None:
        """uint8 or uint16 when the manifest says; None when the images must say."""
        return None if self.bit_depth is None else np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)

    @property
    def rows(self) -> int:
        return sum(p[2] for p in self.parts)


def open_dataset(path_or_uri: str, allow_incomplete: bool = False) -> DatasetInfo:
    """Find a synthgen dataset's index files and row groups (Parquet footers only, no images).

    Args:
        path_or_uri: dataset directory or URI (``s3://...``), as written by ``synthgen run``.
        allow_incomplete: read the committed shards of an unfinished run instead of refusing it.

    Returns:
        The dataset's layout, class names, image shape and row-group index.
    """
    loc = storage.locate(path_or_uri)
    if not storage.is_dir(loc, loc.root):
        raise SynthgenError(f"{path_or_uri}: no such dataset directory")
    manifest = mf.load(loc)
    if manifest is None:
        info = _info_without_manifest(loc)
    else:
        info = _info_from_manifest(loc, manifest, allow_incomplete)
    if info.rows == 0:
        raise SynthgenError(f"{path_or_uri}: the dataset holds no images")
    return info


def _info_from_manifest(loc: storage.Location, manifest: mf.Manifest, allow_incomplete: bool) -> DatasetInfo:
    if not manifest.complete and not allow_incomplete:
        raise SynthgenError(f"{loc.uri}: incomplete dataset ({len(manifest.shards)} of {manifest.num_shards} "
                            f"shards, status {manifest.status!r}); re-run its synthgen run command to finish it")
    layout = manifest.job["format"]
    files = [manifest.shards[j].file for j in sorted(manifest.shards)]
    if layout in FILE_FORMATS and manifest.complete and storage.exists(loc, loc.join("metadata.parquet")):
        files = ["metadata.parquet"]
    shape = tuple(manifest.model.get("image_shape") or ()) or None
    parts, sizes, footers = _row_groups(loc, files, layout)
    return DatasetInfo(loc.uri, layout, list(manifest.model.get("class_names") or []), shape, parts, sizes,
                       footers, manifest, mf.bit_depth(manifest))


def _info_without_manifest(loc: storage.Location) -> DatasetInfo:
    """A copy without its manifest (e.g. only ``data/`` downloaded): read what is there, in name order."""
    folder = loc.join("data")
    data = [f for f in storage.list_files(loc, folder) if _is_shard(f)] if storage.is_dir(loc, folder) else []
    meta = loc.join("metadata.parquet")
    if data:
        files, layout = [posixpath.relpath(f, loc.root) for f in data], "parquet"
    elif storage.exists(loc, meta):
        files, layout = ["metadata.parquet"], _file_layout(loc, meta)
    else:
        raise SynthgenError(f"{loc.uri}: no {mf.MANIFEST_FILE}, data/*.parquet or metadata.parquet; "
                            "not a synthgen dataset")
    parts, sizes, footers = _row_groups(loc, files, layout)
    return DatasetInfo(loc.uri, layout, _hf_class_names(loc, files[0]), None, parts, sizes, footers,
                       bit_depth=None)


def _file_layout(loc: storage.Location, meta: str) -> str:
    """Which file format a metadata.parquet indexes, from its first file name (png, dicom or nifti)."""
    with loc.fs.open_input_file(meta) as f:
        names = pq.ParquetFile(f).read_row_group(0, columns=["file_name"]).column(0).to_pylist()[:1]
    return next((fmt for fmt, suffix in FILE_SUFFIX.items() if names and names[0].endswith(suffix)), "png")


def _is_shard(path: str) -> bool:
    name = posixpath.basename(path)
    return name.endswith(".parquet") and not name.startswith(".")


def _row_groups(loc: storage.Location, files: list[str], layout: str
                ) -> tuple[list[tuple[str, int, int]], list[int], dict[str, pq.FileMetaData]]:
    """(file, row group, rows) of every non-empty row group, in order, each one's size in bytes, and on an
    object store the footers."""
    parts, sizes, needed = [], [], ["image" if layout == "parquet" else "file_name", "index", "seed", "label"]
    footers = {}
    for rel in files:
        try:
            with loc.fs.open_input_file(loc.join(rel)) as f:
                meta = pq.ParquetFile(f).metadata
        except (OSError, ValueError) as err:  # missing, truncated or not Parquet
            raise SynthgenError(f"{loc.join(rel)}: cannot read Parquet footer ({err}); "
                                "run synthgen verify on the dataset") from None
        # checked here, not on the first read: other Parquet (e.g. a Hugging Face export) lacks index and seed
        columns = meta.schema.to_arrow_schema().names
        missing = [name for name in needed if name not in columns]
        if missing:
            raise SynthgenError(f"{loc.join(rel)}: no {', '.join(missing)} column(s); not a synthgen dataset "
                                "file (read other Parquet with synthgen.data.RealImageDataset)")
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        parts += [(rel, g, group.num_rows) for g, group in enumerate(groups) if group.num_rows]
        sizes += [_compressed_size(group) for group in groups if group.num_rows]
        if not loc.is_local:
            footers[rel] = meta
    return parts, sizes, footers


def _compressed_size(group: pq.RowGroupMetaData) -> int:
    return sum(group.column(c).total_compressed_size for c in range(group.num_columns))


def _hf_class_names(loc: storage.Location, rel: str) -> list[str]:
    with loc.fs.open_input_file(loc.join(rel)) as f:
        raw = (pq.read_schema(f).metadata or {}).get(b"huggingface")
    try:
        label = json.loads(raw)["info"]["features"]["label"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return []
    return [str(n) for n in label.get("names", [])] if isinstance(label, dict) else []


class RowGroupReader:
    """Reads row groups: :meth:`rows` keeps the last one, :meth:`read` (safe from threads) keeps none.

    The filesystem, each file's footer and an open handle per file are made lazily in each process, so a
    DataLoader worker reading many row groups of a file pays one open and one footer read (on object stores
    each of those is a request).
    """

    def __init__(self, info: DatasetInfo, transform: Transform | None):
        self.info, self.transform = info, transform
        self._loc: storage.Location | None = None
        self._cached: tuple[int, dict[str, list]] | None = None
        self._files: dict[str, tuple[Any, pq.FileMetaData]] = {}

    def __getstate__(self) -> dict:
        # filesystems, open files and cached rows stay behind: each DataLoader worker opens its own
        return {**self.__dict__, "_loc": None, "_cached": None, "_files": {}}

    @property
    def loc(self) -> storage.Location:
        if self._loc is None:
            self._loc = storage.locate(self.info.uri)
        return self._loc

    def rows(self, part: int) -> dict[str, list]:
        """Columns of row group ``part``: index, seed, label and png (bytes), pixels or file_name."""
        if self._cached is None or self._cached[0] != part:
            self._cached = (part, self.read(part))
        return self._cached[1]

    def read(self, part: int, meta: tuple[str, ...] = ("index", "seed", "label"),
             png_rows: bool = False) -> dict[str, Any]:
        """Read row group ``part`` (what :meth:`rows` returns) without caching it.

        Args:
            meta: the columns besides the image to read (as lists).
            png_rows: give PNGs of one length as the rows of a uint8 (rows, size) array ("png_rows"), with
                no Python object per row; else (or when their lengths differ) a list ("png").
        """
        return self.read_parts([part], meta, png_rows)[part]

    def read_parts(self, parts: list[int], meta: tuple[str, ...] = ("index", "seed", "label"),
                   png_rows: bool = False) -> dict[int, dict[str, Any]]:
        """Read row groups of one file in one go (:meth:`read`'s columns for each): on an object store the
        byte span of their column chunks (consecutive groups lie side by side) comes in one ranged request."""
        rel = self.info.parts[parts[0]][0]
        if any(self.info.parts[p][0] != rel for p in parts):
            raise ValueError("read_parts: row groups of one file only")
        image_col = "image" if self.info.layout == "parquet" else "file_name"
        handle, footer = self._open(rel)
        groups = [self.info.parts[p][1] for p in parts]
        source = handle if self.loc.is_local else storage.ByteSpan.fetch(handle, *_byte_span(footer, groups))
        parquet = pq.ParquetFile(source, metadata=footer, pre_buffer=False)
        table = parquet.read_row_groups(groups, columns=[image_col, *meta])
        out, start = {}, 0
        for part in parts:
            rows = self.info.parts[part][2]
            cols = out[part] = _columns(table.slice(start, rows), image_col, meta, png_rows)
            if self.info.layout in ("dicom", "nifti"):  # decoded here: every reader downstream gets pixels
                cols["pixels"] = np.stack([self._decode_file(name) for name in cols["file_name"]])  # (rows, H, W, C)
            start += rows
        return out

    def _decode_file(self, name: str) -> np.ndarray:
        return decode_file(self.info.layout, storage.read_bytes(self.loc, self.loc.join(name)), name)

    def _open(self, rel: str) -> tuple[Any, pq.FileMetaData]:
        # one random-access handle per file, shared by threads: pyarrow's ReadAt is thread-safe
        if rel not in self._files:
            handle = self.loc.fs.open_input_file(self.loc.join(rel))
            footer = self.info.footers.get(rel)
            self._files[rel] = (handle, footer if footer is not None else pq.ParquetFile(handle).metadata)
        return self._files[rel]

    def png(self, cols: dict[str, list], k: int) -> bytes:
        if "png" in cols:
            return cols["png"][k]
        return storage.read_bytes(self.loc, self.loc.join(cols["file_name"][k]))

    def image(self, cols: dict[str, list], k: int) -> np.ndarray:
        """Row ``k``'s pixels, uint8 or uint16 (H, W, C)."""
        if "pixels" in cols:
            return cols["pixels"][k]
        return decode_png(self.png(cols, k))

    def item(self, cols: dict[str, list], k: int) -> tuple[Any, int]:
        if self.transform is not None:
            if "pixels" in cols:
                return self.transform(to_pil(cols["pixels"][k])), int(cols["label"][k])
            with Image.open(io.BytesIO(self.png(cols, k))) as img:
                img.load()
                return self.transform(img), int(cols["label"][k])
        return to_tensor(self.image(cols, k)), int(cols["label"][k])


def _byte_span(footer: pq.FileMetaData, groups: list[int]) -> tuple[int, int]:
    """[start, stop) in the file of every column chunk of ``groups`` (consecutive groups lie side by side)."""
    chunks = [footer.row_group(g).column(c) for g in groups for c in range(footer.num_columns)]
    starts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in chunks]
    return min(starts), max(s + c.total_compressed_size for s, c in zip(starts, chunks))


def _columns(table: pa.Table, image_col: str, meta: tuple[str, ...], png_rows: bool) -> dict[str, Any]:
    cols = {name: table.column(name).to_pylist() for name in meta}
    if "seed" in cols and pa.types.is_string(table.column("seed").type):  # metadata.parquet: strings
        cols["seed"] = [int(seed) for seed in cols["seed"]]
    if image_col == "image":
        images = table.column("image").combine_chunks()
        pixels = raw_pixels(images, table.schema.field("image"))  # --encoding raw: no decoding
        rows = _same_length_rows(images.field("bytes")) if pixels is None and png_rows else None
        if pixels is not None:
            cols["pixels"] = pixels  # (rows, H, W, C) uint8 or uint16
        elif rows is not None:
            cols["png_rows"] = rows  # (rows, PNG size) uint8
        else:
            cols["png"] = images.field("bytes").to_pylist()
    else:
        cols["file_name"] = table.column("file_name").to_pylist()
    return cols


def _same_length_rows(values: pa.Array) -> np.ndarray | None:
    """A binary column whose values all have one length, as a zero-copy uint8 (rows, length) view; else None."""
    if not len(values) or values.null_count or not (pa.types.is_binary(values.type)
                                                    or pa.types.is_large_binary(values.type)):
        return None
    width = 8 if pa.types.is_large_binary(values.type) else 4
    offsets = np.frombuffer(values.buffers()[1], f"<i{width}", count=len(values) + 1, offset=values.offset * width)
    sizes = np.diff(offsets)
    if (sizes != sizes[0]).any() or sizes[0] == 0:
        return None
    data = np.frombuffer(values.buffers()[2], np.uint8)
    return data[offsets[0]:offsets[-1]].reshape(len(values), int(sizes[0]))  # (rows, length)


class SyntheticImageDataset(Dataset):
    """Map-style dataset over a synthgen dataset (Parquet, PNG, DICOM or NIfTI layout, local or URI).

    Item ``i`` is the row at position ``i`` in index order (for a complete dataset, the image with index
    ``i``): ``(float (C, H, W) tensor in [0, 1] or transform(PIL image), label)``. Reading in order is cheap;
    random order decodes a row group per item unless ``cache`` (True or a cache directory) reads a decoded copy
    (:mod:`synthgen.decoded_cache`). For training on synthetic images alone, :func:`loader` is faster still.
    """

    def __init__(self, path_or_uri: str, transform: Transform | None = None, allow_incomplete: bool = False,
                 cache: bool | str | Path = False):
        self.info = open_dataset(str(path_or_uri), allow_incomplete)
        self.class_names = self.info.class_names
        self._reader = RowGroupReader(self.info, transform)
        self._starts = np.cumsum([0] + [p[2] for p in self.info.parts])  # first position of each part
        self._cache = None
        if cache:
            from synthgen.decoded_cache import open_decoded_cache  # builds on this module

            self._cache = open_decoded_cache(self.info, None if cache is True else cache)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i %= len(self)
        part = bisect.bisect_right(self._starts, i) - 1
        return part, i - int(self._starts[part])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        part, k = self._locate(int(i))
        if self._cache is not None:  # the decoded copy: any order at memory speed
            columns = {"pixels": self._cache.pixels, "label": self._cache.labels}
            return self._reader.item(columns, int(self._starts[part]) + k)
        return self._reader.item(self._reader.rows(part), k)

    def row(self, i: int) -> dict[str, Any]:
        """Everything stored for position ``i``: index, seed, label and the image as uint8/uint16 (H, W, C)."""
        part, k = self._locate(int(i))
        cols = self._reader.rows(part)
        return {"index": cols["index"][k], "seed": cols["seed"][k], "label": cols["label"][k],
                "image": self._reader.image(cols, k)}

    def arrays(self, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode many rows at once, reading each row group once.

        Args:
            positions: row positions to read (default: all), any order.

        Returns:
            uint8 (or uint16) images (N, H, W, C), int64 labels (N,) and the rows' dataset indices (N,), in the order
            of ``positions``.
        """
        positions = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            raise SynthgenError(f"{self.info.uri}: no rows selected")
        images, meta = [None] * len(positions), np.empty((len(positions), 2), np.int64)
        for j in np.argsort(positions, kind="stable"):  # row-group order, so each group is read once
            part, k = self._locate(int(positions[j]))
            cols = self._reader.rows(part)
            images[j], meta[j] = self._reader.image(cols, k), (cols["label"][k], cols["index"][k])
        return np.stack(images), meta[:, 0], meta[:, 1]  # (N, H, W, C), (N,), (N,)


class IterableSyntheticDataset(IterableDataset):
    """Streams a synthgen dataset, its row groups split across distributed ranks and DataLoader workers.

    Row groups go round-robin to ranks, then round-robin to the workers of each rank, so every row is read
    exactly once per epoch across all ranks and workers. Ranks may get unequal row counts (whole row groups,
    1024 rows each by default); use ``len()`` to know this rank's share.
    """

    def __init__(self, path_or_uri: str, transform: Transform | None = None, rank: int | None = None,
                 world_size: int | None = None, shuffle: bool = False, seed: int = 0,
                 allow_incomplete: bool = False):
        self.info = open_dataset(str(path_or_uri), allow_incomplete)
        self.class_names = self.info.class_names
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self._reader = RowGroupReader(self.info, transform)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (same order on every rank, so the split still covers each row once)."""
        self.epoch = epoch

    def _rank_parts(self) -> list[int]:
        order = np.arange(len(self.info.parts))
        if self.shuffle:  # seeded identically on every rank: ranks must agree on who gets which group
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return order[self.rank::self.world_size].tolist()

    def __len__(self) -> int:
        return sum(self.info.parts[p][2] for p in self._rank_parts())

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        for part in self._rank_parts()[wid::nworkers]:
            cols = self._reader.rows(part)
            rows = np.arange(len(cols["label"]))
            for k in (rng.permutation(rows) if self.shuffle else rows):
                yield self._reader.item(cols, int(k))


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Check a rank and world size, each defaulting to torch.distributed's when it is initialised, else 0 and 1."""
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise SynthgenError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


def loader(path_or_uri: str, batch_size: int = 256, shuffle: bool = True, num_workers: int = 2,
           **options: Any) -> DataLoader:
    """The recommended way to train on a synthgen dataset: a ready DataLoader of ``(images, labels)`` batches,
    shuffled by row-group windows (or uniformly from a decoded cache) and each row read once per epoch.

    Options (window, cache, seed, rank, world_size, transforms, ...): :func:`synthgen.loading.synthetic_loader`.
    """
    from synthgen.loading import synthetic_loader  # builds on this module

    return synthetic_loader(path_or_uri, batch_size, shuffle, num_workers=num_workers, **options)
