"""The prepared GPU check: raw forward and the actor's body on one CUDA device, written as JSON.

Ray's wheel (79 MB) is over what the lent GPU machine can carry (64 MiB a call), so this measures what each
GPU actor runs, without Ray: ``ShardGenerator`` (noise, the model, PNG framing, Parquet shards) with its
lanes sharing the device, next to the raw forward (noise made beforehand, the model and the uint8 copy back,
nothing else) for each precision. The CUDA tests (``pytest -m gpu``) run before it in the same call.

On the device machine (docs/benchmarks.md, "GPU", has the whole ``run`` command):

    python3 bench/gpu_check.py --out $OUT/gpu.json

Here, as a smoke test of the script itself:
``python bench/gpu_check.py --device cpu --count 4000 --shard-size 1000 --batches 256 --lanes 1 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # synthgen, uninstalled

from stages import actor_rate  # noqa: E402  (bench/ is this script's directory, so first on sys.path)
from throughput import raw_rate  # noqa: E402

from synthgen import __version__  # noqa: E402
from synthgen.checkpoint import DEFAULT_MODEL, load_checkpoint, resolve  # noqa: E402
from synthgen.generate.inference_form import prepare_model  # noqa: E402
from synthgen.generate.sampling import make_deterministic  # noqa: E402


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
    model_dir = str(resolve(args.model))
    make_deterministic(args.device)
    ckpt = load_checkpoint(model_dir, device=args.device)
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
            rate = raw_rate(model, ckpt.config.latent_dim, ckpt.config.num_classes, max(args.count, 4 * batch),
                            batch, precision, lanes=1, device=args.device)
            report({"what": "raw forward", "precision": precision, "batch": batch, "images_per_second": round(rate)})
    for precision in precisions:
        for lanes in args.lanes:
            rate = actor_rate(model_dir, args.count, device=args.device, lanes=lanes, precision=precision,
                              shard=args.shard_size)
            report({"what": "actor body (no Ray)", "precision": precision, "lanes": lanes,
                    "images_per_second": round(rate)})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
