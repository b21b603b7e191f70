"""An opt-in decoded copy of a synthgen dataset: raw uint8 pixels in a memory-mapped file, for uniform shuffling.

Built once per dataset content, in a cache directory (``cache_dir``, else ``$SYNTHGEN_CACHE``, else
``~/.cache/synthgen/decoded``) and never inside the dataset: a folder named by the sha256 of the manifest's
shard list (each shard's file, rows and sha256) and the image shape, holding ``pixels.u8`` (N x H x W x C
bytes, in position order), ``labels.npy`` and ``meta.json``. A dataset with other content gets another key;
a folder is published by one rename once complete, so a build that was killed leaves only a ``.tmp-`` folder.
A 1M-image 28x28 dataset takes 784 MB. Reading maps the file: random rows cost a memory copy, and the pages
live in the OS page cache (shared by all DataLoader workers), not in any one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from synthgen.data import DatasetInfo, RowGroupReader
from synthgen.errors import SynthgenError
from synthgen.imaging import decode_pngs

CACHE_ENV = "SYNTHGEN_CACHE"
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synthgen" / "decoded")


def cache_key(info: DatasetInfo) -> str:
    """sha256 of what decides the decoded bytes: the manifest's shards (file, rows, sha256) and the shape."""
    if info.manifest is None:
        raise SynthgenError(f"{info.uri}: the decoded cache needs the dataset's manifest.json (its sha256s "
                            "name the cache); read this copy without cache=")
    if info.image_shape is None:
        raise SynthgenError(f"{info.uri}: the manifest records no image shape; read it without cache=")
    shards = [(r.file, r.rows, r.sha256) for _, r in sorted(info.manifest.shards.items())]
    key = {"version": CACHE_VERSION, "shards": shards, "shape": list(info.image_shape), "layout": info.layout}
    if info.bit_depth != 8:  # 8-bit caches keep the names they had
        key["bit_depth"] = info.bit_depth
    body = json.dumps(key)
    return hashlib.sha256(body.encode()).hexdigest()


class DecodedCache:
    """A built cache, opened read-only: ``pixels`` (N, H, W, C) uint8 (uint16) memmap, ``labels`` (N,) int64."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.rows, self.shape = int(meta["rows"]), tuple(meta["shape"])  # shape: (H, W, C)
        dtype = np.dtype(meta.get("dtype", "uint8"))
        self.pixels = np.memmap(folder / _pixels_file(dtype), dtype, "r", shape=(self.rows, *self.shape))
        self.labels = np.load(folder / "labels.npy")

    def __getstate__(self) -> dict:  # workers map the file again instead of receiving its pages
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])

    def batch(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 or uint16 (B, H, W, C) pixels and int64 (B,) labels of ``positions``, in that order."""
        return self.pixels[positions], self.labels[positions]


def open_decoded_cache(info: DatasetInfo, cache_dir: str | Path | None = None) -> DecodedCache:
    """The dataset's decoded cache, built first when missing (decoding every row once, in order).

    Args:
        info: from :func:`synthgen.data.open_dataset`; needs its manifest.
        cache_dir: where caches live (default: ``$SYNTHGEN_CACHE`` or ``~/.cache/synthgen/decoded``).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / cache_key(info)
    if not (folder / "meta.json").exists():
        _build(info, root, folder)
    cache = DecodedCache(folder)
    if cache.rows != info.rows:
        raise SynthgenError(f"{folder}: decoded cache holds {cache.rows} rows, the dataset {info.rows}; "
                            "delete that folder to rebuild it")
    return cache


def _pixels_file(dtype: np.dtype) -> str:
    return "pixels.u8" if dtype == np.uint8 else "pixels.u16"


def _build(info: DatasetInfo, root: Path, folder: Path) -> None:
    channels, height, width = info.image_shape
    shape = (height, width, channels)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex[:12]}-{folder.name}"
        tmp.mkdir()
    except OSError as err:
        raise SynthgenError(f"{root}: cannot create the decoded cache there ({err.strerror})") from None
    try:
        dtype = info.pixel_dtype or np.dtype(np.uint8)
        pixels = np.memmap(tmp / _pixels_file(dtype), dtype, "w+", shape=(info.rows, *shape))
        labels = np.empty(info.rows, np.int64)
        reader, at = RowGroupReader(info, None), 0
        for part in range(len(info.parts)):
            cols = reader.read(part)
            rows = len(cols["label"])
            pixels[at:at + rows] = (cols["pixels"] if "pixels" in cols  # (rows, H, W, C)
                                    else decode_pngs([reader.png(cols, k) for k in range(rows)], shape, dtype))
            labels[at:at + rows] = cols["label"]
            at += rows
        pixels.flush()
        del pixels
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({"rows": info.rows, "shape": list(shape), "uri": info.uri,
                                                   "dtype": dtype.name}))
        try:
            tmp.rename(folder)
        except OSError:  # another process published the same cache first: theirs is as good
            if not (folder / "meta.json").exists():
                raise
    except OSError as err:  # e.g. the disk filled up
        raise SynthgenError(f"{folder}: building the decoded cache failed ({err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
