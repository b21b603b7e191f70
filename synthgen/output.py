"""The dataset directory before a run: new, resumed, or replaced on request; foreign files never touched."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from synthgen import manifest as mf
from synthgen import storage
from synthgen.errors import SynthgenError
from synthgen.verify import check_shard

OUR_FILES = ("manifest.json", "README.md", "metadata.parquet", "data", "images", "meta")


def prepare_output(loc: storage.Location, fresh: mf.Manifest, overwrite: bool) -> mf.Manifest:
    """Make ``loc`` ready: new dataset, resume of the same one, or (with ``overwrite``) a replaced one.

    Never touches files synthgen did not write; a directory holding other files is refused.
    """
    try:
        return _prepare(loc, fresh, overwrite)
    except OSError as err:  # object stores: no such bucket, credentials refused, endpoint unreachable
        raise SynthgenError(f"--out {loc.uri}: cannot use it ({storage.error_line(err)})") from None


def _prepare(loc: storage.Location, fresh: mf.Manifest, overwrite: bool) -> mf.Manifest:
    damaged = False
    try:
        existing = mf.load(loc)
    except SynthgenError:
        if not overwrite:
            raise
        existing, damaged = None, True
    if existing is None:
        # Without a manifest, README.md or data/ are someone else's (synthgen writes its manifest first); with
        # a damaged one that --overwrite replaces, synthgen's names are taken as its own.
        foreign = _foreign_files(loc, OUR_FILES if damaged else ())
        if foreign:
            raise SynthgenError(f"--out {loc.uri}: holds files that are not a synthgen dataset "
                                f"({', '.join(foreign[:3])}); choose an empty or new directory")
        if overwrite:
            _delete_dataset(loc)
    elif overwrite or mf.identity_diff(existing, fresh):
        if not overwrite:
            diff = "; ".join(mf.identity_diff(existing, fresh))
            raise SynthgenError(f"--out {loc.uri}: holds a dataset made with other settings ({diff}); "
                                "use another --out, or --overwrite to replace it")
        _delete_dataset(loc)
    else:
        fresh.shards = {j: r for j, r in existing.shards.items()
                        if not check_shard(loc, r, fresh.job["format"], deep=False)}
        fresh.status = existing.status if len(fresh.shards) == len(existing.shards) else "in_progress"
    _remove_stale_temporaries(loc)
    try:
        mf.save(loc, fresh)
    except OSError as err:
        raise SynthgenError(f"--out {loc.uri}: cannot write there ({err.strerror or storage.error_line(err)})"
                            ) from None
    return fresh


def _foreign_files(loc: storage.Location, ours: tuple[str, ...]) -> list[str]:
    """Names at the top of ``loc`` that are neither in ``ours`` nor synthgen temporaries."""
    if not storage.exists(loc, loc.root):
        return []
    if not storage.is_dir(loc, loc.root):
        return [loc.root]
    names = [p.rsplit("/", 1)[-1] for p in storage.list_files(loc, loc.root)] + _subdirs(loc)
    return [n for n in names if n not in ours and not n.startswith(storage.TMP_PREFIX)]


def _subdirs(loc: storage.Location) -> list[str]:
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.root))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]


def _is_ours(name: str) -> bool:
    return name in OUR_FILES or name.startswith(storage.TMP_PREFIX)


def _delete_dataset(loc: storage.Location) -> None:
    if not storage.exists(loc, loc.root):
        return
    names = [p.rsplit("/", 1)[-1] for p in storage.list_files(loc, loc.root)] + _subdirs(loc)
    # the manifest goes last: a deletion cut short still leaves a dataset that --overwrite may replace
    for name in sorted(names, key=lambda n: n == mf.MANIFEST_FILE):
        if _is_ours(name):
            storage.remove(loc, loc.join(name))


def _remove_stale_temporaries(loc: storage.Location) -> None:
    if loc.is_local and os.path.isdir(loc.root):
        for dirpath, _, files in os.walk(loc.root):
            for name in files:
                if name.startswith(storage.TMP_PREFIX):
                    os.unlink(os.path.join(dirpath, name))
    elif not loc.is_local:  # a killed upload's temporary sits where shards go; images/ is never listed
        for folder in (loc.root, loc.join("data"), loc.join("meta")):
            for path in storage.list_files(loc, folder):
                if path.rsplit("/", 1)[-1].startswith(storage.TMP_PREFIX):
                    storage.remove(loc, path)
