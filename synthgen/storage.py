"""Paths and URIs (local, s3://, gs://, ...) through pyarrow's filesystems, with atomic writes.

Everything that touches dataset or checkpoint files goes through here, so local disk and object storage
behave the same. "Atomic" means: write a temporary sibling, then move it into place; readers only ever see
a complete file under the final name (on object stores the move is a copy, and the manifest is the commit).
URIs pyarrow does not know (``memory://``, ``abfs://``, ...) go through fsspec when it is installed. Object
store credentials come from the usual places (``AWS_ACCESS_KEY_ID``..., an instance profile); an endpoint
can ride in the URI (``s3://b/p?endpoint_override=host:port&scheme=http``) or ``AWS_ENDPOINT_URL_S3``.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from synthgen.errors import SynthgenError

TMP_PREFIX = ".tmp-"
OBJECT_STORES = ("s3", "gcs")  # pyarrow type names of stores without real directories


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

    @property
    def is_object_store(self) -> bool:
        return self.fs.type_name in OBJECT_STORES


def is_uri(path: str) -> bool:
    return "://" in str(path)


def locate(path_or_uri: str | os.PathLike) -> Location:
    """Resolve a local path or a URI such as ``s3://bucket/prefix`` to a filesystem and root path."""
    text = str(path_or_uri)
    if is_uri(text) and not text.startswith("file://"):
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except pa.ArrowInvalid as err:
            if "Unrecognized filesystem type" not in str(err):
                raise SynthgenError(f"{text}: {error_line(err)}") from None
            fs, root = _fsspec(text)
        except OSError as err:  # e.g. S3 region lookup of a bucket that does not exist
            raise SynthgenError(f"{text}: {error_line(err)}") from None
        return Location(fs, root.rstrip("/"), text)
    local = text.removeprefix("file://")
    return Location(pafs.LocalFileSystem(), os.path.abspath(local), text)


def _fsspec(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        import fsspec
    except ImportError:
        raise SynthgenError(f"{uri}: pyarrow does not know this kind of URI; install fsspec and the "
                            "package for it (gcsfs, adlfs, ...)") from None
    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise SynthgenError(f"{uri}: {error_line(err)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


def error_line(err: BaseException) -> str:
    """One line from a filesystem error, without pyarrow's advice about options synthgen does not expose."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.replace(" To create buckets, enable the allow_bucket_creation option.", "")


def human_bytes(n: float) -> str:
    """A size for people: "512 B", "3.4 MB" (units of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def exists(loc: Location, path: str) -> bool:
    return loc.fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(loc: Location, path: str) -> bool:
    return loc.fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(loc: Location, path: str) -> bytes:
    with loc.fs.open_input_stream(path, compression=None) as stream:  # never un-gzip a .gz
        return stream.read()


def temp_sibling(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{tail}")


@contextlib.contextmanager
def open_atomic(loc: Location, path: str) -> Iterator[BinaryIO]:
    """A writable stream whose content appears under ``path`` only once the block ends without error.

    Local disk: a temporary sibling, renamed into place (atomic on POSIX) or removed on error. Other
    filesystems: the same through the filesystem's move, a server-side copy on object stores (their
    streams complete the upload even when the block fails, so writing to ``path`` directly would publish
    a partial file).
    """
    _make_parent(loc, path)
    tmp = temp_sibling(path)
    if not loc.is_local:
        moved = False
        try:
            with loc.fs.open_output_stream(tmp, compression=None) as out:  # as given, .gz too
                yield out
            _move(loc, tmp, path)
            moved = True
        finally:
            if not moved:
                with contextlib.suppress(OSError):
                    loc.fs.delete_file(tmp)
        return
    try:
        with open(tmp, "wb") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(loc: Location, path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``."""
    if loc.is_object_store:  # one upload of bytes already in hand: the object appears whole or not at all
        _make_parent(loc, path)
        with loc.fs.open_output_stream(path, compression=None) as out:
            out.write(data)
        return
    with open_atomic(loc, path) as out:
        out.write(data)


def _make_parent(loc: Location, path: str) -> None:
    if not loc.is_object_store:  # object stores have no directories; creating markers costs requests
        loc.fs.create_dir(posixpath.dirname(path), recursive=True)


def _move(loc: Location, src: str, dest: str) -> None:
    try:
        loc.fs.move(src, dest)
    except pa.ArrowNotImplementedError:
        loc.fs.copy_file(src, dest)
        loc.fs.delete_file(src)


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


class ByteSpan(io.RawIOBase):
    """A file of which only bytes ``[start, start + len(data))`` were fetched, read at the file's own offsets:
    a Parquet reader given the footer can parse row groups from one ranged request instead of one per column
    chunk (on object stores pyarrow's ``pre_buffer`` made several, and each costs a round trip)."""

    def __init__(self, data: bytes, start: int, size: int):
        super().__init__()
        self._view, self._start, self._size, self._pos = memoryview(data), start, size, start

    @classmethod
    def fetch(cls, handle: Any, start: int, stop: int) -> ByteSpan:
        """Read ``[start, stop)`` of an open pyarrow file ``handle`` in one request."""
        return cls(handle.read_at(stop - start, start), start, handle.size())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> memoryview:
        first = self._pos - self._start
        end = len(self._view) if n is None or n < 0 else first + n
        if first < 0 or end > len(self._view):
            raise OSError(f"ByteSpan: bytes {self._pos}..{self._start + end} lie outside the fetched span")
        out = self._view[first:end]
        self._pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
