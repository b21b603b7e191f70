"""Throughput and peak memory of synthgen run, against its limit and against a plain Ray Data pipeline.

In one run on one machine, for each N:
  (a) raw: the generator's forward pass alone (noise made beforehand) - the ceiling - for each precision, in
      a fresh process started with the same glibc allocator settings as synthgen's actors;
  (b) synthgen run end to end (subprocess; rate while generating, and wall time including Ray start) for each
      precision x encoding, and with 1 and 2 actors;
  (c) bench/ray_data_pipeline.py: ray.data.range(N).map_batches(...).write_parquet(...), fp32 + PNG.
Memory is sampled every second over each subprocess tree (driver, Ray's own processes, actors): the peak of
the summed PSS (shared pages split between the processes that map them, so libtorch counts once) and, for
comparison, of the summed RSS.

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
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import psutil
import torch

from synthgen import __version__
from synthgen.checkpoint import load_checkpoint
from synthgen.generate.actor import CPU_BATCH
from synthgen.generate.config import allocator_env
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import image_seeds
from synthgen.generate.rng import normal_from_seeds
from synthgen.generate.sampling import AUTOCAST_DTYPES, to_uint8

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def raw_rate(model, latent_dim: int, classes: int, count: int, batch: int, precision: str, lanes: int,
             device: str = "cpu") -> float:
    """Images/s of the forward pass alone (noise made beforehand, no encoding; the uint8 copy back included),
    ``lanes`` threads of 1 torch thread each when lanes > 1 (as synthgen's CPU actors run), else torch's own
    threads in one forward. On a GPU (``device`` "cuda"), one lane, timed to the last copy back."""
    seeds = image_seeds(0, np.arange(batch))
    z = torch.from_numpy(normal_from_seeds(seeds, latent_dim)).to(device)  # (batch, latent), made once: not timed
    y = (torch.arange(batch) % classes).to(device) if classes else None
    per_lane = -(-count // (batch * lanes))
    dtype = AUTOCAST_DTYPES[precision]

    def forward_passes(passes: int) -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype,
                                                    enabled=dtype is not None):
            for _ in range(passes):
                to_uint8(model(z, y))  # (batch, H, W, C) on the host

    threads = torch.get_num_threads()
    if lanes > 1:
        torch.set_num_threads(1)
    try:
        forward_passes(1)  # warm-up: kernel selection, outside the timing
        t0 = time.perf_counter()
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(lambda _: forward_passes(per_lane), range(lanes)))
        return per_lane * batch * lanes / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def raw_run(args, precision: str, lanes: int, count: int) -> dict:
    """One raw measurement as a result row, in a fresh process: glibc reads its allocator settings only at
    start-up, and the limit should run with the ones synthgen's actors get (generate.config.allocator_env);
    with glibc's defaults a 256-row forward page-faults its activations in again on every batch."""
    cmd = [sys.executable, os.path.abspath(__file__), "--raw-once", precision, str(lanes), "--raw-count",
           str(count), "--batch-size", str(args.batch_size)] + (["--model", args.model] if args.model else [])
    env = {**os.environ, **allocator_env(len(os.sched_getaffinity(0)))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    return {"images_per_second": json.loads(proc.stdout.strip().splitlines()[-1])["images_per_second"]}


def raw_once(args) -> None:
    """The body of ``--raw-once PRECISION LANES``: print one raw rate as JSON."""
    precision, lanes = args.raw_once[0], int(args.raw_once[1])
    ckpt = load_checkpoint(args.model)
    model = prepare_model(ckpt.model)  # the form synthgen's actors sample with
    rate = raw_rate(model, ckpt.config.latent_dim, ckpt.config.num_classes, args.raw_count, args.batch_size,
                    precision, lanes)
    print(json.dumps({"images_per_second": rate}))


class TreeMemory:
    """Samples PSS and RSS of a process and all its descendants; keeps the peaks."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_total = self.peak_rss = self.peak_driver = self.peak_actor = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
                mem = {}
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        mem[p.pid] = (info.pss, info.rss, " ".join(p.cmdline()))
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak_total = max(self.peak_total, sum(m[0] for m in mem.values()))
            self.peak_rss = max(self.peak_rss, sum(m[1] for m in mem.values()))
            self.peak_driver = max(self.peak_driver, mem.get(self.root.pid, (0, 0, ""))[0])
            actors = [m[0] for m in mem.values() if "ray::" in m[2] and "Generat" in m[2]]
            self.peak_actor = max([self.peak_actor] + actors)
            time.sleep(1.0)  # reading smaps costs CPU; sampling often would slow what is measured

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        mib = 1 << 20
        return {"peak_tree_pss_mib": round(self.peak_total / mib), "peak_tree_rss_mib": round(self.peak_rss / mib),
                "peak_driver_pss_mib": round(self.peak_driver / mib),
                "peak_actor_pss_mib": round(self.peak_actor / mib)}


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


def synthgen_rate(count: int, args, out: str, precision: str, encoding: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "synthgen", "run", "--count", str(count), "--out", out, "--gpus", "0",
           "--workers", str(workers), "--batch-size", str(args.batch_size), "--no-progress",
           "--precision", precision, "--encoding", encoding] + (["--model", args.model] if args.model else [])
    text, wall, mem = measured(cmd)
    rate = float(text.split("(")[-1].split(" images/s")[0])
    return {"images_per_second": rate, "wall_s": round(wall, 1), **mem}


def ray_data_rate(count: int, args, out: str, form: str) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "ray_data_pipeline.py"), "--count", str(count), "--out", out,
           "--batch-size", str(args.ray_data_batch_size), "--form", form]
    cmd += ["--model", args.model] if args.model else []
    text, wall, mem = measured(cmd)
    line = json.loads(text.strip().splitlines()[-1])
    return {"images_per_second": line["images_per_second"], "wall_s": round(wall, 1), **mem}


def measure_all(count: int, args, scratch: str) -> list[dict]:
    """One row per configuration at ``count``: the median of ``args.repeats`` runs, taken round-robin so
    that a slow spell of a shared VM hits every configuration alike; peak memory is the largest seen."""
    cores = len(os.sched_getaffinity(0))
    raw_count = min(count, args.raw_count)
    tasks = []  # (row fields, function measuring one run)
    for precision in args.precisions:
        # the ceiling is the faster of one forward on all cores' torch threads and one 1-thread lane per core
        for lanes in (1, cores) if cores > 1 else (1,):
            tasks.append(({"what": "raw forward", "precision": precision, "lanes": lanes,
                           "torch_threads": torch.get_num_threads() if lanes == 1 else 1},
                          partial(raw_run, args, precision, lanes, raw_count)))
    for form in args.ray_data_forms:
        tasks.append(({"what": "ray data pipeline", "precision": "fp32", "encoding": "png", "form": form},
                      partial(ray_data_rate, count, args, os.path.join(scratch, "rd"), form)))
    configs = [(p, e, args.workers[0]) for p in args.precisions for e in args.encodings]
    configs += [("fp32", "png", w) for w in args.workers[1:]]
    for precision, encoding, workers in configs:
        tasks.append(({"what": "synthgen run", "precision": precision, "encoding": encoding, "actors": workers,
                       "lanes_per_actor": max(1, cores // workers)},
                      partial(synthgen_rate, count, args, os.path.join(scratch, "sg"), precision, encoding,
                              workers)))
    runs: list[list[dict]] = [[] for _ in tasks]
    for repeat in range(args.repeats):
        for k, (fields, measure) in enumerate(tasks):
            runs[k].append(measure())
            print(json.dumps({"count": count, "repeat": repeat, **fields, **runs[k][-1]}), file=sys.stderr,
                  flush=True)
            shutil.rmtree(scratch)
            os.makedirs(scratch)
    rows = [{"count": count, **fields, **_median(samples)} for (fields, _), samples in zip(tasks, runs)]
    raw = {p: max(r["images_per_second"] for r in rows if r["what"] == "raw forward" and r["precision"] == p)
           for p in args.precisions}
    ray_data_rows = [r for r in rows if r["what"] == "ray data pipeline"]  # the model as loaded is the comparison
    ray_data = next((r for r in ray_data_rows if r["form"] == "plain"), ray_data_rows[0])["images_per_second"]
    for row in rows:
        if row["what"] != "raw forward":
            row["vs_raw_same_precision"] = row["images_per_second"] / raw.get(row["precision"], float("nan"))
            row["vs_ray_data"] = row["images_per_second"] / ray_data
    return rows


def _median(samples: list[dict]) -> dict:
    rates = [s["images_per_second"] for s in samples]
    out = {"images_per_second": float(np.median(rates)), "runs_images_per_second": [round(r) for r in rates]}
    if "wall_s" in samples[0]:
        out["wall_s"] = float(np.median([s["wall_s"] for s in samples]))
        for key in samples[0]:
            if key.startswith("peak_"):
                out[key] = max(s[key] for s in samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--batch-size", type=int, default=CPU_BATCH, help="rows per forward pass for the raw "
                        "forward and synthgen run (default: synthgen's CPU default)")
    parser.add_argument("--ray-data-batch-size", type=int, default=256, help="map_batches batch size")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--encodings", nargs="+", default=["png", "raw"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="actor counts; the first is used for every precision x encoding, the rest fp32 png")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the median is kept")
    parser.add_argument("--raw-count", type=int, default=50_000, help="images per raw forward measurement")
    parser.add_argument("--ray-data-forms", nargs="+", default=["plain", "fast"],
                        help="model form in the Ray Data pipeline: plain = as loaded (the comparison), "
                             "fast = synthgen's inference form")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--raw-once", nargs=2, metavar=("PRECISION", "LANES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_once:
        return raw_once(args)

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
            for row in measure_all(count, args, scratch):
                print(json.dumps(row), flush=True)
                results.append(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
