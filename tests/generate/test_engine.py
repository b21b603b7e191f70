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

from synthgen.dataset.format import raw_pixels
from synthgen.dataset.verify import verify_dataset
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run, split_lanes
from synthgen.imaging import decode_png, encode_png, png_encoder_name, png_settings


def images_by_index(out: str) -> dict[int, bytes]:
    table = pq.read_table(Path(out, "data"), columns=["index", "image"])
    return dict(zip(table.column("index").to_pylist(), (r["bytes"] for r in table.column("image").to_pylist())))


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
        stored = Path(config.out, name).read_bytes()
        assert np.array_equal(decode_png(stored), pixels)
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


def test_a_killed_actor_is_replaced_and_every_index_written_once(tmp_path, tiny_checkpoint, reference):
    # 24k images so the kill lands mid-run on a fast host too; labels are i mod K, so the first 1,200 images
    # are the reference's
    config = job(tmp_path, "killed", tiny_checkpoint, count=24000, shard_size=100, batch_size=64)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(config)))
    thread.start()
    victim = _wait_for_actor_process(Path(config.out), thread)
    victim.send_signal(signal.SIGKILL)
    assert len(shard_digests(config.out)) < 240  # the kill landed mid-run (Ray retries on the restarted actor)
    thread.join(timeout=240)
    assert not thread.is_alive() and "summary" in result
    report = verify_dataset(config.out)
    assert report.ok and report.rows == 24000
    written = images_by_index(config.out)
    assert sorted(written) == list(range(24000))
    assert {i: written[i] for i in range(1200)} == images_by_index(reference.out)


def _wait_for_actor_process(out: Path, thread: threading.Thread) -> psutil.Process:
    deadline = time.time() + 120
    while time.time() < deadline and thread.is_alive():
        for proc in psutil.process_iter(["cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            if "ray::_RayShardGenerator" in title and (out / "manifest.json").exists():
                return proc
        time.sleep(0.05)
    raise AssertionError("no generation actor appeared")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_sigkill_the_driver_then_rerun_gives_the_uninterrupted_bytes(tmp_path, tiny_checkpoint, ray_head,
                                                                       reference):
    out = tmp_path / "sigkill"
    # 24k images so a fast host cannot finish between two looks at the manifest; labels are i mod K, so the
    # first 1,200 images are the reference's
    args = ["run", "--count", "24000", "--shard-size", "100", "--batch-size", "64", "--seed", "11",
            "--model", tiny_checkpoint, "--out", str(out), "--address", ray_head, "--gpus", "0",
            "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "synthgen", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        shards = shard_digests(out) if (out / "manifest.json").exists() else {}
        if len(shards) >= 2 or driver.poll() is not None:
            break
        time.sleep(0.01)
    assert driver.poll() is None, "the run finished before it could be interrupted"
    driver.send_signal(signal.SIGSTOP)  # alive, holding the directory's lock, handing out nothing more
    second = cli(*args)
    assert second.returncode == 1 and "another synthgen run is writing there" in second.stderr, second.stderr
    driver.send_signal(signal.SIGKILL)  # its lock stays behind; the re-run below takes it over
    driver.wait()
    assert not verify_dataset(str(out)).ok  # incomplete, and says so
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert verify_dataset(str(out)).ok
    # shard sizes differ from the reference (100 vs 400), so compare image bytes per index
    written = images_by_index(str(out))
    assert sorted(written) == list(range(24000))
    assert {i: written[i] for i in range(1200)} == images_by_index(reference.out)


@pytest.mark.slow
def test_declared_gpus_get_one_actor_each_and_too_many_fail_fast(tmp_path, tiny_checkpoint, ray_head):
    out = tmp_path / "gpus"
    done = cli("run", "--count", "300", "--shard-size", "100", "--model", tiny_checkpoint, "--out", str(out),
               "--address", ray_head, "--gpus", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    either_order = done.stdout.replace("[[1], [0]]", "[[0], [1]]")
    assert "ran 2 actor(s) x 1 lane(s) on cpu holding GPUs [[0], [1]]" in either_order
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
    from conftest import _free_ports

    started = time.time()
    refused = cli("run", "--count", "10", "--model", tiny_checkpoint, "--out", str(tmp_path / "never"),
                  "--address", f"127.0.0.1:{_free_ports(1)[0]}", "--no-progress", timeout=120)
    assert refused.returncode == 1 and time.time() - started < 60  # Ray alone would retry without end
    assert re.fullmatch(r"error: cannot reach --address 127\.0\.0\.1:\d+: nothing answers at \S+ "
                        r"\(Connection refused\); is the cluster's head running .*\n", refused.stderr)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@pytest.mark.parametrize("last_cluster", ["dead", "alive"])
def test_without_an_address_the_last_ray_start_cluster_is_joined_only_if_it_answers(last_cluster, tmp_path,
                                                                                   tiny_checkpoint, ray_head):
    from conftest import _free_ports

    ray_tmp = Path(tempfile.mkdtemp(prefix="sg", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        # the file `ray start` leaves for a bare ray.init(): it outlives a cluster that was killed, and Ray
        # would wait for that one without end
        address = ray_head if last_cluster == "alive" else f"127.0.0.1:{_free_ports(1)[0]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(address)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-m", "synthgen", "run", "--count", "200", "--shard-size", "100",
                               "--model", tiny_checkpoint, "--out", str(tmp_path / "ds"), "--no-progress"],
                              capture_output=True, text=True, timeout=300, env={**env, "RAY_TMPDIR": str(ray_tmp)})
        assert done.returncode == 0, done.stderr
        assert verify_dataset(str(tmp_path / "ds")).ok
        joined = "holding GPUs" in done.stdout  # only ray_head declares GPUs; this machine has none
        assert joined == (last_cluster == "alive"), done.stdout
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


@pytest.mark.parametrize("cpus, lanes", [(1, [1]), (2, [2]), (8, [8]), (9, [5, 4]), (12, [6, 6]), (16, [8, 8]),
                                         (17, [6, 6, 5])])
def test_a_node_becomes_as_few_actors_as_hold_8_lanes_each(cpus, lanes):
    assert split_lanes(cpus) == lanes


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
