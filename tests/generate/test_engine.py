"""The engine on real Ray: identical bytes for any layout, resume after SIGKILL, lost actors, damaged shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gated_arch import gated_checkpoint, wait_until_held
from processes import free_ports

from synthgen.dataset.format import raw_pixels
from synthgen.dataset.verify import verify_dataset
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run
from synthgen.imaging import decode_png, encode_png, png_encoder_name, png_settings


def images_by_index(out: str) -> dict[int, bytes]:
    """Each image's PNG bytes without its text chunks: the synthetic marking names the model's fingerprint, which
    a gated copy of a model does not share (tests/dataset and tests/cli check the marking itself)."""
    table = pq.read_table(Path(out, "data"), columns=["index", "image"])
    pngs = (without_text_chunks(r["bytes"]) for r in table.column("image").to_pylist())
    return dict(zip(table.column("index").to_pylist(), pngs))


def without_text_chunks(png: bytes) -> bytes:
    kept, pos = [png[:8]], 8
    while pos < len(png):
        size = int.from_bytes(png[pos:pos + 4], "big")
        if png[pos + 4:pos + 8] not in (b"tEXt", b"iTXt"):
            kept.append(png[pos:pos + 12 + size])
        pos += 12 + size
    return b"".join(kept)


def shard_digests(out) -> dict[int, str]:
    manifest = json.loads(Path(out, "manifest.json").read_text())
    return {s["shard_id"]: s["sha256"] for s in manifest["shards"]}


def job(tmp_path, name, checkpoint, **kw) -> RunConfig:
    defaults = dict(count=1200, out=str(tmp_path / name), model=checkpoint, shard_size=400, seed=11,
                    progress=False, gpus=0, workers=1)
    return RunConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoint, ray_local):
    """An uninterrupted run that other tests compare their bytes with."""
    config = job(tmp_path_factory.mktemp("ref"), "ref", tiny_checkpoint)
    summary = run(config)
    assert summary.generated == 1200
    return config


def test_bytes_do_not_depend_on_shard_batch_or_worker_layout(tmp_path, tiny_checkpoint, reference):
    expected = images_by_index(reference.out)
    assert sorted(expected) == list(range(1200))
    for name, kw in {"shards": dict(shard_size=250, batch_size=100),
                     "workers": dict(shard_size=130, batch_size=64, workers=2)}.items():
        config = job(tmp_path, name, tiny_checkpoint, **kw)
        summary = run(config)
        assert summary.actors == kw.get("workers", 1)
        assert images_by_index(config.out) == expected, name
        assert verify_dataset(config.out).ok


def test_png_format_has_the_same_images(tmp_path, tiny_checkpoint, reference):
    config = job(tmp_path, "png", tiny_checkpoint, format="png")
    run(config)
    assert verify_dataset(config.out).ok
    meta = pq.read_table(Path(config.out, "metadata.parquet"))
    assert meta.num_rows == 1200
    expected = images_by_index(reference.out)
    for index, name in zip(meta.column("index").to_pylist()[::97], meta.column("file_name").to_pylist()[::97]):
        pixels = decode_png(expected[index])
        marked = Path(config.out, name).read_bytes()
        assert np.array_equal(decode_png(marked), pixels) and b"trainedAlgorithmicMedia" in marked
        stored = without_text_chunks(marked)  # as images_by_index gives the Parquet ones
        # a file is compressed on its own; inside Parquet the shard's zstd pages do that (stored PNGs)
        assert stored == encode_png(pixels, png_settings("png")) != expected[index]
        assert len(stored) < len(expected[index])
        idat = expected[index].index(b"IDAT") + 4  # zlib header (2 bytes), then the first deflate block
        assert (expected[index][idat + 2] >> 1) & 3 == 0  # BTYPE 00: a stored (uncompressed) block
    jobs = [json.loads(Path(c.out, "manifest.json").read_text())["job"] for c in (config, reference)]
    assert [j["png_encoder"] for j in jobs] == [png_encoder_name(png_settings(f)) for f in ("png", "parquet")]
    for c in (config, reference):  # the card's loading recipe names paths that exist in that layout
        card = Path(c.out, "README.md").read_text()
        named = set(re.findall(r'"DIR/([^"]+)"', card[card.index("## Load"):]))
        assert named and all(Path(c.out, p).exists() for p in named), (c.format, named)


def test_truncated_shard_is_caught_by_verify_and_redone_by_resume(tmp_path, tiny_checkpoint, reference):
    config = job(tmp_path, "trunc", tiny_checkpoint)
    run(config)
    shard = Path(config.out, "data", "shard-00001.parquet")
    shard.write_bytes(shard.read_bytes()[:1000])
    report = verify_dataset(config.out)
    assert not report.ok and any("shard-00001.parquet" in p for p in report.problems)
    summary = run(config)
    assert summary.generated == 400  # only the damaged shard was redone
    assert verify_dataset(config.out).ok
    assert shard_digests(config.out) == shard_digests(reference.out)


def test_an_actor_killed_mid_shard_is_replaced_and_every_index_written_once(tmp_path, tiny_checkpoint, reference):
    # The tiny model, gated: the first actor holds its 8th forward pass (after load, warm-up and a few shards'
    # passes) until it is killed there, so its shard cannot be committed before the kill. Labels are i mod K
    # and bytes do not depend on shard or batch sizes, so every image must equal the reference's.
    model, gate = gated_checkpoint(tiny_checkpoint, tmp_path, stop_at=8)
    (gate / "armed").touch()
    config = job(tmp_path, "killed", str(model), shard_size=100, batch_size=64, allow_import=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(config)))
    thread.start()
    try:
        victim = wait_until_held(gate, thread.is_alive)
        while not Path(config.out, "manifest.json").exists() or not shard_digests(config.out):
            assert thread.is_alive(), "the run ended while an actor was held"  # its other lane goes on
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        committed_before_the_kill = len(shard_digests(config.out))
    finally:
        (gate / "release").touch()
    thread.join(timeout=240)
    assert not thread.is_alive() and "summary" in result
    assert 0 < committed_before_the_kill < 12 and gone(victim)
    report = verify_dataset(config.out)
    assert report.ok and report.rows == 1200
    written = images_by_index(config.out)
    assert sorted(written) == list(range(1200)) and result["summary"].generated == 1200
    assert written == images_by_index(reference.out)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its raylet
    except psutil.NoSuchProcess:
        return True


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_sigkill_the_driver_then_rerun_gives_the_uninterrupted_bytes(tmp_path, tiny_checkpoint, ray_head,
                                                                       reference):
    # an actor holds its 8th forward pass at the gate, so the run is mid-way, with a shard of it unfinished,
    # when the driver is stopped and killed; labels are i mod K, so every image must be the reference's
    model, gate = gated_checkpoint(tiny_checkpoint, tmp_path, stop_at=8)
    (gate / "armed").touch()
    out = tmp_path / "sigkill"
    args = ["run", "--count", "1200", "--shard-size", "100", "--batch-size", "64", "--seed", "11",
            "--model", str(model), "--allow-custom-arch", "--out", str(out), "--address", ray_head, "--gpus", "0",
            "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "synthgen", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        wait_until_held(gate, lambda: driver.poll() is None)
        # the first committed shard saves the manifest at once (later ones at most once a second, and the
        # other lane may finish all of them within that second)
        while not (out / "manifest.json").exists() or not shard_digests(out):
            assert driver.poll() is None, "the run ended while an actor was held"  # its other lane goes on
            time.sleep(0.05)
        driver.send_signal(signal.SIGSTOP)  # alive, holding the directory's lock, handing out nothing more
        second = cli(*args)
        assert second.returncode == 1 and "another synthgen run is writing there" in second.stderr, second.stderr
        driver.send_signal(signal.SIGKILL)  # its lock stays behind; the re-run below takes it over
        driver.wait()
    finally:
        (gate / "release").touch()
    assert not verify_dataset(str(out)).ok  # incomplete, and says so
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert verify_dataset(str(out)).ok
    # shard sizes differ from the reference (100 vs 400), so compare image bytes per index
    written = images_by_index(str(out))
    assert sorted(written) == list(range(1200))
    assert written == images_by_index(reference.out)


@pytest.mark.slow
def test_more_gpus_than_declared_fail_fast(tmp_path, tiny_checkpoint, ray_head):
    # (a run on the declared GPUs, which torch cannot use here, is refused: tests/generate/test_device.py)
    started = time.time()
    refused = cli("run", "--count", "300", "--model", tiny_checkpoint, "--out", str(tmp_path / "three"),
                  "--address", ray_head, "--gpus", "3", "--no-progress", timeout=120)
    assert refused.returncode == 1 and time.time() - started < 60
    assert "error: --gpus 3: the cluster has 2 GPU(s)" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_weights_that_do_not_fit_their_config_are_one_line_from_the_actor(tmp_path, tiny_checkpoint, ray_head):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    config = json.loads((model / "config.json").read_text())
    config["image_shape"] = [3, 28, 28]  # the driver reads only the config; the actors find the mismatch
    (model / "config.json").write_text(json.dumps(config))
    refused = cli("run", "--count", "10", "--model", str(model), "--out", str(tmp_path / "never"),
                  "--address", ray_head, "--gpus", "0", "--no-progress", timeout=120)
    assert refused.returncode == 1
    assert refused.stderr == (f"error: an actor could not load the model: {model / 'model.safetensors'}: model "
                              "makes images of shape [1, 28, 28], config.json says [3, 28, 28]\n")
    assert "Traceback" not in refused.stdout  # no retries, so no retry reports from Ray
    assert not (tmp_path / "never").exists()


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path, tiny_checkpoint):
    started = time.time()
    refused = cli("run", "--count", "10", "--model", tiny_checkpoint, "--out", str(tmp_path / "never"),
                  "--address", f"127.0.0.1:{free_ports(1)[0]}", "--no-progress", timeout=120)
    assert refused.returncode == 1 and time.time() - started < 60  # Ray alone would retry without end
    assert re.fullmatch(r"error: cannot reach --address 127\.0\.0\.1:\d+: nothing answers at \S+ "
                        r"\(Connection refused\); is the cluster's head running .*\n", refused.stderr)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@pytest.mark.parametrize("last_cluster", ["dead", "alive"])
def test_without_an_address_the_last_ray_start_cluster_is_joined_only_if_it_answers(last_cluster, tmp_path,
                                                                                   tiny_checkpoint, ray_head):
    ray_tmp = Path(tempfile.mkdtemp(prefix="sg", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        # the file `ray start` leaves for a bare ray.init(): it outlives a cluster that was killed, and Ray
        # would wait for that one without end
        address = ray_head if last_cluster == "alive" else f"127.0.0.1:{free_ports(1)[0]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(address)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-m", "synthgen", "run", "--count", "200", "--shard-size", "100",
                               "--model", tiny_checkpoint, "--out", str(tmp_path / "ds"), "--no-progress"],
                              capture_output=True, text=True, timeout=300, env={**env, "RAY_TMPDIR": str(ray_tmp)})
        # only ray_head declares GPUs, which torch cannot use on this machine: joining it refuses the run
        joined = "holds GPU(s)" in done.stderr
        assert joined == (last_cluster == "alive"), done.stderr
        assert done.returncode == (1 if joined else 0), done.stderr
        assert joined or verify_dataset(str(tmp_path / "ds")).ok
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_raw_and_png_encodings_hold_the_same_pixels(tmp_path, tiny_checkpoint, ray_local, precision):

    png = job(tmp_path, "png", tiny_checkpoint, count=300, shard_size=100, precision=precision)
    raw = job(tmp_path, "raw", tiny_checkpoint, count=300, shard_size=100, precision=precision,
              encoding="raw", batch_size=100, workers=2)
    run(png)
    run(raw)
    assert verify_dataset(raw.out).ok
    table = pq.read_table(Path(raw.out, "data"), columns=["index", "image"])
    field = table.schema.field("image")  # one value of H*W*C bytes per row, the shape beside it
    assert field.type == pa.binary(28 * 28) and field.metadata == {b"shape": b"[28, 28, 1]"}
    pixels = raw_pixels(table.column("image"), field)  # (N, H, W, C)
    assert pixels.shape == (300, 28, 28, 1) and pixels.dtype == np.uint8
    stored = images_by_index(png.out)
    for k, index in enumerate(table.column("index").to_pylist()):
        np.testing.assert_array_equal(pixels[k], decode_png(stored[index]))



def test_the_progress_bar_moves_per_batch_not_per_shard(tmp_path, tiny_checkpoint, ray_local, monkeypatch):
    from tqdm import tqdm

    from synthgen.generate import engine
    from synthgen.generate.engine import pool

    updates: list[float] = []

    class CountingBar(tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(engine, "tqdm", CountingBar)
    monkeypatch.setattr(pool, "PROGRESS_POLL_S", 0.05)  # asked often, so a short run still shows steps
    config = job(tmp_path, "bar", tiny_checkpoint, count=8000, shard_size=8000, batch_size=64)
    run(config)
    moves = [n for n in updates if n > 0]
    assert sum(moves) == 8000 and len(moves) >= 3  # one shard, moved many times (once per shard before)
    assert len(shard_digests(config.out)) == 1


def test_non_finite_output_fails_the_run_in_one_line(tmp_path, overflowing_checkpoint, ray_local):
    from synthgen.errors import SynthgenError

    config = job(tmp_path, "nan", overflowing_checkpoint, count=300, shard_size=300, batch_size=64,
                 precision="fp16", labels="malignant=0.9,normal=0.1")
    from synthgen.generate.plan import LabelPlan, parse_label_plan

    plan = LabelPlan.from_json(parse_label_plan(config.labels, ["malignant", "normal"]).to_json())
    first = int(np.flatnonzero(plan.labels(np.arange(300)) == 1)[0])
    with pytest.raises(SynthgenError) as err:
        run(config)
    assert str(err.value).startswith(f"shard 0 failed: image {first}: the generator's output is not finite")
    assert "\n" not in str(err.value) and "precision fp16; use --precision bf16" in str(err.value)
    assert not list(Path(config.out, "data").glob("*.parquet"))
