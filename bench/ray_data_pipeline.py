"""The obvious alternative to synthgen run: a plain Ray Data pipeline doing the same job.

ray.data.range(N).map_batches(<callable class holding the model>).write_parquet(OUT), with the same model,
the same per-image seeds and noise, and PNG encoding in the callable (the same encoder and settings as
synthgen's Parquet shards, and the same zstd compression).
``--form plain`` runs the model as loaded, as a user writing this pipeline would; ``--form fast`` gives it
synthgen's inference form too, to show how much of the difference is the model rewrite and how much the
engine. Prints one JSON line with its rate.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ray

from synthgen.checkpoint import load_checkpoint
from synthgen.dataset.format import PARQUET_COMPRESSION
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import INFERENCE_FORM, image_seeds, parse_label_plan
from synthgen.generate.sampling import generate
from synthgen.imaging import encode_pngs, png_settings


class Generate:
    """Loads the model once per actor (Ray's batch-inference pattern)."""

    def __init__(self, model: str | None, seed: int, threads: int, form: str):
        import torch

        torch.set_num_threads(threads)
        self.ckpt = load_checkpoint(model)
        self.model = prepare_model(self.ckpt.model, "plain" if form == "plain" else INFERENCE_FORM)
        self.plan = parse_label_plan(None, self.ckpt.config.class_names)
        self.seed = seed

    def __call__(self, batch: dict) -> dict:
        indices = batch["id"].astype(np.int64)
        seeds = image_seeds(self.seed, indices)
        labels = self.plan.labels(indices)
        images = generate(self.model, seeds, labels, batch_size=len(indices))
        pngs = encode_pngs(images, png_settings("parquet"))  # as synthgen's Parquet shards hold them
        return {"image": pngs, "index": indices, "seed": seeds, "label": labels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--form", choices=["plain", "fast"], default="plain",
                        help="the model as loaded, or in synthgen's inference form")
    args = parser.parse_args()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    # One actor reserving one CPU: two actors reserving a whole CPU each hang forever on 2 cores, because
    # the read and write tasks can then never be scheduled.
    (ray.data.range(args.count)
     .map_batches(Generate, fn_constructor_args=(args.model, 0, args.threads, args.form),
                  batch_size=args.batch_size, concurrency=1, num_cpus=1)
     .write_parquet(args.out, compression=PARQUET_COMPRESSION))
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": args.count, "seconds": seconds, "images_per_second": args.count / seconds}))


if __name__ == "__main__":
    main()
