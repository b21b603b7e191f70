"""Check a dataset against its manifest: every shard present, intact and complete, every index once.

``check_shard`` is shared by ``synthgen verify`` and by resume, which redoes any shard that fails it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from synthgen import storage
from synthgen.dataset import manifest as mf
from synthgen.dataset.format import (
    FILE_FORMATS,
    FOLDERS,
    digest_column,
    is_written_file,
)
from synthgen.errors import SynthgenError
from synthgen.generate.plan import shard_spec

_CHUNK = 1 << 20


@dataclass
class VerifyReport:
    """What ``synthgen verify`` found; ``ok`` when ``problems`` is empty."""

    path: str
    rows: int = 0
    shards: int = 0
    bytes: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)  # files in the dataset's folders that are not part of it

    @property
    def ok(self) -> bool:
        return not self.problems


def file_sha256(loc: storage.Location, path: str) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with loc.fs.open_input_stream(path, compression=None) as stream:  # never un-gzip a .gz
        while chunk := stream.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def check_shard(loc: storage.Location, record: mf.ShardRecord, fmt: str, deep: bool = True) -> list[str]:
    """Problems with one committed shard: missing, wrong size or checksum, wrong rows or indices."""
    path = loc.join(record.file)
    if not storage.exists(loc, path):
        return [f"{record.file}: missing"]
    digest, size = file_sha256(loc, path)
    if digest != record.sha256:
        return [f"{record.file}: sha256 {digest[:12]}... differs from the manifest's {record.sha256[:12]}... "
                f"(size {size}; corrupt or truncated)"]
    try:
        with loc.fs.open_input_file(path) as f:
            files = ["file_name", digest_column(fmt)] if fmt in FILE_FORMATS else []
            table = pq.read_table(f, columns=["index"] + files)
    except Exception as err:  # pyarrow raises several types for a damaged file
        return [f"{record.file}: unreadable Parquet ({err})"]
    problems = []
    indices = table.column("index").to_numpy()
    if table.num_rows != record.rows or not np.array_equal(indices, np.arange(record.start, record.stop)):
        problems.append(f"{record.file}: holds {table.num_rows} rows, expected indices "
                        f"{record.start}..{record.stop - 1} in order")
    if fmt in FILE_FORMATS and deep:
        problems += _check_files(loc, table.column("file_name").to_pylist(),
                                 table.column(digest_column(fmt)).to_pylist())
    return problems


def _check_files(loc: storage.Location, names: list[str], digests: list[str]) -> list[str]:
    problems = []
    for name, expected in zip(names, digests):
        path = loc.join(name)
        if not storage.exists(loc, path):
            problems.append(f"{name}: missing")
        elif hashlib.sha256(storage.read_bytes(loc, path)).hexdigest() != expected:
            problems.append(f"{name}: sha256 differs from its shard's metadata")
        if len(problems) >= 20:
            problems.append("... (more image file problems not listed)")
            break
    return problems


def verify_dataset(path: str) -> VerifyReport:
    """Check every shard of the dataset at ``path`` (a directory or URI) against its manifest.

    Returns:
        A report; its ``problems`` list each missing, damaged or incomplete part.
    """
    loc = storage.locate(path)
    try:
        return _verify(loc, path)
    except OSError as err:  # object stores: no such bucket, credentials refused, endpoint unreachable
        raise SynthgenError(f"{path}: cannot read it ({storage.error_line(err)})") from None


def _verify(loc: storage.Location, path: str) -> VerifyReport:
    manifest = mf.load(loc)
    if manifest is None:
        raise SynthgenError(f"{path}: no {mf.MANIFEST_FILE}; not a synthgen dataset")
    report = VerifyReport(path, class_counts=manifest.class_counts())
    if not manifest.complete:
        report.problems.append(f"incomplete: {len(manifest.shards)} of {manifest.num_shards} shards committed; "
                               "re-run the same synthgen run command to finish it")
    count, size = manifest.job["count"], manifest.job["shard_size"]
    for j in range(manifest.num_shards):
        spec = shard_spec(j, count, size)
        record = manifest.shards.get(j)
        if record is None:
            if manifest.complete:
                report.problems.append(f"shard {j}: not in the manifest")
            continue
        if (record.start, record.stop) != (spec.start, spec.stop):
            report.problems.append(f"shard {j}: index range {record.start}..{record.stop} does not match the plan")
        report.problems += check_shard(loc, record, manifest.job["format"])
        report.rows += record.rows
        report.bytes += record.bytes
        report.shards += 1
    if manifest.complete and report.rows != count:
        report.problems.append(f"{report.rows} rows in the shards, the job asked for {count}")
    report.strays = stray_files(loc, manifest)
    return report


def folder_files(loc: storage.Location) -> list[str]:
    """Every file under the dataset's folders (data/, meta/, images/), relative to its root."""
    files = []
    for folder in FOLDERS:
        root = loc.join(folder)
        if storage.is_dir(loc, root):
            files += [folder + "/" + path[len(root):].lstrip("/") for path in storage.list_files(loc, root, True)]
    return files


def stray_files(loc: storage.Location, manifest: mf.Manifest) -> list[str]:
    """Files in the dataset's folders that are not part of it: temporaries of a writer that was killed, files
    synthgen never writes, and (once complete) shard files the manifest does not list."""
    committed = {record.file for record in manifest.shards.values()}
    return [rel for rel in folder_files(loc)
            if rel.rsplit("/", 1)[-1].startswith(storage.TMP_PREFIX) or not is_written_file(rel)
            or (manifest.complete and not rel.startswith("images/") and rel not in committed)]
