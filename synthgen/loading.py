"""The fast path from a synthgen dataset to a training loop: :func:`synthetic_loader` returns a ready DataLoader.

Its sampler (:mod:`synthgen.sampler`) shuffles row groups and rows within a window of groups and deals whole
spans of rows to the DataLoader's workers; each worker reads its row groups once (fetching the next span's
in background threads, which hides object-store latency) and decodes a batch's PNGs into one array. With
``cache=True`` it reads a decoded copy instead (:mod:`synthgen.decoded_cache`) and shuffles uniformly.

Batches are ``(images, labels)``: float32 ``(B, C, H, W)`` in [0, 1] (or uint8 with ``dtype=torch.uint8``)
and int64 ``(B,)``. Transforms are plain callables, so torchvision v2 and MONAI transforms fit:
``transform`` is applied to each image ``(C, H, W)``, ``batch_transform`` to the batch ``(B, C, H, W)``;
with ``dict_transforms=True`` both receive and return ``{"image": ..., "label": ...}`` (MONAI's dictionary
transforms, e.g. ``RandFlipd(keys="image")``).
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from synthgen.data import DatasetInfo, RowGroupReader, open_dataset, rank_and_world
from synthgen.decoded_cache import DecodedCache, open_decoded_cache
from synthgen.errors import SynthgenError
from synthgen.imaging import decode_png_rows, decode_pngs
from synthgen.sampler import DEFAULT_WINDOW, BatchPlan, WindowShuffleSampler

BatchTransform = Callable[[Any], Any]
READ_THREADS = 4  # row groups fetched at once per worker: enough to keep an object store's latency hidden
BLOCK_BYTES = 8 << 20  # the most one read of consecutive row groups fetches (docs/benchmarks.md)
TRANSFER_BYTES = 8 << 20  # a worker hands over whole batches about this large at a time (docs/benchmarks.md)


class _GroupFetcher:
    """Row groups of one process, read by a small thread pool and kept while they may still be needed. The
    groups wanted at once that belong to one block (:func:`read_blocks`) are read together, in one request on
    an object store; a worker reads only the groups of its own spans, not the whole block."""

    def __init__(self, reader: RowGroupReader, blocks: np.ndarray, capacity: int):
        self.reader, self.blocks, self.capacity = reader, np.asarray(blocks), capacity
        self._groups: OrderedDict[int, Future] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_groups": OrderedDict(), "_pool": None, "_pid": -1}

    def get(self, parts: list[int], ahead: tuple[int, ...]) -> dict[int, dict[str, Any]]:
        """The columns of ``parts`` (waiting for them); ``ahead`` starts loading without waiting."""
        if self._pid != os.getpid():  # a forked worker must not use its parent's threads
            self._pool, self._groups, self._pid = ThreadPoolExecutor(READ_THREADS), OrderedDict(), os.getpid()
        wanted = list(dict.fromkeys([*parts, *(int(g) for g in ahead)]))
        missing: dict[int, list[int]] = {}
        for group in wanted:
            if group not in self._groups:
                missing.setdefault(int(self.blocks[group]), []).append(group)
        for members in missing.values():
            read = self._pool.submit(self._read, sorted(members))
            self._groups.update((group, read) for group in members)
        for group in wanted:
            self._groups.move_to_end(group)
        keep = set(wanted)
        stale = [group for group in self._groups if group not in keep]  # least recently asked for first
        for group in stale[:max(0, len(self._groups) - max(self.capacity, len(wanted)))]:
            del self._groups[group]
        return {part: self._groups[part].result()[part] for part in parts}

    def _read(self, members: list[int]) -> dict[int, dict[str, Any]]:
        groups = self.reader.read_parts(members, meta=("label",), png_rows=True)
        for cols in groups.values():
            cols["label"] = np.asarray(cols["label"], dtype=np.int64)
            if "file_name" in cols and "pixels" not in cols:  # the PNG tree: files read here, so read ahead too
                cols["png"] = [self.reader.png(cols, k) for k in range(len(cols["file_name"]))]
        return groups


def read_blocks(info: DatasetInfo, window: int | None) -> np.ndarray:
    """A block id per row group: runs of consecutive groups of one file, of up to BLOCK_BYTES and half a window,
    that the loader reads in one request and the sampler keeps together (so a window of 16 groups holds rows of
    at least two places in the dataset). Uniform shuffling (no window) reads groups one by one: a batch may
    touch any of them."""
    if window is None or not info.part_bytes:
        return np.arange(len(info.parts))
    most = max(1, window // 2)
    blocks, block, size, count, last_file = [], -1, 0, most, None
    for (rel, _, _), nbytes in zip(info.parts, info.part_bytes):
        if count >= most or size + nbytes > BLOCK_BYTES or rel != last_file:
            block, size, count = block + 1, 0, 0
        blocks.append(block)
        size, count, last_file = size + nbytes, count + 1, rel
    return np.asarray(blocks, dtype=np.int64)


class SyntheticBatches(Dataset):
    """A synthgen dataset read a batch at a time: ``__getitems__(BatchPlan)`` returns one collated batch.

    Use it through :func:`synthetic_loader` (whose DataLoader passes it whole :class:`BatchPlan` objects);
    ``ds[i]`` still gives item ``i`` as ``(image, label)``.
    """

    def __init__(self, info: DatasetInfo, cache: DecodedCache | None = None, transform: BatchTransform | None = None,
                 batch_transform: BatchTransform | None = None, dict_transforms: bool = False,
                 dtype: torch.dtype = torch.float32, window: int | None = DEFAULT_WINDOW,
                 blocks: np.ndarray | None = None):
        self.info, self.cache = info, cache
        self.transform, self.batch_transform, self.dict_transforms = transform, batch_transform, dict_transforms
        self.dtype = dtype
        self.starts = np.concatenate([[0], np.cumsum([p[2] for p in info.parts])])  # first position per group
        shape = info.image_shape  # (C, H, W)
        self.shape = (shape[1], shape[2], shape[0]) if shape else None  # (H, W, C)
        # the groups of a span and of the next one, plus a span's two partial groups
        blocks = read_blocks(info, window) if blocks is None else blocks
        self._fetcher = _GroupFetcher(RowGroupReader(info, None), blocks, 2 * (window or 1) + 4)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        images, labels = self.__getitems__(BatchPlan(np.array([int(i) % len(self)])))[0]
        return images[0], int(labels[0])

    def __getitems__(self, plan: BatchPlan | list[int]) -> list[tuple[Any, Any] | TransferUnit]:
        if not isinstance(plan, BatchPlan):  # a user's own batch sampler: plain position lists
            plan = BatchPlan(np.asarray(plan, dtype=np.int64))
        pixels, labels = self.cache.batch(plan.positions) if self.cache else self._decode(plan)
        if not plan.sizes:
            return [self._finish(pixels, labels)]
        if self.transform is None and self.batch_transform is None:  # nothing sees a batch: convert all at once
            return [TransferUnit(*self._finish(pixels, labels), plan.sizes)]
        cuts = np.cumsum(plan.sizes)[:-1]
        batches = [self._finish(p, y) for p, y in zip(np.split(pixels, cuts), np.split(labels, cuts))]
        return [TransferUnit.of(batches)]

    def _decode(self, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        parts = np.searchsorted(self.starts, plan.positions, side="right") - 1
        groups = self._fetcher.get(np.unique(parts).tolist(), plan.ahead)
        rows = plan.positions - self.starts[parts]
        kinds = {next(k for k in ("pixels", "png_rows", "png") if k in cols) for cols in groups.values()}
        widths = {cols["png_rows"].shape[1] for cols in groups.values() if "png_rows" in cols}
        if kinds == {"pixels"} or (kinds == {"png_rows"} and len(widths) == 1):  # a batch of arrays: no loop
            key = kinds.pop()
            labels, stacked = self._gather(groups, parts, rows, key)
            pixels = stacked if key == "pixels" else decode_png_rows(stacked, self.shape or _shape(stacked[0]),
                                                                      self.info.pixel_dtype)
        else:  # PNGs of several lengths (compressed ones, the PNG tree): one by one
            pairs = zip(parts.tolist(), rows.tolist())
            labels = np.array([groups[p]["label"][k] for p, k in zip(parts.tolist(), rows.tolist())], np.int64)
            pngs = [_png(groups[p], k) for p, k in pairs]
            pixels = decode_pngs(pngs, self.shape, self.info.pixel_dtype)
        return pixels, labels  # (B, H, W, C) uint8 or uint16, (B,)

    @staticmethod
    def _gather(groups: dict[int, dict], parts: np.ndarray, rows: np.ndarray, key: str):
        """labels (B,) and ``key``'s rows (B, ...) of the batch, group by group."""
        first = groups[int(parts[0])][key]
        labels, out = np.empty(len(parts), np.int64), np.empty((len(parts), *first.shape[1:]), first.dtype)
        for part, cols in groups.items():
            mine = parts == part
            labels[mine], out[mine] = cols["label"][rows[mine]], cols[key][rows[mine]]
        return labels, out

    def _finish(self, pixels: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))  # (B, C, H, W) uint8/16
        if self.dtype.is_floating_point:  # [0, 1]: by 255, or 65535 for 16-bit pixels
            images = images.to(self.dtype).div_(float(np.iinfo(pixels.dtype).max))
        targets = torch.from_numpy(labels)  # (B,) int64
        if self.transform is not None:
            done = [self._call(self.transform, x, int(y)) for x, y in zip(images, labels.tolist())]
            images = torch.stack([x for x, _ in done])  # (B, ...) as the transform shapes it
            targets = torch.as_tensor([y for _, y in done])
        if self.batch_transform is not None:
            images, targets = self._call(self.batch_transform, images, targets)
        return images, targets

    def _call(self, fn: BatchTransform, image: Any, label: Any) -> tuple[Any, Any]:
        if not self.dict_transforms:
            return fn(image), label
        out = fn({"image": image, "label": label})
        image = out["image"]  # MONAI returns MetaTensors: plain tensors batch without collating metadata
        return image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else torch.as_tensor(image), \
            out["label"]


class TransferUnit(NamedTuple):
    """Several batches that travel from a DataLoader worker as one tensor each of images and targets (one
    shared-memory segment rather than one per batch: the per-batch cost of the hand-over is what limited the
    loader, docs/benchmarks.md); :class:`SyntheticLoader` splits them again, as views."""

    images: Any  # (sum(sizes), ...) the batches' images, concatenated; or a list of batches
    targets: Any
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, batches: list[tuple[Any, Any]]) -> TransferUnit:
        """Concatenate finished batches when they are tensors of one trailing shape, else keep the list."""
        images, targets = zip(*batches)
        if all(isinstance(t, torch.Tensor) for t in (*images, *targets)) and \
                len({x.shape[1:] for x in images}) == 1 and len({t.shape[1:] for t in targets}) == 1:
            return cls(torch.cat(images), torch.cat(targets), tuple(len(x) for x in images))
        return cls(list(images), list(targets), ())

    def batches(self) -> Iterator[tuple[Any, Any]]:
        if not self.sizes:
            yield from zip(self.images, self.targets)
            return
        yield from zip(self.images.split(list(self.sizes)), self.targets.split(list(self.sizes)))


class SyntheticLoader(DataLoader):
    """A DataLoader whose workers ship several batches at a time (:class:`TransferUnit`); it yields batches."""

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for item in super().__iter__():
            if isinstance(item, TransferUnit):
                yield from item.batches()
            else:
                yield item


def _batches_per_transfer(info: DatasetInfo, batch_size: int, dtype: torch.dtype) -> int:
    image_bytes = int(np.prod(info.image_shape or (1, 28, 28))) * torch.empty((), dtype=dtype).element_size()
    return max(1, TRANSFER_BYTES // (batch_size * image_bytes))


def _png(cols: dict[str, Any], k: int) -> bytes:
    return cols["png"][k] if "png" in cols else cols["png_rows"][k].tobytes()


def _shape(png: np.ndarray) -> tuple[int, int, int]:
    return decode_pngs([png.tobytes()]).shape[1:]


def _fixed_mmap_threshold(_worker_id: int) -> None:
    """glibc raises its mmap threshold whenever a large block is freed; after that a worker's ~8 MiB transfer
    units come from the heap, which then grows with the rows read (971 MiB per worker over 1M images, 432 MiB
    with the threshold fixed: docs/benchmarks.md). Fix it at 1 MiB in each worker (M_MMAP_THRESHOLD = -3)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own rules


def _only_batch(batches: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    return batches[0]  # __getitems__ collates already


def synthetic_loader(path_or_uri: str | Path, batch_size: int = 256, shuffle: bool = True,
                     window: int | None = None, cache: bool | str | Path = False, num_workers: int = 2,
                     seed: int = 0, rank: int | None = None, world_size: int | None = None, drop_last: bool = False,
                     transform: BatchTransform | None = None, batch_transform: BatchTransform | None = None,
                     dict_transforms: bool = False, dtype: torch.dtype = torch.float32, pin_memory: bool = False,
                     allow_incomplete: bool = False) -> DataLoader:
    """A DataLoader over a synthgen dataset that reads at sequential speed, shuffled, each row once per epoch.

    Args:
        path_or_uri: dataset directory or URI (``s3://...``).
        batch_size: images per batch.
        shuffle: shuffle row groups and rows within ``window`` groups; False reads in index order.
        window: row groups shuffled together (a row moves within about ``window * 1024`` rows); 0 shuffles
            all rows uniformly. Default: 16 without the cache, uniform with it.
        cache: True (or a cache directory) reads a decoded uint8 copy, built on first use and keyed by the
            manifest's sha256s (:mod:`synthgen.decoded_cache`).
        num_workers: DataLoader worker processes.
        seed: shuffle seed; each pass over the loader is the next epoch (``loader.batch_sampler.set_epoch``).
        rank, world_size: this process's share (default: from torch.distributed when initialised).
        drop_last: drop this rank's one short batch.
        transform, batch_transform, dict_transforms, dtype: see the module docstring.
        pin_memory: the DataLoader's.
        allow_incomplete: read the committed shards of an unfinished run.

    Returns:
        A DataLoader yielding ``(images, labels)`` batches.
    """
    info = open_dataset(str(path_or_uri), allow_incomplete)
    if window is not None and window < 0:
        raise SynthgenError(f"window must be >= 0 row groups (0: uniform), got {window}")
    decoded = open_decoded_cache(info, None if cache is True else cache) if cache else None
    if window is None:
        window = 0 if decoded else DEFAULT_WINDOW
    window = window or None  # the sampler's None: uniform
    rank, world_size = rank_and_world(rank, world_size)
    group = _batches_per_transfer(info, batch_size, dtype) if num_workers > 0 else 1  # in-process: no hand-over
    blocks = read_blocks(info, window)
    sampler = WindowShuffleSampler([p[2] for p in info.parts], batch_size, shuffle, window, seed, rank, world_size,
                                   num_workers, drop_last, group, blocks)
    dataset = SyntheticBatches(info, decoded, transform, batch_transform, dict_transforms, dtype, window, blocks)
    return SyntheticLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_only_batch,
                           pin_memory=pin_memory, persistent_workers=num_workers > 0,
                           worker_init_fn=_fixed_mmap_threshold)
