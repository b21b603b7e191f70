"""The actor's body without Ray: lanes, batch sizes, precisions and encodings never change a shard's bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthgen.checkpoint import inspect_checkpoint
from synthgen.dataset.format import Layout, raw_pixels
from synthgen.errors import SynthgenError
from synthgen.generate.actor import ShardGenerator, default_batch_size
from synthgen.generate.config import WorkerConfig, allocator_env
from synthgen.generate.plan import ShardSpec, parse_label_plan
from synthgen.generate.simulated_device import SimulatedDevice
from synthgen.imaging import decode_png


def worker(tmp_path, checkpoint, name, *, encoding="png", device="cpu", **kw) -> ShardGenerator:
    ckpt, fingerprint = inspect_checkpoint(checkpoint)
    layout = Layout("parquet", tuple(ckpt.class_names), encoding=encoding, image_shape=(28, 28, 1))
    labels = parse_label_plan(None, ckpt.class_names).to_json()
    config = WorkerConfig(checkpoint, fingerprint, str(tmp_path / name), layout, seed=5, labels=labels,
                          device=device, **kw)
    return ShardGenerator(config)


def shard_images(tmp_path, name) -> tuple[list[int], list]:
    table = pq.read_table(tmp_path / name / "data", columns=["index", "image"])
    column = table.column("image").combine_chunks()
    pixels = raw_pixels(column, table.schema.field("image"))
    images = list(pixels) if pixels is not None else [r["bytes"] for r in column.to_pylist()]
    return table.column("index").to_pylist(), images


SPEC = ShardSpec(shard_id=0, start=0, stop=1000)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_bytes_do_not_depend_on_lanes_or_batch_size(tmp_path, tiny_checkpoint, precision, encoding):
    digests = {}
    for name, kw in {"1lane-b256": dict(lanes=1, batch_size=256), "3lanes-b64": dict(lanes=3, batch_size=64),
                     "2lanes-b333": dict(lanes=2, batch_size=333)}.items():
        record = worker(tmp_path, tiny_checkpoint, name, encoding=encoding, precision=precision, **kw)(SPEC)
        assert record.rows == 1000
        indices, images = shard_images(tmp_path, name)
        assert indices == list(range(1000))
        digests[name] = hashlib.sha256(b"".join(im.tobytes() if encoding == "raw" else im
                                                for im in images)).hexdigest()
    assert len(set(digests.values())) == 1, digests


def test_raw_and_png_hold_the_same_pixels(tmp_path, tiny_checkpoint):
    worker(tmp_path, tiny_checkpoint, "png", lanes=2)(SPEC)
    worker(tmp_path, tiny_checkpoint, "raw", encoding="raw", lanes=1, batch_size=100)(SPEC)
    _, pngs = shard_images(tmp_path, "png")
    _, raws = shard_images(tmp_path, "raw")
    for png, raw in zip(pngs, raws):
        np.testing.assert_array_equal(decode_png(png), raw)


def test_lanes_run_concurrently(tmp_path, tiny_checkpoint):
    gen = worker(tmp_path, tiny_checkpoint, "lanes", lanes=2, batch_size=64)
    active, peak, lock = [0], [0], threading.Lock()
    real_device_stage = gen.device_stage

    def counting_device_stage(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real_device_stage(*args)
        finally:
            with lock:
                active[0] -= 1

    gen.device_stage = counting_device_stage
    gen(SPEC)
    assert peak[0] == 2  # on a CPU both lanes were inside the model at once


def test_host_work_of_one_lane_overlaps_the_device_slot_of_another(tmp_path, tiny_checkpoint):
    """On an exclusive device, a lane makes its noise while another holds the slot; the old order (noise
    inside the slot) never does. Counted from the order of events, not timed."""
    counts = {}
    for order in ("pipelined", "host in slot"):
        gen = worker(tmp_path, tiny_checkpoint, order, lanes=2, batch_size=64)
        device = SimulatedDevice(forward_s_per_row=0.05 / 64, host_in_slot=order != "pipelined")
        device.attach(gen)
        record = gen(ShardSpec(0, 0, 64 * 12))
        assert record.rows == 64 * 12 and device.passes == 12 and device.most_holders == 1
        counts[order] = device.host_stages_beside_slot
    assert counts["pipelined"] >= 6  # of 12 host stages, all but the first and last few overlap a slot
    assert counts["host in slot"] == 0


def test_non_finite_output_fails_the_shard_naming_the_image(tmp_path, overflowing_checkpoint):
    gen = worker(tmp_path, overflowing_checkpoint, "nan", lanes=2, batch_size=64, precision="fp16")
    first = int(np.flatnonzero(gen.label_plan.labels(np.arange(SPEC.stop)) == 1)[0])
    with pytest.raises(SynthgenError) as err:
        gen(SPEC)
    assert str(err.value).startswith(f"image {first}: the generator's output is not finite (inf or NaN) at "
                                     "precision fp16; use --precision bf16")
    assert not list((tmp_path / "nan").rglob("*.parquet"))  # nothing committed, no temporary file left


def test_default_batch_shrinks_for_larger_images():
    assert default_batch_size("cpu", (1, 28, 28)) == 256
    assert default_batch_size("cuda:0", (1, 28, 28)) == 2048
    assert default_batch_size("cpu", (3, 64, 64)) == 64
    assert default_batch_size("cuda", (3, 128, 128)) == 98


def test_overlapping_calls_write_the_same_shards(tmp_path, tiny_checkpoint):
    """The engine hands an actor two shards at once; they share the lanes and must not mix."""
    specs = [ShardSpec(0, 0, 500), ShardSpec(1, 500, 1000)]
    sequential = worker(tmp_path, tiny_checkpoint, "seq", lanes=2, batch_size=64)
    expected = [sequential(spec).sha256 for spec in specs]
    overlapping = worker(tmp_path, tiny_checkpoint, "par", lanes=2, batch_size=64)
    with ThreadPoolExecutor(2) as calls:
        records = list(calls.map(overlapping, specs))
    assert [r.sha256 for r in records] == expected


def test_allocator_env_reaches_arrow():
    """Read only at process start, so checked in a fresh process started with the actor's environment."""
    env = {**os.environ, **allocator_env(2)}
    code = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"
    assert allocator_env(2)["MALLOC_ARENA_MAX"] == "2" and allocator_env(0)["MALLOC_ARENA_MAX"] == "1"
