"""synthgen.dataset.capacity: a job that cannot fit on its disk stops at its first shard, keeping what it made."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthgen import storage
from synthgen.cli import app
from synthgen.dataset import capacity
from synthgen.dataset.manifest import load

runner = CliRunner()


def run(model: str, out: Path, count: int, *extra: str):
    result = runner.invoke(app, ["run", "--count", str(count), "--shard-size", "100", "--model", model,
                                 "--out", str(out), "--gpus", "0", "--workers", "1", "--no-progress", *extra])
    assert "Traceback" not in result.output, result.output
    return result


def mount_tmpfs(where: Path, options: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("fmt, small, why", [
    ("parquet", "size=1m", r"need about [\d.]+ MB \([\d,]+ B each\), and its filesystem has [\d.]+ KB free"),
    ("png", "size=64m,nr_inodes=300", r"need 2,\d00 files, and its filesystem has room for \d+ more \(inodes\)"),
])
def test_a_job_too_large_for_its_disk_stops_early_and_resumes(fmt, small, why, tmp_path, tiny_checkpoint,
                                                              ray_local):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mount_tmpfs(disk, small):  # a real small filesystem
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        stopped = run(tiny_checkpoint, disk / "ds", 3000, "--format", fmt)
        assert stopped.exit_code == 1 and len(stopped.output.splitlines()) == 1
        assert stopped.output.startswith("error: --count 3000: the ")
        assert re.search(why, stopped.output) and "made so far are kept" in stopped.output
        kept = load(storage.locate(disk / "ds"))
        assert kept.status == "in_progress" and 0 < kept.rows_done() <= 200  # stopped at the first shards
        assert mount_tmpfs(disk, "remount,size=64m,nr_inodes=10000")  # space freed
        assert run(tiny_checkpoint, disk / "ds", 3000, "--format", fmt).exit_code == 0
        assert runner.invoke(app, ["verify", str(disk / "ds")]).exit_code == 0
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # an actor may still hold a file there


def test_the_check_uses_the_disk_cost_of_an_image(tiny_checkpoint, tmp_path, ray_local, monkeypatch):
    assert run(tiny_checkpoint, tmp_path / "tree", 100, "--format", "png").exit_code == 0
    loc = storage.locate(tmp_path / "tree")
    check = capacity.SpaceCheck(loc, load(loc))
    monkeypatch.setattr(capacity, "free_space", lambda path: capacity.FreeSpace(10**12, 10**9))
    check(1_000_000)
    files = sorted((tmp_path / "tree" / "images").rglob("*.png"))
    blocks = sum(os.stat(f).st_blocks * 512 for f in files) / len(files)
    meta = os.stat(tmp_path / "tree" / "meta" / "shard-00000.parquet").st_size / 100
    assert check.bytes_per_image == pytest.approx(blocks + meta)  # whole blocks, not the PNGs' lengths
    assert check.bytes_per_image > sum(f.stat().st_size for f in files) / len(files)
    limit = math.ceil(check.bytes_per_image * 1000)  # a fractional cost per image rounds up
    monkeypatch.setattr(capacity, "free_space", lambda path: capacity.FreeSpace(limit, 10**9))
    check(1000)  # fits exactly
    with pytest.raises(capacity.SynthgenError, match="the 1,001 images still to make need about"):
        check(1001)


def test_nothing_is_checked_before_a_shard_lands(tmp_path, monkeypatch):
    from synthgen.dataset.manifest import Manifest

    monkeypatch.setattr(capacity, "free_space", lambda path: capacity.FreeSpace(0, 0))
    manifest = Manifest({"format": "parquet", "count": 10, "shard_size": 10}, {})
    capacity.SpaceCheck(storage.locate(tmp_path), manifest)(10)  # no cost per image known yet
