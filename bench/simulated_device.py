"""The GPU actor's pipelining on a simulated device: busy fraction and images/s against lanes, old order vs new.

The real actor body (``ShardGenerator``: lanes, device slot, noise, PNG framing, Parquet shards written to a
temporary directory, two shards in flight as the engine hands them out) with the model's forward replaced by
a sleep (``synthgen.generate.simulated_device``), one slot as on a GPU. First the host's per-batch work H is
measured (one lane, a forward of zero length); then the stand-in forward is set to ``fraction * H`` per batch
and each lane count runs with the host stage outside the slot (``new``) and inside it (``old``, the order
before the pipelining). Busy fraction = the stand-in forward's total time / wall time. Configurations run
round-robin over ``--repeats``; the table shows medians.

    python bench/simulated_device.py --fractions 0.2 0.5 --lanes 1 2 3 4 6 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # synthgen, uninstalled

from synthgen.checkpoint import inspect_checkpoint, resolve  # noqa: E402
from synthgen.dataset.format import Layout  # noqa: E402
from synthgen.generate.actor import ShardGenerator  # noqa: E402
from synthgen.generate.config import WorkerConfig, allocator_env  # noqa: E402
from synthgen.generate.plan import ShardSpec, parse_label_plan  # noqa: E402
from synthgen.generate.simulated_device import SimulatedDevice  # noqa: E402

ORDERS = {"new": False, "old": True}  # host_in_slot


def measure_actor(model_dir: str, count: int, batch: int, lanes: int, *, forward_s: float | None = None,
                  host_in_slot: bool = False, device: str = "cpu", precision: str = "fp32",
                  shard: int | None = None) -> dict:
    """``count`` images through a ShardGenerator: on ``device`` when ``forward_s`` is None, else on a
    SimulatedDevice whose forward takes ``forward_s`` per ``batch`` rows. Returns images/s, the busy
    fraction (the stand-in's forward time, or the real slot's held time, over wall time) and, for one lane,
    the host's seconds per batch."""
    ckpt, fingerprint = inspect_checkpoint(model_dir)
    channels, height, width = ckpt.image_shape
    shard = shard or 5 * batch
    out = tempfile.mkdtemp(prefix="synthgen-simulated-")
    layout = Layout("parquet", tuple(ckpt.class_names), image_shape=(height, width, channels))
    config = WorkerConfig(model_dir, fingerprint, out, layout, seed=5, device=device, lanes=lanes,
                          batch_size=batch, precision=precision,
                          labels=parse_label_plan(None, ckpt.class_names).to_json())
    generator = ShardGenerator(config)
    stand_in = None if forward_s is None else SimulatedDevice(forward_s / batch, host_in_slot=host_in_slot)
    if stand_in is not None:
        stand_in.attach(generator)
    generator.slot_seconds = 0.0  # not the warm-up pass
    specs = [ShardSpec(i, i * shard, (i + 1) * shard) for i in range(max(1, count // shard))]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as calls:  # two shards in flight, as the engine hands them out
            list(calls.map(generator, specs))
        wall = time.perf_counter() - start
    finally:
        generator.pool.shutdown()
        shutil.rmtree(out)
    busy = stand_in.busy_seconds if stand_in is not None else generator.slot_seconds
    passes = len(specs) * -(-shard // batch)
    return {"images_per_second": len(specs) * shard / wall, "busy": busy / wall,
            "host_s_per_batch": (wall - busy) / passes if lanes == 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--count", type=int, default=61_440, help="images per measurement")
    parser.add_argument("--batch", type=int, default=2048, help="rows per pass (the GPU default)")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5],
                        help="stand-in forward as a fraction of the host's per-batch work")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the runs here")
    args = parser.parse_args()
    wanted = allocator_env(max(args.lanes))
    if any(os.environ.get(k) != v for k, v in wanted.items()):  # glibc reads them only at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    model = str(resolve(args.model))
    host = [measure_actor(model, args.count // 2, args.batch, 1, forward_s=0.0)["host_s_per_batch"]
            for _ in range(3)]
    host_s = float(np.median(host))
    print(f"host work per {args.batch}-row batch, one lane: {host_s * 1e3:.1f} ms "
          f"(runs {', '.join(f'{h * 1e3:.1f}' for h in host)})", flush=True)
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):
        for fraction in args.fractions:
            for order, in_slot in ORDERS.items():
                for lanes in args.lanes:
                    row = measure_actor(model, args.count, args.batch, lanes, forward_s=fraction * host_s,
                                        host_in_slot=in_slot)
                    runs.setdefault((fraction, order, lanes), []).append(row)
    print("| forward / host work | order | lanes | images/s | busy fraction | device limit images/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (fraction, order, lanes), rows in runs.items():
        rate = np.median([r["images_per_second"] for r in rows])
        busy = np.median([r["busy"] for r in rows])
        print(f"| {fraction:.1f} | {order} | {lanes} | {rate:,.0f} | {busy:.2f} | "
              f"{args.batch / (fraction * host_s):,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host_s_per_batch": host, "cpus": len(os.sched_getaffinity(0)),
                       "python": platform.python_version(), "batch": args.batch, "count": args.count,
                       "runs": [{"fraction": k[0], "order": k[1], "lanes": k[2], "runs": v} for k, v in runs.items()]},
                      f, indent=1)


if __name__ == "__main__":
    main()
