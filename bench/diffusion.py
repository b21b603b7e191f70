"""Diffusion sampling speed, in one run on one machine: the raw network limit, synthgen end to end, and a
diffusers-style loop with a list of per-image torch generators, at the same sampler, steps and precision.

  (a) raw limit: the UNet's forward pass alone on fixed 32-row chunks (inputs made beforehand), ``lanes``
      threads of one torch thread each, as synthgen's CPU actors run; images/s = passes' rows / time / network
      evaluations per image (the scheduler's timesteps);
  (b) synthgen run end to end (in process, on a local Ray cluster; the rate while generating), fp32 and bf16;
  (c) the obvious alternative: batches through a hand loop of the same diffusers scheduler, the initial noise
      from ``randn_tensor(..., generator=[one torch.Generator per image])`` (what diffusers pipelines accept for
      per-image reproducibility), torch's own threads, fp32 and bf16 (autocast).

The model is a randomly initialised network of the given width (speed does not depend on the weights).

    python bench/diffusion.py --count 192 --steps 10 --width 32 --json bench/out/diffusion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import cpu_name

from synthgen import __version__
from synthgen.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
from synthgen.generate.diffusion_settings import for_checkpoint, with_sampler
from synthgen.generate.sampling import AUTOCAST_DTYPES, to_uint8
from synthgen.models import (
    DiffusionConfig,
    DiffusionSampler,
    build_denoiser,
    config_to_dict,
)


def make_model(out: str, width: int) -> None:
    torch.manual_seed(0)
    config = DiffusionConfig(image_size=28, channels=1, num_classes=2, width=width)
    save_checkpoint(out, DiffusionSampler(build_denoiser(config)).eval(),
                    CheckpointConfig(arch="diffusion", model_config=config_to_dict(config), image_shape=[1, 28, 28],
                                     latent_dim=config.latent_dim, class_names=["malignant", "normal"]))


def autocast(precision: str):
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def raw_limit(sampler, count: int, lanes: int, precision: str) -> float:
    """Images/s the network alone allows: ``count`` images' worth of 32-row passes on ``lanes`` 1-thread lanes."""
    evals = len(sampler._prototype(torch.device("cpu")).timesteps)
    rows = sampler.chunk_rows * (2 if sampler.guidance != 1 else 1)
    x, y, t = torch.randn(rows, 1, 28, 28), torch.arange(rows) % 2, torch.tensor(500)
    passes = -(-count * evals // (sampler.chunk_rows * lanes))

    def run(n: int) -> None:
        with torch.inference_mode(), autocast(precision):
            for _ in range(n):
                sampler.denoiser(x, t, y)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(lambda _: run(passes), range(lanes)))
        return passes * lanes * sampler.chunk_rows / evals / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def synthgen_rate(model: str, count: int, steps: int, batch: int, precision: str, scratch: str) -> float:
    from synthgen.generate.config import RunConfig
    from synthgen.generate.engine import run

    # the loop's batch size: with the CPU default (256) a small count is one batch, and one lane idles
    config = RunConfig(count=count, out=os.path.join(scratch, f"ds-{precision}"), model=model, shard_size=count,
                       batch_size=batch, precision=precision, steps=steps, gpus=0, workers=1, progress=False,
                       address="local")
    return run(config).images_per_second


def diffusers_loop_rate(sampler, count: int, batch: int, precision: str) -> float:
    """A plain loop: per batch, per-image generators -> initial noise -> the scheduler loop -> uint8."""
    import copy

    from diffusers.utils.torch_utils import randn_tensor

    proto = sampler._prototype(torch.device("cpu"))
    done, t0 = 0, time.perf_counter()
    with torch.inference_mode(), autocast(precision):
        while done < count:
            n = min(batch, count - done)
            generators = [torch.Generator().manual_seed(done + i) for i in range(n)]
            x = randn_tensor((n, 1, 28, 28), generator=generators) * proto.init_noise_sigma  # (n, 1, 28, 28)
            y = torch.arange(n) % 2
            scheduler = copy.deepcopy(proto)
            for t in scheduler.timesteps:
                out = sampler.denoiser(scheduler.scale_model_input(x, t), t, y).float()
                x = scheduler.step(out, t, x).prev_sample
            to_uint8(x.clamp(-1, 1))
            done += n
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lanes", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=64, help="rows per batch of the diffusers loop")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = os.path.join(scratch, "model")
        make_model(model_dir, args.width)
        ckpt = load_checkpoint(model_dir)
        sampler = with_sampler(ckpt.model, for_checkpoint(ckpt.config, "ddim", args.steps, None))
        for precision in args.precisions:
            limit = raw_limit(sampler, args.count, args.lanes, precision)
            e2e = synthgen_rate(model_dir, args.count, args.steps, args.batch, precision, scratch)
            loop = diffusers_loop_rate(sampler, args.count, args.batch, precision)
            rows += [{"what": "raw UNet limit", "precision": precision, "images_per_second": limit},
                     {"what": "synthgen run", "precision": precision, "images_per_second": e2e,
                      "vs_raw": e2e / limit},
                     {"what": "diffusers loop", "precision": precision, "images_per_second": loop,
                      "vs_raw": loop / limit}]
            for row in rows[-3:]:
                print(json.dumps(row), flush=True)
    import diffusers

    result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_1min": os.getloadavg()[0],
                          "python": platform.python_version(), "torch": torch.__version__,
                          "diffusers": diffusers.__version__, "synthgen": __version__},
              "settings": {**vars(args), "sampler": "ddim"}, "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
