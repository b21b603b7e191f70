"""The prepared GPU check: raw forward and the actor's body on one CUDA device, written as JSON.

Ray's wheel (79 MB) is over what the lent GPU machine can carry (64 MiB a call), so this measures what each
GPU actor runs, without Ray: ``ShardGenerator`` (noise, the model, PNG framing, Parquet shards) with its
lanes sharing the device, next to the raw forward (noise made beforehand, the model and the uint8 copy back,
nothing else) for each precision. The CUDA tests (``pytest -m gpu``) run before it in the same call.

On the device machine (docs/benchmarks.md, "GPU", has the whole ``run`` command):

    python3 bench/gpu_check.py --out $OUT/gpu.json

Here, as a smoke test of the script itself: ``python bench/gpu_check.py --device cpu --count 2000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # synthgen, uninstalled

from synthgen import __version__  # noqa: E402
from synthgen.checkpoint import DEFAULT_MODEL, inspect_checkpoint, load_checkpoint  # noqa: E402
from synthgen.inference import prepare_model  # noqa: E402
from synthgen.plan import image_seeds, parse_label_plan, plan_shards  # noqa: E402
from synthgen.rng import normal_from_seeds  # noqa: E402
from synthgen.sampling import AUTOCAST_DTYPES, make_deterministic, to_uint8  # noqa: E402
from synthgen.worker import ShardGenerator  # noqa: E402
from synthgen.worker_config import WorkerConfig  # noqa: E402
from synthgen.writers import Layout  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_rate(model, latent_dim: int, classes: int, device: str, batch: int, precision: str, count: int) -> float:
    """Images/s of the forward and the uint8 copy back alone, on noise made once beforehand."""
    z = torch.from_numpy(normal_from_seeds(image_seeds(0, np.arange(batch)), latent_dim)).to(device)  # (B, latent)
    y = (torch.arange(batch) % classes).to(device) if classes else None
    dtype = AUTOCAST_DTYPES[precision]
    passes = max(1, count // batch)
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                                                enabled=dtype is not None):
        to_uint8(model(z, y))  # warm-up: kernel selection, outside the timing
        sync(device)
        t0 = time.perf_counter()
        for _ in range(passes):
            to_uint8(model(z, y))  # (B, H, W, C) on the host
        sync(device)
    return passes * batch / (time.perf_counter() - t0)


def actor_rate(model_ref: str, device: str, precision: str, count: int, shard_size: int, lanes: int,
               batch: int | None) -> dict:
    """Images/s of ShardGenerator writing Parquet shards to a temporary folder, two shards at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix="synthgen-gpu-") as out:
        ckpt, fingerprint = inspect_checkpoint(model_ref)  # the engine's settings: Parquet, PNG, balanced labels
        c, h, w = ckpt.image_shape
        layout = Layout("parquet", tuple(ckpt.class_names), encoding="png", image_shape=(h, w, c))
        config = WorkerConfig(model_ref, fingerprint, out, layout, seed=0,
                              labels=parse_label_plan(None, ckpt.class_names).to_json(), batch_size=batch,
                              precision=precision, device=device, threads=lanes)
        generator = ShardGenerator(config)  # loads the model and warms up, outside the timing
        specs = plan_shards(count, shard_size)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # as the engine hands each actor two shards at once
            records = list(pool.map(generator, specs))
        seconds = time.perf_counter() - t0
        size = sum(r.bytes for r in records)
    return {"images_per_second": count / seconds, "seconds": round(seconds, 2), "bytes": size,
            "batch_size": generator.batch_size, "lanes": generator.lanes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--count", type=int, default=200_000, help="images per actor measurement")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 8192, 32768], help="raw forward rows")
    parser.add_argument("--lanes", type=int, nargs="+", default=[4, 8, 15])
    parser.add_argument("--out", default=None, help="JSON file for the results (default: stdout only)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: torch sees no CUDA device", file=sys.stderr)
        return 1
    precisions = ["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    make_deterministic(args.device)
    ckpt = load_checkpoint(args.model, device=args.device)
    model = prepare_model(ckpt.model)
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "synthgen": __version__, "cpus": len(os.sched_getaffinity(0)), "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
           "model": args.model}
    results: list[dict] = []

    def report(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)

    for precision in precisions:
        for batch in args.batches:
            rate = raw_rate(model, ckpt.config.latent_dim, ckpt.config.num_classes, args.device, batch, precision,
                            max(args.count, 4 * batch))
            report({"what": "raw forward", "precision": precision, "batch": batch, "images_per_second": round(rate)})
    model_ref = args.model
    for precision in precisions:
        for lanes in args.lanes:
            row = actor_rate(model_ref, args.device, precision, args.count, args.shard_size, lanes, None)
            report({"what": "actor body (no Ray)", "precision": precision, **row,
                    "images_per_second": round(row["images_per_second"])})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
