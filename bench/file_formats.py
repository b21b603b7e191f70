"""What a file per image costs: the encoders of --format png, dicom and nifti, one thread, and end to end.

Encoders (microseconds per image, median of ``--repeats``, on BreastMNIST's 28x28 training images as 8-bit
and as 16-bit (x257), one thread): synthgen's PNG (single files, zlib level 1), DICOM and NIfTI encoders, and
for comparison what they replace: pydicom writing a whole Secondary Capture per image (a copy of the template
with the image's own attributes) and nibabel building and serialising a Nifti1Image per image (gzip level 6).
Then ``synthgen run`` with the bundled model per format (``--count`` images, one CPU actor), images/s.

    python bench/file_formats.py --repeats 3 --count 20000
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synthgen.dataset.dicom import DicomEncoder, uid
from synthgen.dataset.format import Layout
from synthgen.dataset.nifti import NiftiEncoder
from synthgen.imaging import PNG_SETTINGS, encode_pngs
from synthgen.readers import load_images

DATA = Path(__file__).resolve().parent.parent / "data" / "breastmnist.npz"
STAMP = {"job": {"shard_size": 10_000, "seed": 0}, "model": {"fingerprint": "0" * 64, "arch": "dcgan"}}


def pydicom_per_file(encoder: DicomEncoder, images: np.ndarray) -> list[bytes]:
    """What the encoder avoids: pydicom writing each whole file from a copy of the highdicom template."""
    template = encoder._build_template(images.shape[1:], images.dtype)
    out = []
    for index, image in enumerate(images):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("bench", index)
        ds.InstanceNumber, ds.ImageComments = index + 1, f"SYNTHETIC index {index}"
        ds.PixelData = image.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def nibabel_per_file(images: np.ndarray) -> list[bytes]:
    import nibabel as nib

    return [gzip.compress(nib.Nifti1Image(np.ascontiguousarray(image[:, :, 0].T), np.eye(4)).to_bytes(), 6, mtime=0)
            for image in images]


def encoders(images: np.ndarray, repeats: int) -> dict[str, dict]:
    indices, labels = np.arange(len(images)), np.zeros(len(images), np.int64)
    dicom = DicomEncoder(Layout("dicom", ("a",), file_metadata=STAMP))
    nifti = NiftiEncoder(Layout("nifti", ("a",), file_metadata=STAMP))
    ways = {"png (zlib 1)": lambda: encode_pngs(images, PNG_SETTINGS),
            "dicom (synthgen)": lambda: dicom.encode(indices, labels, images),
            "dicom (pydicom per file)": lambda: pydicom_per_file(dicom, images),
            "nifti (synthgen)": lambda: nifti.encode(indices, labels, images),
            "nifti (nibabel per file)": lambda: nibabel_per_file(images)}
    results = {}
    for name, fn in ways.items():
        if images.dtype == np.uint16 and name.startswith("png"):
            continue
        files, times = fn(), []  # the first call builds templates
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) / len(images) * 1e6)
        results[name] = {"us_per_image": [round(t, 1) for t in times], "median": round(statistics.median(times), 1),
                         "bytes_per_image": round(sum(map(len, files)) / len(files))}
    return results


def end_to_end(count: int) -> dict[str, float]:
    out = {}
    for fmt in ("png", "dicom", "nifti"):
        folder = tempfile.mkdtemp(prefix=f"bench-{fmt}-")
        done = subprocess.run([sys.executable, "-m", "synthgen", "run", "--count", str(count), "--format", fmt,
                               "--out", folder, "--gpus", "0", "--workers", "1", "--address", "local",
                               "--no-progress"], capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("done:"))
        out[fmt] = float(re.search(r"\((\d+) images/s", line).group(1))
        shutil.rmtree(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000, help="images per end-to-end run (0: skip)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    images = load_images(str(DATA)).images[:500]  # (500, 28, 28, 1) uint8
    report = {"load_average_before": os.getloadavg(),
              "uint8": encoders(images, args.repeats),
              "uint16": encoders(images.astype(np.uint16) * 257, args.repeats)}
    if args.count:
        report["synthgen_run_images_per_s"] = end_to_end(args.count)
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
