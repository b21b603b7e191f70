"""Paths and URIs (local, s3://, gs://, ...) through pyarrow's filesystems, with atomic writes.

Everything that touches dataset or checkpoint files goes through here, so local disk and object storage
behave the same. "Atomic" means: write a temporary sibling, then move it into place; readers only ever see
a complete file under the final name (on object stores the move is a copy, and the manifest is the commit).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pyarrow.fs as pafs

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Location:
    """A filesystem and a root path inside it; ``join`` makes child paths."""

    fs: pafs.FileSystem
    root: str
    uri: str  # what the user wrote, for messages

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def is_uri(path: str) -> bool:
    return "://" in str(path)


def locate(path_or_uri: str | os.PathLike) -> Location:
    """Resolve a local path or a URI such as ``s3://bucket/prefix`` to a filesystem and root path."""
    text = str(path_or_uri)
    if is_uri(text) and not text.startswith("file://"):
        fs, root = pafs.FileSystem.from_uri(text)
        return Location(fs, root.rstrip("/"), text)
    local = text.removeprefix("file://")
    return Location(pafs.LocalFileSystem(), os.path.abspath(local), text)


def exists(loc: Location, path: str) -> bool:
    return loc.fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(loc: Location, path: str) -> bool:
    return loc.fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(loc: Location, path: str) -> bytes:
    with loc.fs.open_input_stream(path) as stream:
        return stream.read()


def temp_sibling(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{tail}")


@contextlib.contextmanager
def open_atomic(loc: Location, path: str) -> Iterator[BinaryIO]:
    """A writable stream whose content appears under ``path`` only once the block ends without error.

    Local disk: a temporary sibling, renamed into place (atomic on POSIX) or removed on error. Object
    stores: the upload itself, since an object becomes visible only when its upload completes.
    """
    loc.fs.create_dir(posixpath.dirname(path), recursive=True)
    if not loc.is_local:
        with loc.fs.open_output_stream(path) as out:
            yield out
        return
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(loc: Location, path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``."""
    with open_atomic(loc, path) as out:
        out.write(data)


def remove(loc: Location, path: str) -> None:
    info = loc.fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        loc.fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        loc.fs.delete_file(path)


def list_files(loc: Location, path: str, recursive: bool = False) -> list[str]:
    """Paths of the files under ``path`` (empty when it does not exist)."""
    if not exists(loc, path):
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)
