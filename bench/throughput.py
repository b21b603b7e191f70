"""Throughput and peak memory of synthgen run, against its limit and against a plain Ray Data pipeline.

In one run on one machine, for each N:
  (a) raw: the generator's forward pass alone (noise made beforehand), in this process - the ceiling;
  (a') raw + PNG: forward, uint8 conversion and PNG encoding, in this process, no I/O;
  (b) synthgen run end to end (subprocess; rate while generating, and wall time including Ray start);
  (c) bench/ray_data_pipeline.py: ray.data.range(N).map_batches(...).write_parquet(...).
Peak memory is sampled every 50 ms over each subprocess tree (driver, Ray's own processes, actors).

    python bench/throughput.py --counts 10000 200000 --json bench/out/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import torch

from synthgen import __version__
from synthgen.checkpoint import load_checkpoint
from synthgen.imaging import encode_png
from synthgen.plan import image_seeds
from synthgen.rng import normal_from_seeds
from synthgen.sampling import to_uint8

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def raw_rate(model, latent_dim: int, classes: int, count: int, batch: int, encode: bool) -> float:
    seeds = image_seeds(0, np.arange(batch))
    z = torch.from_numpy(normal_from_seeds(seeds, latent_dim))  # (batch, latent), made once: not timed
    y = torch.arange(batch) % classes if classes else None
    done, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while done < count:
            images = to_uint8(model(z, y))  # (batch, H, W, C)
            if encode:
                [encode_png(im) for im in images]
            done += batch
    return done / (time.perf_counter() - t0)


class TreeMemory:
    """Samples RSS of a process and all its descendants; keeps the peaks."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_total = self.peak_driver = self.peak_actor = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
                rss = {}
                for p in procs:
                    try:
                        rss[p.pid] = (p.memory_info().rss, " ".join(p.cmdline()))
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak_total = max(self.peak_total, sum(r for r, _ in rss.values()))
            self.peak_driver = max(self.peak_driver, rss.get(self.root.pid, (0, ""))[0])
            actors = [r for r, cmd in rss.values() if "ray::" in cmd and "IDLE" not in cmd]
            self.peak_actor = max([self.peak_actor] + actors)
            time.sleep(0.05)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        mib = 1 << 20
        return {"peak_tree_mib": round(self.peak_total / mib), "peak_driver_mib": round(self.peak_driver / mib),
                "peak_actor_mib": round(self.peak_actor / mib)}


def measured(cmd: list[str]) -> tuple[str, float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    mem = memory.stop()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return out, wall, mem


def synthgen_rate(count: int, args, out: str) -> dict:
    cmd = [sys.executable, "-m", "synthgen", "run", "--count", str(count), "--out", out, "--gpus", "0",
           "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--no-progress",
           "--precision", args.precision] + (["--model", args.model] if args.model else [])
    text, wall, mem = measured(cmd)
    rate = float(text.split("(")[-1].split(" images/s")[0])
    return {"images_per_second": rate, "wall_s": round(wall, 1), **mem}


def ray_data_rate(count: int, args, out: str) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "ray_data_pipeline.py"), "--count", str(count), "--out", out,
           "--batch-size", str(args.batch_size)] + (["--model", args.model] if args.model else [])
    text, wall, mem = measured(cmd)
    line = json.loads(text.strip().splitlines()[-1])
    return {"images_per_second": line["images_per_second"], "wall_s": round(wall, 1), **mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.model)
    env = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                      f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB, {cpu_name()}",
           "python": platform.python_version(), "torch": torch.__version__, "synthgen": __version__,
           "ray": __import__("ray").__version__, "pyarrow": __import__("pyarrow").__version__,
           "model": f"{ckpt.config.arch} {ckpt.config.image_shape} ({ckpt.fingerprint[:12]})",
           "torch_threads": torch.get_num_threads()}
    print(json.dumps(env))
    results = []
    scratch = tempfile.mkdtemp(prefix="synthgen-bench-")
    try:
        for count in args.counts:
            classes = ckpt.config.num_classes
            row = {"count": count,
                   "raw_forward": raw_rate(ckpt.model, ckpt.config.latent_dim, classes, count, args.batch_size, False),
                   "raw_forward_png": raw_rate(ckpt.model, ckpt.config.latent_dim, classes, min(count, 50_000),
                                               args.batch_size, True)}
            row["synthgen"] = synthgen_rate(count, args, os.path.join(scratch, f"sg-{count}"))
            row["ray_data"] = ray_data_rate(count, args, os.path.join(scratch, f"rd-{count}"))
            row["synthgen_vs_raw"] = row["synthgen"]["images_per_second"] / row["raw_forward"]
            row["synthgen_vs_ray_data"] = row["synthgen"]["images_per_second"] / row["ray_data"]["images_per_second"]
            print(json.dumps(row))
            results.append(row)
            shutil.rmtree(scratch)
            os.makedirs(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
