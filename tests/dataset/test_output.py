"""The output directory's lock: one run at a time, stale locks taken over, other hosts' locks respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from synthgen import storage
from synthgen.dataset.output import LOCK_FILE, output_lock
from synthgen.errors import SynthgenError


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_lock_is_held_during_a_run_and_refuses_a_second(tmp_path):
    loc = storage.locate(tmp_path / "ds")
    with output_lock(loc):
        holder = json.loads((tmp_path / "ds" / LOCK_FILE).read_text())
        with pytest.raises(SynthgenError, match=rf"another synthgen run is writing there \(pid {holder['pid']} on"):
            with output_lock(loc):
                pass
    assert not (tmp_path / "ds" / LOCK_FILE).exists()


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    import socket

    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": "x"}))
    with output_lock(storage.locate(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK_FILE).write_text("")  # its writer died before writing it
    with output_lock(storage.locate(tmp_path)):
        pass


def test_a_lock_from_another_host_names_the_file_to_delete(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "other-node", "pid": 1, "since": "then"}))
    with pytest.raises(SynthgenError, match=rf"pid 1 on other-node, since then\); wait for it, or if it is gone, "
                                            rf"delete {tmp_path / LOCK_FILE}"):
        with output_lock(storage.locate(tmp_path)):
            pass
    assert (tmp_path / LOCK_FILE).exists()  # not ours to remove


def test_a_lock_leaves_no_empty_directory_it_made(tmp_path):
    with output_lock(storage.locate(tmp_path / "new")):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    with output_lock(storage.locate(tmp_path / "written")):
        (tmp_path / "written" / "manifest.json").write_text("{}")
    assert (tmp_path / "written" / "manifest.json").exists()
    (tmp_path / "mine").mkdir()
    with output_lock(storage.locate(tmp_path / "mine")):
        pass
    assert (tmp_path / "mine").is_dir()  # the user's own empty directory stays

