"""Ctrl-C (SIGINT) or SIGTERM on a running `synthgen run`: a prompt exit, committed shards kept, a clean resume."""

import json
import signal
import subprocess
import sys
import time

import pytest
from gated_arch import gated_checkpoint, wait_until_held

from synthgen.dataset.verify import verify_dataset


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_quickly_and_the_rerun_completes(stop, tmp_path, tiny_checkpoint, ray_head):
    # an actor holds its 8th forward pass at the gate, so the run is mid-way, with a shard of it unfinished,
    # whenever the signal comes
    model, gate = gated_checkpoint(tiny_checkpoint, tmp_path, stop_at=8)
    (gate / "armed").touch()
    out = tmp_path / "ds"
    args = [sys.executable, "-m", "synthgen", "run", "--count", "1200", "--shard-size", "100", "--batch-size",
            "64", "--model", str(model), "--allow-custom-arch", "--out", str(out), "--address", ray_head,
            "--gpus", "0", "--workers", "1", "--no-progress"]
    # as a foreground process gets it: a shell running the test suite in the background would pass SIGINT
    # down ignored, and Python keeps an inherited SIG_IGN
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until_held(gate, lambda: driver.poll() is None)
        manifest = out / "manifest.json"
        while not manifest.exists() or not json.loads(manifest.read_text())["shards"]:
            assert driver.poll() is None, f"the run ended while an actor was held: {driver.communicate()}"
            time.sleep(0.05)
        started = time.time()
        driver.send_signal(stop)
        _, err = driver.communicate(timeout=60)
    finally:
        (gate / "release").touch()
    assert driver.returncode == 128 + stop and time.time() - started < 30
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "SIGTERM received" not in err  # Ray's crash handler's stack dump
    kept = json.loads(manifest.read_text())["shards"]
    assert 0 < len(kept) < 12
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert verify_dataset(str(out)).ok
    assert f"{1200 - sum(s['rows'] for s in kept)} new images" in again.stdout
