"""The prepared GPU check, one script: GPU tests, batch-size invariance, raw forward vs actor vs simulation, busy.

For each precision (fp32, bf16, fp16) on one CUDA device:
  invariance  the bundled model's pixels for 3,000 images at 2,048 rows per pass against 333 rows per pass;
  raw         the device stage alone (forward + uint8 conversion, noise made beforehand): the device limit;
  actor       the actor's body (``ShardGenerator``: lanes, device slot, noise, PNG framing, Parquet shards)
              per lane count, with its busy fraction (time the device slot was held / wall time);
  simulated   the same body on a SimulatedDevice whose stand-in forward takes the raw forward's measured time
              per batch: the pipelining's prediction for this host, to set beside the actor.
Also the host's capacity (the actor body with a zero-length forward) per lane count and, where Ray is installed, a
``synthgen run --gpus 1``. The ``gpu``-marked tests run first (``pytest -m gpu``). Anything missing (CUDA,
pytest, Ray, a library synthgen imports) is said in one line and that part skipped. Results: JSON lines on
stdout and, with ``--out``, one JSON file. docs/benchmarks.md ("GPU") has the command for the lent machine.

Smoke test on a CPU machine: ``python bench/gpu_check.py --device cpu --count 8192 --lanes 1 2 --skip-tests``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # synthgen, uninstalled

NEEDED = ["numpy", "pyarrow", "PIL", "imagecodecs", "safetensors", "tqdm"]  # what the actor body imports
missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"error: {', '.join(missing)} not installed here; the actor body needs them (docs/benchmarks.md, GPU)")

from simulated_device import measure_actor  # noqa: E402  (bench/ is this script's directory)

from synthgen import __version__  # noqa: E402
from synthgen.checkpoint import DEFAULT_MODEL, load_checkpoint, resolve  # noqa: E402
from synthgen.generate.inference_form import prepare_model  # noqa: E402
from synthgen.generate.plan import image_seeds  # noqa: E402
from synthgen.generate.sampling import ImageRecipe, Lane, generate, make_deterministic  # noqa: E402


def raw_forward_s(model, latent_dim: int, batch: int, precision: str, passes: int) -> float:
    """Seconds per ``batch``-row pass of the device stage alone (noise made once, outside the timing)."""
    recipe = ImageRecipe(model, precision, latent_dim)
    lane = Lane(recipe.device)
    seeds, labels = image_seeds(0, np.arange(batch)), np.arange(batch) % 2
    recipe.run(seeds, labels, lane)  # warm-up: kernel selection
    spent = 0.0
    for _ in range(passes):
        host = recipe.host_stage(seeds, labels, lane)  # the copy in, not timed
        start = time.perf_counter()
        pending = recipe.device_stage(host, lane)  # returns when the forward is done, as the slot does
        spent += time.perf_counter() - start
        pending.result()
    return spent / passes


def same_pixels_at_two_batch_sizes(model, precision: str) -> bool:
    seeds, labels = image_seeds(5, np.arange(3000)), np.arange(3000) % 2
    return bool(np.array_equal(generate(model, seeds, labels, batch_size=2048, precision=precision),
                               generate(model, seeds, labels, batch_size=333, precision=precision)))


def gpu_tests() -> dict:
    if importlib.util.find_spec("pytest") is None:
        print("pytest is not installed here: the gpu-marked tests were skipped", flush=True)
        return {"what": "gpu tests", "ran": False, "why": "pytest not installed"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/generate/test_gpu.py"],
                          cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"what": "gpu tests", "ran": True, "returncode": proc.returncode, "summary": tail}


def ray_run(model: str, count: int, precision: str) -> dict:
    if importlib.util.find_spec("ray") is None:
        print("ray is not installed here: `synthgen run --gpus 1` (the actor inside Ray) was not measured; "
              "the actor body above is what each GPU actor runs", flush=True)
        return {"what": "synthgen run --gpus 1", "ran": False, "why": "ray not installed"}
    out = f"/tmp/synthgen-gpu-check-{os.getpid()}"
    cmd = [sys.executable, "-m", "synthgen", "run", "--count", str(count), "--gpus", "1", "--model", model,
           "--precision", precision, "--out", out, "--address", "local", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    subprocess.run(["rm", "-rf", out])
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"what": "synthgen run --gpus 1", "ran": True, "precision": precision, "returncode": proc.returncode,
            "output": lines[-3:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--count", type=int, default=204_800, help="images per actor measurement")
    parser.add_argument("--batch", type=int, default=2048, help="rows per pass (the GPU default)")
    parser.add_argument("--lanes", type=int, nargs="+", default=[2, 4, 8, 15])
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    parser.add_argument("--out", default=None, help="JSON file for the results (default: stdout only)")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device",
              file=sys.stderr)
        return 1
    results: list[dict] = []

    def report(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": np.__version__, "synthgen": __version__, "cpus": len(os.sched_getaffinity(0)),
           "device": args.device, "model": args.model,
           "device_name": torch.cuda.get_device_name() if on_gpu else platform.processor(),
           "ray": importlib.util.find_spec("ray") is not None}
    print(json.dumps(env), flush=True)
    if on_gpu and not args.skip_tests:
        report(gpu_tests())
    model_dir = str(resolve(args.model))
    make_deterministic(args.device)
    ckpt = load_checkpoint(model_dir, device=args.device)
    model, dim = prepare_model(ckpt.model), ckpt.config.latent_dim
    capacity = {}  # lanes -> images/s of the actor body with a forward of zero length: the host's capacity
    for lanes in args.lanes:
        capacity[lanes] = measure_actor(model_dir, args.count, args.batch, lanes, forward_s=0.0)["images_per_second"]
        report({"what": "host capacity (zero-length forward)", "lanes": lanes,
                "images_per_second": round(capacity[lanes])})
    for precision in ["fp32", "bf16"] + (["fp16"] if on_gpu else []):
        forward_s = raw_forward_s(model, dim, args.batch, precision, passes=50 if on_gpu else 3)
        report({"what": "raw forward", "precision": precision, "batch": args.batch,
                "same_pixels_at_2048_and_333_rows": same_pixels_at_two_batch_sizes(model, precision),
                "images_per_second": round(args.batch / forward_s)})
        for lanes in args.lanes:
            actor = measure_actor(model_dir, args.count, args.batch, lanes, device=args.device, precision=precision)
            simulated = measure_actor(model_dir, args.count, args.batch, lanes, forward_s=forward_s)
            limit = min(args.batch / forward_s, capacity[lanes])
            report({"what": "actor body (no Ray)", "precision": precision, "lanes": lanes,
                    "images_per_second": round(actor["images_per_second"]), "busy": round(actor["busy"], 3),
                    "simulated_images_per_second": round(simulated["images_per_second"]),
                    "simulated_busy": round(simulated["busy"], 3),
                    "min_raw_and_host_capacity": round(limit),
                    "share_of_that": round(actor["images_per_second"] / limit, 3)})
    if on_gpu:
        report(ray_run(model_dir, args.count, "bf16"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
