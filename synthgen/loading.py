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

import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

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


class _GroupFetcher:
    """Row groups of one process, read by a small thread pool and kept while they may still be needed."""

    def __init__(self, reader: RowGroupReader, capacity: int):
        self.reader, self.capacity = reader, capacity
        self._groups: OrderedDict[int, Future] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_groups": OrderedDict(), "_pool": None, "_pid": -1}

    def get(self, parts: list[int], ahead: tuple[int, ...]) -> dict[int, dict[str, Any]]:
        """The columns of ``parts`` (waiting for them); ``ahead`` starts loading without waiting."""
        if self._pid != os.getpid():  # a forked worker must not use its parent's threads
            self._pool, self._groups, self._pid = ThreadPoolExecutor(READ_THREADS), OrderedDict(), os.getpid()
        for part in [*parts, *ahead]:
            if part not in self._groups:
                self._groups[part] = self._pool.submit(self._read, part)
            self._groups.move_to_end(part)
        keep = set(parts) | set(ahead)
        stale = [part for part in self._groups if part not in keep]  # least recently asked for first
        for part in stale[:max(0, len(self._groups) - max(self.capacity, len(keep)))]:
            del self._groups[part]
        return {part: self._groups[part].result() for part in parts}

    def _read(self, part: int) -> dict[str, Any]:
        cols = self.reader.read(part, meta=("label",), png_rows=True)
        cols["label"] = np.asarray(cols["label"], dtype=np.int64)
        if "file_name" in cols and "pixels" not in cols:  # the PNG tree: files read here, so read ahead too
            cols["png"] = [self.reader.png(cols, k) for k in range(len(cols["file_name"]))]
        return cols


class SyntheticBatches(Dataset):
    """A synthgen dataset read a batch at a time: ``__getitems__(BatchPlan)`` returns one collated batch.

    Use it through :func:`synthetic_loader` (whose DataLoader passes it whole :class:`BatchPlan` objects);
    ``ds[i]`` still gives item ``i`` as ``(image, label)``.
    """

    def __init__(self, info: DatasetInfo, cache: DecodedCache | None = None, transform: BatchTransform | None = None,
                 batch_transform: BatchTransform | None = None, dict_transforms: bool = False,
                 dtype: torch.dtype = torch.float32, window: int | None = DEFAULT_WINDOW):
        self.info, self.cache = info, cache
        self.transform, self.batch_transform, self.dict_transforms = transform, batch_transform, dict_transforms
        self.dtype = dtype
        self.starts = np.concatenate([[0], np.cumsum([p[2] for p in info.parts])])  # first position per group
        shape = info.image_shape  # (C, H, W)
        self.shape = (shape[1], shape[2], shape[0]) if shape else None  # (H, W, C)
        # the groups of a span and of the next one, plus a span's two partial groups
        self._fetcher = _GroupFetcher(RowGroupReader(info, None), 2 * (window or 1) + 4)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        images, labels = self.__getitems__(BatchPlan(np.array([int(i) % len(self)])))[0]
        return images[0], int(labels[0])

    def __getitems__(self, plan: BatchPlan | list[int]) -> list[tuple[Any, Any]]:
        if not isinstance(plan, BatchPlan):  # a user's own batch sampler: plain position lists
            plan = BatchPlan(np.asarray(plan, dtype=np.int64))
        pixels, labels = self.cache.batch(plan.positions) if self.cache else self._decode(plan)
        return [self._finish(pixels, labels)]

    def _decode(self, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        parts = np.searchsorted(self.starts, plan.positions, side="right") - 1
        groups = self._fetcher.get(np.unique(parts).tolist(), plan.ahead)
        rows = plan.positions - self.starts[parts]
        kinds = {next(k for k in ("pixels", "png_rows", "png") if k in cols) for cols in groups.values()}
        widths = {cols["png_rows"].shape[1] for cols in groups.values() if "png_rows" in cols}
        if kinds == {"pixels"} or (kinds == {"png_rows"} and len(widths) == 1):  # a batch of arrays: no loop
            key = kinds.pop()
            labels, stacked = self._gather(groups, parts, rows, key)
            pixels = stacked if key == "pixels" else decode_png_rows(stacked, self.shape or _shape(stacked[0]))
        else:  # PNGs of several lengths (compressed ones, the PNG tree): one by one
            pairs = zip(parts.tolist(), rows.tolist())
            labels = np.array([groups[p]["label"][k] for p, k in zip(parts.tolist(), rows.tolist())], np.int64)
            pngs = [_png(groups[p], k) for p, k in pairs]
            pixels = decode_pngs(pngs, self.shape)
        return pixels, labels  # (B, H, W, C) uint8, (B,)

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
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))  # (B, C, H, W) uint8
        if self.dtype != torch.uint8:
            images = images.to(self.dtype).div_(255)
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


def _png(cols: dict[str, Any], k: int) -> bytes:
    return cols["png"][k] if "png" in cols else cols["png_rows"][k].tobytes()


def _shape(png: np.ndarray) -> tuple[int, int, int]:
    return decode_pngs([png.tobytes()]).shape[1:]


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
    sampler = WindowShuffleSampler([p[2] for p in info.parts], batch_size, shuffle, window, seed, rank, world_size,
                                   num_workers, drop_last)
    dataset = SyntheticBatches(info, decoded, transform, batch_transform, dict_transforms, dtype, window)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_only_batch,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
