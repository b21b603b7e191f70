"""Where the actor's time goes: its body without Ray, one stage added at a time, against the raw limit.

In one process started with the actors' allocator settings (it re-executes itself with them), on two lanes of
one torch thread each, round-robin over ``--repeats``:
  limit      the forward + uint8 conversion on noise made once (bench/throughput.py's ``raw_rate``);
  noise      + seeds and noise made per batch from the image indices (``sampling.generate``);
  png        + stored-PNG framing of each batch (``imaging.encode_pngs``), unmarked (as synthgen 0.6.0);
  png-marked + the synthetic marking in each PNG (``imaging.marking_chunks``), as datasets now have it;
  actor      the real ``worker.ShardGenerator`` writing 10,240-image Parquet shards of marked PNGs, two in
             flight as the engine hands them out, to a temporary directory;
  actor-unmarked the same without the marking (a dataset started by synthgen 0.6.0);
  actor-rows the same, with the writer building each batch's Arrow rows but writing nothing.
Each row prints images/s per repeat and the median's share of the limit's median. No Ray, no driver: the
difference between ``actor`` and ``synthgen run`` (bench/throughput.py) is Ray's share.

    python bench/stages.py --count 61440 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from throughput import raw_rate  # bench/ is this script's directory, so first on sys.path

from synthgen.checkpoint import inspect_checkpoint, load_checkpoint, resolve
from synthgen.dataset.format import Layout
from synthgen.dataset.writers import ShardWriter
from synthgen.generate.actor import CPU_BATCH, ShardGenerator
from synthgen.generate.config import WorkerConfig, allocator_env
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import ShardSpec, image_seeds, parse_label_plan
from synthgen.generate.sampling import generate
from synthgen.imaging import PNG_MARKING, encode_pngs, marking_chunks, png_settings

LANES, SHARD = 2, 10_240


def on_lanes(count: int, batch: int, work) -> float:
    """images/s of ``work(k)`` over batches k = 0.. of ``count`` images, split across two 1-thread lanes."""
    batches = count // batch

    def lane(first: int) -> None:
        with torch.inference_mode():
            for k in range(first, batches, LANES):
                work(k)

    start = time.perf_counter()
    with ThreadPoolExecutor(LANES) as pool:
        list(pool.map(lane, range(LANES)))
    return batches * batch / (time.perf_counter() - start)


def actor_rate(model_dir: str, count: int, rows_only: bool = False, *, device: str = "cpu", lanes: int = LANES,
               precision: str = "fp32", shard: int = SHARD, marked: bool = True) -> float:
    """images/s of ShardGenerator on shards of ``shard`` images, two in flight (as the engine runs it)."""
    ckpt, fingerprint = inspect_checkpoint(model_dir)
    out = tempfile.mkdtemp(prefix="synthgen-stages-")
    channels, height, width = ckpt.image_shape
    layout = Layout("parquet", tuple(ckpt.class_names), image_shape=(height, width, channels),
                    bit_depth=ckpt.bit_depth, png_marking=PNG_MARKING if marked else None)
    config = WorkerConfig(model_dir, fingerprint, out, layout, seed=5, device=device, lanes=lanes,
                          precision=precision, labels=parse_label_plan(None, ckpt.class_names).to_json())
    generator = ShardGenerator(config)
    specs = [ShardSpec(i, i * shard, (i + 1) * shard) for i in range(count // shard)]
    add = ShardWriter.add
    if rows_only:  # Arrow rows built, nothing written: what the Parquet write itself costs
        def build_rows(self, indices, seeds, labels, images):
            self.next_index += len(indices)
            self._parquet_rows(indices, seeds, labels, images)
        ShardWriter.add = build_rows
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as calls:
            list(calls.map(generator, specs))
        return len(specs) * shard / (time.perf_counter() - start)
    finally:
        ShardWriter.add = add
        generator.pool.shutdown()
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--count", type=int, default=61_440, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wanted = allocator_env(LANES)
    if any(os.environ.get(k) != v for k, v in wanted.items()):  # glibc reads them only at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    torch.set_num_threads(1)
    args.model = str(resolve(args.model))
    ckpt = load_checkpoint(args.model)
    model, dim, classes = prepare_model(ckpt.model), ckpt.config.latent_dim, ckpt.config.num_classes
    batch, png = CPU_BATCH, png_settings("parquet")
    plan = parse_label_plan(None, ckpt.config.class_names)  # the default plan, as a run without --labels

    def noise(k):
        indices = np.arange(k * batch, (k + 1) * batch)
        return generate(model, image_seeds(3, indices), plan.labels(indices), batch_size=batch, latent_dim=dim)

    stages = {
        "limit": lambda: raw_rate(model, dim, classes, args.count, batch, "fp32", LANES),
        "noise": lambda: on_lanes(args.count, batch, noise),
        "png": lambda: on_lanes(args.count, batch, lambda k: encode_pngs(noise(k), png)),
        "png-marked": lambda: on_lanes(args.count, batch, lambda k: encode_pngs(
            noise(k), png, marking_chunks(ckpt.fingerprint, np.arange(k * batch, (k + 1) * batch)))),
        "actor": lambda: actor_rate(args.model, args.count, rows_only=False),
        "actor-unmarked": lambda: actor_rate(args.model, args.count, marked=False),
        "actor-rows": lambda: actor_rate(args.model, args.count, rows_only=True),
    }
    stages["limit"]()  # warm-up: kernel selection
    rates: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.repeats):
        for name, measure in stages.items():
            rates[name].append(measure())
    limit = float(np.median(rates["limit"]))
    for name, runs in rates.items():
        share = float(np.median(runs)) / limit
        print(f"{name:14s} {' / '.join(f'{r:,.0f}' for r in runs):>28s} images/s   {share:.3f} of the limit")


if __name__ == "__main__":
    main()
