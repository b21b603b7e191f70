"""The dataset directory before a run: new, resumed, or replaced on request; foreign files never touched.
While a run writes there it holds a lock file, so a second run on the same directory is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

import pyarrow.fs as pafs

from synthgen import storage
from synthgen.dataset import manifest as mf
from synthgen.dataset.card import EVAL_FILE, write_card
from synthgen.dataset.format import FILE_FORMATS, is_written_file
from synthgen.dataset.verify import check_shard, folder_files
from synthgen.dataset.writers import write_png_metadata
from synthgen.errors import SynthgenError

OUR_FILES = ("manifest.json", "README.md", "metadata.parquet", "data", "images", "meta", EVAL_FILE)
LOCK_FILE = ".synthgen-lock"  # not in OUR_FILES: --overwrite must not delete the lock of the run doing it


@contextlib.contextmanager
def output_lock(loc: storage.Location) -> Iterator[None]:
    """Hold ``DIR/.synthgen-lock`` while a run writes to ``loc`` (local and shared filesystems).

    Two runs on one directory would each delete the other's temporaries at start and keep a manifest
    that misses the other's shards. A lock left by a run that was killed on this host is taken over;
    one from another host names the file to delete. Object stores have no exclusive create: unlocked.
    """
    if not loc.is_local or (os.path.exists(loc.root) and not os.path.isdir(loc.root)):
        yield  # plan_output reports a path that is a file
        return
    path = os.path.join(loc.root, LOCK_FILE)
    made_root = not os.path.exists(loc.root)
    try:
        os.makedirs(loc.root, exist_ok=True)
        _acquire(path, loc.uri)
    except OSError as err:
        raise SynthgenError(f"--out {loc.uri}: cannot write there ({err.strerror or err})") from None
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if made_root:  # a run that wrote nothing leaves no empty directory behind
            with contextlib.suppress(OSError):
                os.rmdir(loc.root)


def _acquire(path: str, uri: str) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and _still_running(holder, me["host"]):
                raise SynthgenError(
                    f"--out {uri}: another synthgen run is writing there (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('since')}); wait for it, or if it is gone, "
                    f"delete {path}") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise SynthgenError(f"--out {uri}: could not take {path}; is another synthgen run starting there?")


def _read_lock(path: str) -> dict | None:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):  # gone meanwhile, or empty: its writer died before writing it
        return None


def _still_running(holder: dict, host: str) -> bool:
    """Whether the lock's run may still be alive: surely so on another host, where it cannot be checked."""
    if holder.get("host") != host:
        return True
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):  # another user's process, or no pid
        pass
    return True


def plan_output(loc: storage.Location, fresh: mf.Manifest, overwrite: bool) -> tuple[mf.Manifest, bool]:
    """Decide, without writing anything, what a run does with ``loc``: start a new dataset, resume the same
    one, or (with ``overwrite``) replace one. Refuses other settings without ``overwrite``, and files synthgen
    did not write in any case.

    Returns:
        The manifest the run continues from, and whether :func:`write_output` must delete a dataset first.
    """
    try:
        return _plan(loc, fresh, overwrite)
    except OSError as err:  # object stores: no such bucket, credentials refused, endpoint unreachable
        raise SynthgenError(f"--out {loc.uri}: cannot use it ({storage.error_line(err)})") from None


def write_output(loc: storage.Location, manifest: mf.Manifest, replace: bool) -> None:
    """Carry out :func:`plan_output`'s decision: delete the dataset it replaces, clear temporaries of killed
    runs, and save the manifest. Called once the cluster has taken the job, so a refused run changes nothing."""
    try:
        if replace:
            _delete_dataset(loc)
        _remove_stale_temporaries(loc)
        mf.save(loc, manifest)
    except OSError as err:
        raise SynthgenError(f"--out {loc.uri}: cannot write there ({err.strerror or storage.error_line(err)})"
                            ) from None


def finish_output(loc: storage.Location, manifest: mf.Manifest) -> None:
    """Mark a dataset whose shards are all committed complete: the file tree's metadata, card, manifest."""
    if len(manifest.shards) < manifest.num_shards:
        raise SynthgenError(f"{len(manifest.shards)} of {manifest.num_shards} shards done; "
                            "re-run the same command to finish")
    if manifest.job["format"] in FILE_FORMATS:
        write_png_metadata(loc, [manifest.shards[j].file for j in sorted(manifest.shards)],
                           tuple(manifest.model.get("class_names") or ()), manifest.job["format"])
    manifest.status = "complete"
    write_card(loc, manifest)
    mf.save(loc, manifest)
    # an actor killed mid-shard during this run left its temporary; no actor writes once every shard is in
    _remove_stale_temporaries(loc)


def _plan(loc: storage.Location, fresh: mf.Manifest, overwrite: bool) -> tuple[mf.Manifest, bool]:
    damaged = False
    try:
        existing = mf.load(loc)
    except SynthgenError:
        if not overwrite:
            raise
        existing, damaged = None, True
    if existing is not None and not overwrite:
        mf.follow_unmarked(existing, fresh)
    if existing is None:
        # Without a manifest, README.md or data/ are someone else's (synthgen writes its manifest first); with
        # a damaged one that --overwrite replaces, synthgen's names are taken as its own.
        foreign = _foreign_files(loc, OUR_FILES if damaged else ())
        if foreign:
            raise SynthgenError(f"--out {loc.uri}: holds files that are not a synthgen dataset "
                                f"({', '.join(foreign[:3])}); choose an empty or new directory")
    elif not overwrite and mf.identity_diff(existing, fresh):
        diff = "; ".join(mf.identity_diff(existing, fresh))
        raise SynthgenError(f"--out {loc.uri}: holds a dataset made with other settings ({diff}); "
                            "use another --out, or --overwrite to replace it")
    elif not overwrite:
        fresh.shards = {j: r for j, r in existing.shards.items()
                        if not check_shard(loc, r, fresh.job["format"], deep=False)}
        if mf.MADE_ON in existing.job:  # the engine checks this run's actors against it once they start
            fresh.job[mf.MADE_ON] = existing.job[mf.MADE_ON]
        fresh.status = existing.status if len(fresh.shards) == len(existing.shards) else "in_progress"
        return fresh, False
    replace = overwrite and storage.exists(loc, loc.root)
    if replace:
        foreign = _foreign_inner_files(loc)
        if foreign:
            raise SynthgenError(f"--out {loc.uri}: --overwrite would delete files synthgen did not write "
                                f"({', '.join(foreign[:3])}); move them out of the dataset first")
    return fresh, replace


def _foreign_files(loc: storage.Location, ours: tuple[str, ...]) -> list[str]:
    """Names at the top of ``loc`` that are neither in ``ours`` nor synthgen temporaries."""
    if not storage.exists(loc, loc.root):
        return []
    if not storage.is_dir(loc, loc.root):
        return [loc.root]
    names = [p.rsplit("/", 1)[-1] for p in storage.list_files(loc, loc.root)] + _subdirs(loc)
    return [n for n in names if n not in ours and n != LOCK_FILE and not n.startswith(storage.TMP_PREFIX)]


def _subdirs(loc: storage.Location) -> list[str]:
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.root))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]


def _foreign_inner_files(loc: storage.Location) -> list[str]:
    """Files under data/, meta/ and images/ (relative to the root) that no synthgen run writes there: --overwrite
    deletes those folders, and refuses rather than delete a file of the user's with them."""
    return [rel for rel in folder_files(loc)
            if not is_written_file(rel) and not rel.rsplit("/", 1)[-1].startswith(storage.TMP_PREFIX)]


def _is_ours(name: str) -> bool:
    return name in OUR_FILES or name.startswith(storage.TMP_PREFIX)


def _delete_dataset(loc: storage.Location) -> None:
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
