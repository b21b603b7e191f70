"""Generation and training at 28, 128 and 256 px: images/s and peak memory, to set --batch-size defaults.

Each measurement runs in a fresh process (so peaks do not add up) with the actors' allocator settings:

  generate  the actor's body (``ShardGenerator``, no Ray) on two 1-thread lanes writing one Parquet shard of
            marked PNGs, at each --batch-size given (``default`` = what ``synthgen run`` picks);
  train     DCGAN optimiser steps (generator + critic) on random pixels at each batch size.

The models are untrained DCGANs of the default width (128) with two classes: speed and memory depend on the
architecture and the image size, not on what the weights learned. Peak memory is the process's maximum RSS
(torch, the model and the batches).

    python bench/sizes.py --sizes 28,128,256 --json docs/benchmarks-sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from synthgen.checkpoint import (
    CheckpointConfig,
    inspect_checkpoint,
    pixel_format,
    save_checkpoint,
)
from synthgen.generate.actor import ShardGenerator
from synthgen.generate.config import WorkerConfig, allocator_env
from synthgen.generate.plan import ShardSpec, parse_label_plan
from synthgen.models import DCGANConfig, DCGANGenerator, config_to_dict

LANES = 2


def make_model(out: str, size: int) -> None:
    torch.manual_seed(0)
    config = DCGANConfig(latent_dim=100, image_size=size, channels=1, num_classes=2, width=128)
    save_checkpoint(out, DCGANGenerator(config).eval(), CheckpointConfig(
        arch="dcgan", model_config=config_to_dict(config), image_shape=[1, size, size], latent_dim=100,
        class_names=["a", "b"], training={"note": "untrained, bench/sizes.py"}, pixels=pixel_format(8)))


def generate_rate(size: int, batch: int | None, count: int) -> dict:
    from synthgen.dataset.format import Layout
    from synthgen.imaging import PNG_MARKING

    root = tempfile.mkdtemp(prefix="synthgen-sizes-")
    try:
        make_model(os.path.join(root, "m"), size)
        _, fingerprint = inspect_checkpoint(os.path.join(root, "m"))
        layout = Layout("parquet", ("a", "b"), image_shape=(size, size, 1), png_marking=PNG_MARKING)
        config = WorkerConfig(os.path.join(root, "m"), fingerprint, os.path.join(root, "out"), layout, seed=1,
                              labels=parse_label_plan(None, ["a", "b"]).to_json(), batch_size=batch, lanes=LANES,
                              device="cpu")
        generator = ShardGenerator(config)  # includes a warm-up pass
        start = time.perf_counter()
        generator(ShardSpec(0, 0, count))
        seconds = time.perf_counter() - start
        generator.pool.shutdown()
        return {"batch": generator.batch_size, "images_per_s": count / seconds}
    finally:
        shutil.rmtree(root)


def train_rate(size: int, batch: int, steps: int) -> dict:
    from synthgen.trainers import GANTrainer

    torch.set_num_threads(LANES)
    config = config_to_dict(DCGANConfig(latent_dim=100, image_size=size, channels=1, num_classes=2, width=128))
    trainer = GANTrainer(config, lr=2e-4, seed=0, device=torch.device("cpu"))
    images = torch.randint(0, 256, (batch * (steps + 1), 1, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (len(images),))
    trainer.run_epoch(images[:batch], labels[:batch], batch)  # warm-up step
    start = time.perf_counter()
    trainer.run_epoch(images[batch:], labels[batch:], batch)
    return {"batch": batch, "images_per_s": batch * steps / (time.perf_counter() - start)}


def one(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    batch = None if args.batch == "default" else int(args.batch)
    result = generate_rate(args.size, batch, args.count) if args.what == "generate" else \
        train_rate(args.size, int(args.batch), args.steps)
    result.update(size=args.size, what=args.what,
                  peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="28,128,256")
    parser.add_argument("--gen-batches", default="default,64,256")
    parser.add_argument("--train-batches", default="8,16,32")
    parser.add_argument("--count", type=int, default=2048, help="images generated per measurement")
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--what", default="generate", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=28, help=argparse.SUPPRESS)
    parser.add_argument("--batch", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    env = {**os.environ, **allocator_env(LANES)}
    rows = []
    for size in map(int, args.sizes.split(",")):
        jobs = [("generate", b) for b in args.gen_batches.split(",")]
        jobs += [("train", b) for b in args.train_batches.split(",")] if size > 28 else []
        for what, batch in jobs:
            cmd = [sys.executable, __file__, "--one", "--what", what, "--size", str(size), "--batch", batch,
                   "--count", str(args.count), "--steps", str(args.steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{what:8s} {size:3d}px batch {row['batch']:4d}: {row['images_per_s']:9,.0f} images/s, "
                  f"peak RSS {row['peak_rss_mib']:6,.0f} MiB", flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "numpy": np.__version__, "cpus": len(os.sched_getaffinity(0)),
                "lanes": LANES}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
