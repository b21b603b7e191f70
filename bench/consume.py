"""Reading a synthgen dataset into PyTorch, every usual way, next to the decode limit, in one interleaved run.

For each round, for 1, 2 and 4 workers, every path reads ``--images`` images (after two warm-up batches)
in batches of 256 as float (B, C, H, W) tensors; paths run one after another inside the round, so they share
the machine's conditions, and each is reported as a ratio to the PNG decode limit measured in the same round
with as many processes. Limits: ``decode-limit`` = processes decoding the same PNG bytes (already in memory)
with libpng (imagecodecs, image by image into one array); ``decode-limit-pillow`` the same with Pillow (what
HF datasets and ImageFolder readers use); ``batch-decode`` synthgen's own batch decoder for the stored-block
PNGs of its Parquet shards (what its loader uses); ``raw-limit`` = processes turning uint8 pixels in memory
into float batches (no decode). Peak RSS: of the main process and of the largest worker. Prints one JSON line per
measurement and writes them all to ``--out``. Whole-epoch DataLoader paths also read a second epoch with the same
loader (``next_epoch_images_per_s``: what a training loop's later epochs see, worker start-up paid). ``--epoch
DIR`` instead reads one shuffled epoch of DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import psutil
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from synthgen.data import IterableSyntheticDataset, SyntheticImageDataset, loader
from synthgen.imaging import decode_png, decode_pngs

BATCH = 256
_PNGS: list[bytes] = []  # filled before the limit pools fork, so their processes inherit it


class PeakMemory:
    """Samples the RSS of this process and of each child started since (not Ray's daemons) every 50 ms."""

    def __init__(self):
        self.main = self.worker = 0
        self._before = {child.pid for child in psutil.Process().children(recursive=True)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            try:
                self.main = max(self.main, me.memory_info().rss)
                for child in me.children(recursive=True):
                    if child.pid not in self._before:
                        self.worker = max(self.worker, child.memory_info().rss)
            except psutil.Error:
                pass


def timed(batches, images: int | None) -> tuple[float, int]:
    """images/s over a whole epoch from the start (``images`` None: start-up and every read included), or
    over ``images`` images after two warm-up batches (for the paths too slow for a whole epoch)."""
    start, seen = time.perf_counter(), 0
    it = iter(batches)
    if images is not None:
        for _ in range(2):
            next(it)
        start = time.perf_counter()
    for x, _ in it:
        seen += len(x)
        if images is not None and seen >= images:
            break
    return seen / (time.perf_counter() - start), seen


def _decode_share(args: tuple[int, str]) -> int:
    """Decode ``count`` images in batches, cycling over the PNGs in memory; numpy only (torch's OpenMP pool
    must not be used in a process forked from one that started it)."""
    count, how = args
    out = np.empty((BATCH, *_RAW.shape[1:]), np.uint8)  # (B, H, W, C)
    planes = out[..., 0] if out.shape[-1] == 1 else out
    for b in range(0, count, BATCH):
        first = b % (len(_PNGS) - BATCH)
        pngs = _PNGS[first:first + BATCH]
        if how == "imagecodecs":  # libpng, image by image, into the batch array
            for k, png in enumerate(pngs):
                imagecodecs.png_decode(png, out=planes[k])
        elif how == "batch":  # synthgen's batch road for its own stored-block PNGs
            decode_pngs(pngs)
        elif how == "pillow":
            np.stack([decode_png(p) for p in pngs])
        else:  # raw: pixels already decoded, made into a float (B, C, H, W) batch
            _RAW[first:first + BATCH].transpose(0, 3, 1, 2).astype(np.float32) / 255
    return count


def limit(how: str, workers: int, images: int) -> float:
    """Images/s of ``workers`` processes decoding ``images`` images in all (start-up left out)."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_share, [(BATCH, how)] * workers))  # start the processes first
        start = time.perf_counter()
        done = sum(pool.map(_decode_share, [(images // workers, how)] * workers))
    return done / (time.perf_counter() - start)


class ImageFolderPIL(Dataset):
    """torchvision's ImageFolder reading, with Pillow (torchvision is not installed here): class folders of
    PNG files, each opened and decoded per item, converted as ToTensor would."""

    def __init__(self, root: str):
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.items = [(e.path, c) for c, name in enumerate(classes)
                      for e in sorted(os.scandir(os.path.join(root, name)), key=lambda e: e.name)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
        return torch.from_numpy(arr[None].copy()).float().div_(255), label  # (1, H, W)


def hf_torch(parquet_dir: str, cache: str):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=os.path.join(parquet_dir, "data"), split="train", cache_dir=cache)
    return ds.select_columns(["image", "label"]).with_format("torch")


def _hf_collate(items):
    images = torch.stack([item["image"].reshape(1, 28, 28) for item in items]).float().div_(255)
    return images, torch.stack([item["label"] for item in items])  # (B, 1, H, W), (B,)


def ray_batches(parquet_dir: str, images: int):
    import ray

    def decode(batch: dict) -> dict:
        pixels = decode_pngs([png["bytes"] for png in batch["image"]])  # (B, H, W, 1)
        return {"image": pixels.transpose(0, 3, 1, 2), "label": batch["label"]}

    ds = ray.data.read_parquet(os.path.join(parquet_dir, "data")).select_columns(["image", "label"])
    ds = ds.limit(images + 4 * BATCH).map_batches(decode)  # without limit() it reads on after we stop
    for batch in ds.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=16 * 1024):
        yield batch["image"].float().div_(255), batch["label"]


_RAW = np.empty((0, 28, 28, 1), np.uint8)
HF_PATH = "HF datasets .with_format('torch'), shuffle=True"


def start_s3(parquet_dir: str, log: Path) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on this machine holding a copy of the dataset; returns it and the dataset's URI."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(3)
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    fs.create_dir("bench")
    pafs.copy_files(parquet_dir, "bench/ds", destination_filesystem=fs)
    return proc, f"s3://bench/ds?endpoint_override=127.0.0.1:{port}&scheme=http"


def paths(args, workers: int, s3_uri: str | None, hf) -> dict:
    """name -> (make an iterable of (images, labels) batches, images to time: None for a whole epoch)."""
    p, n = args.parquet, args.images
    table = {
        "synthgen loader, shuffled (window 16)": (lambda: loader(p, BATCH, True, workers), None),
        "synthgen loader, decoded cache (uniform shuffle)": (lambda: loader(p, BATCH, True, workers,
                                                                              cache=args.cache), None),
        "synthgen loader, in order": (lambda: loader(p, BATCH, False, workers), None),
        "SyntheticImageDataset, shuffle=False": (
            lambda: DataLoader(SyntheticImageDataset(p), BATCH, shuffle=False, num_workers=workers), None),
        "SyntheticImageDataset, shuffle=True": (
            lambda: DataLoader(SyntheticImageDataset(p), BATCH, shuffle=True, num_workers=workers), n // 16),
        "IterableSyntheticDataset(shuffle=True)": (
            lambda: DataLoader(IterableSyntheticDataset(p, shuffle=True), BATCH, num_workers=workers), None),
        HF_PATH: (lambda: DataLoader(hf, BATCH, shuffle=True, num_workers=workers, collate_fn=_hf_collate), n // 4),
    }
    if s3_uri:
        table["synthgen loader, s3:// (moto) shuffled (window 16)"] = (lambda: loader(s3_uri, BATCH, True, workers),
                                                                     None)
    if args.png_tree:
        table["ImageFolder-style (Pillow), PNG tree, shuffle=True"] = (
            lambda: DataLoader(ImageFolderPIL(os.path.join(args.png_tree, "images")), BATCH, shuffle=True,
                               num_workers=workers), n // 4)
    if args.ray and workers == 2:
        # timed from the start: Ray Data runs ahead in the background, so a warm-up would hide its work
        table["Ray Data iter_torch_batches (2 CPUs, local shuffle 16k)"] = (lambda: ray_batches(p, n), None)
    return table


def measure_round(args, round_no: int, s3_uri: str | None, hf) -> list[dict]:
    rows = []
    for workers in args.workers:
        rows.append(record(round_no, workers, "decode-limit", limit("imagecodecs", workers, args.limit_images)))
        rows.append(record(round_no, workers, "decode-limit-pillow", limit("pillow", workers, args.images)))
        rows.append(record(round_no, workers, "batch-decode", limit("batch", workers, args.limit_images)))
        rows.append(record(round_no, workers, "raw-limit", limit("raw", workers, args.limit_images)))
        for name, (make, images) in paths(args, workers, s3_uri, hf).items():
            if args.only and args.only not in name:
                continue
            with PeakMemory() as peak:
                batches = make()
                rate, seen = timed(batches, images)
                # a training loop's later epochs: persistent workers already started, their reads warm
                again = timed(batches, None) if images is None and isinstance(batches, DataLoader) else None
                del batches
            rows.append(record(round_no, workers, name, rate, seen, peak, again))
    return rows


def record(round_no: int, workers: int, path: str, rate: float, seen: int = 0, peak: PeakMemory | None = None,
           again: tuple[float, int] | None = None):
    row = {"round": round_no, "workers": workers, "path": path, "images_per_s": round(rate)}
    if again is not None:  # images_per_s: the first epoch, start-up included; next_epoch: the one after it
        row["next_epoch_images_per_s"] = round(again[0])
    if peak is not None:
        row.update(images=seen, peak_main_mib=peak.main >> 20, peak_worker_mib=peak.worker >> 20)
    print(json.dumps(row), flush=True)
    return row


def epoch(path: str, workers: int, cache: str | None) -> None:
    """One shuffled epoch through the recommended loader: time, rows and peak RSS of main and workers."""
    with PeakMemory() as peak:
        start, seen = time.perf_counter(), 0
        for x, _ in loader(path, BATCH, True, workers, cache=cache or False):
            seen += len(x)
        seconds = time.perf_counter() - start
    print(json.dumps({"epoch": path, "workers": workers, "cache": cache, "rows": seen, "seconds": round(seconds, 1),
                      "images_per_s": round(seen / seconds), "peak_main_mib": peak.main >> 20,
                      "peak_worker_mib": peak.worker >> 20}), flush=True)


def main() -> None:
    global _PNGS, _RAW
    parser = argparse.ArgumentParser()
    parser.add_argument("--parquet", help="a synthgen Parquet dataset (PNG encoding)")
    parser.add_argument("--png-tree", help="a synthgen --format png dataset")
    parser.add_argument("--images", type=int, default=40_960, help="images timed per slow path (some: /4, /16)")
    parser.add_argument("--limit-images", type=int, default=200_000, help="images decoded per limit")
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/synthgen-bench-cache")
    parser.add_argument("--s3", action="store_true", help="also read a copy on a local moto S3 server")
    parser.add_argument("--ray", action="store_true", help="also Ray Data (with 2 workers)")
    parser.add_argument("--epoch", help="instead: one shuffled epoch of this dataset, 2 workers")
    parser.add_argument("--epoch-cache", action="store_true", help="that epoch through the decoded cache")
    parser.add_argument("--only", help="time only the paths whose names contain this text (the limits always)")
    parser.add_argument("--out", default="consume.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # no OpenMP pool in this process: the limit pools and DataLoader workers fork it
    if args.epoch:
        return epoch(args.epoch, 2, args.cache if args.epoch_cache else None)
    first = pq.ParquetFile(os.path.join(args.parquet, "data", "shard-00000.parquet"))
    _PNGS = [png["bytes"] for png in first.read(columns=["image"]).column("image").to_pylist()][:args.images]
    _RAW = decode_pngs(_PNGS)  # (N, H, W, 1)
    start = time.perf_counter()
    loader(args.parquet, cache=args.cache)
    print(json.dumps({"decoded_cache_ready_s": round(time.perf_counter() - start, 1)}), flush=True)
    start = time.perf_counter()
    hf = hf_torch(args.parquet, os.path.join(args.cache, "hf")) if not args.only or args.only in HF_PATH else None
    print(json.dumps({"hf_load_dataset_s": round(time.perf_counter() - start, 1)}), flush=True)
    s3, s3_uri = start_s3(args.parquet, Path(args.out).with_suffix(".moto.log")) if args.s3 else (None, None)
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        rows = [row for r in range(args.rounds) for row in measure_round(args, r, s3_uri, hf)]
    finally:
        if s3 is not None:
            os.killpg(s3.pid, 15)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
