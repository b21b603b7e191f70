"""Whether the rest of a job fits on the output's filesystem, checked as shards land.

A job too large for its disk would otherwise write until the disk is full, failing late and starving
everything else on it (Ray keeps its logs and spilled objects on local disk too). Once a shard is committed
the cost of an image on disk is known, so the run stops at the first shard that shows the rest cannot fit,
with the shards made so far kept for a re-run. Object stores have no fixed capacity: not checked.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pyarrow.parquet as pq

from synthgen import storage
from synthgen.dataset import manifest as mf
from synthgen.dataset.format import FILE_FORMATS
from synthgen.errors import SynthgenError

SAMPLE_FILES = 1000  # PNG files whose allocation is measured, out of the first committed shard


class FreeSpace(NamedTuple):
    bytes: int
    files: int | None  # inodes left, where the filesystem counts them


def free_space(path: str) -> FreeSpace:
    """What an unprivileged writer may still put on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return FreeSpace(st.f_bavail * st.f_frsize, st.f_favail if st.f_files else None)


class SpaceCheck:
    """Call after each committed shard with the images not yet handed out; raises when they cannot fit."""

    def __init__(self, loc: storage.Location, manifest: mf.Manifest):
        self.loc, self.manifest = loc, manifest
        self.png_tree = manifest.job["format"] in FILE_FORMATS  # one file per image: blocks and inodes count
        self.bytes_per_image: float | None = None

    def __call__(self, images_left: int) -> None:
        if not self.loc.is_local or images_left <= 0 or not self.manifest.shards:
            return
        try:
            if self.bytes_per_image is None:
                self.bytes_per_image = self._measure()
            free = free_space(self.loc.root)
        except (OSError, ValueError):  # a file gone or unreadable meanwhile: a guard, not worth failing a run
            return
        need = images_left * self.bytes_per_image
        if need > free.bytes:
            self._refuse(images_left, f"need about {storage.human_bytes(need)} ({self.bytes_per_image:,.0f} B "
                                      f"each), and its filesystem has {storage.human_bytes(free.bytes)} free")
        if self.png_tree and free.files is not None and images_left > free.files:
            self._refuse(images_left, f"need {images_left:,} files, and its filesystem has room for "
                                      f"{free.files:,} more (inodes)")

    def _measure(self) -> float:
        """Bytes on disk per image: a Parquet shard's size, or a PNG tree's files in whole blocks."""
        records = list(self.manifest.shards.values())
        per_image = sum(r.bytes for r in records) / sum(r.rows for r in records)
        if not self.png_tree:
            return per_image  # a few large files: their last partial blocks do not count
        first = records[0]
        meta = self.loc.join(first.file)
        names = pq.read_table(meta, columns=["file_name"]).column(0).to_pylist()[:SAMPLE_FILES]
        allocated = [os.stat(self.loc.join(name)).st_blocks * 512 for name in names]
        return os.stat(meta).st_size / first.rows + sum(allocated) / max(1, len(allocated))

    def _refuse(self, images_left: int, why: str) -> None:
        done = self.manifest.rows_done()
        raise SynthgenError(f"--count {self.manifest.job['count']}: the {images_left:,} images still to make "
                            f"{why} at --out {self.loc.uri}; the {done:,} made so far are kept: free space, "
                            "then re-run the same command to finish")

