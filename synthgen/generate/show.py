"""Regenerate one image of a dataset from its manifest alone and compare it with the stored bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from synthgen import storage
from synthgen.checkpoint import load_checkpoint
from synthgen.dataset import manifest as mf
from synthgen.dataset.files import decode_file, file_encoder, layout_of
from synthgen.dataset.format import FILE_FORMATS, raw_pixels
from synthgen.errors import SynthgenError
from synthgen.generate.diffusion_settings import with_sampler
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import LabelPlan, image_seeds, shard_of
from synthgen.generate.sampling import NonFiniteOutput, generate, make_deterministic


@dataclass
class ShowResult:
    index: int
    seed: int
    label: int
    class_name: str
    image: np.ndarray  # regenerated, (H, W, C) uint8 (uint16 for a 16-bit model)
    stored: np.ndarray  # as stored, (H, W, C), same dtype
    same_pixels: bool
    same_bytes: bool | None  # file bytes (PNG, DICOM, NIfTI) equal; None for raw encoding
    device: str = "cpu"  # the device kind it was regenerated on
    not_exact: str | None = None  # why the comparison cannot be byte-exact (made on another device kind)
    file_kind: str = "PNG"  # what the stored bytes are: PNG, DICOM or NIfTI


def regenerate(path: str, index: int, model: str | None = None) -> ShowResult:
    """Rebuild image ``index`` of the dataset at ``path`` and compare it with what is stored.

    Args:
        path: dataset directory or URI.
        index: image index, 0 <= index < count.
        model: where the model is now, if it moved since the dataset was made (fingerprint must match).

    Returns:
        The regenerated image and whether its pixels and PNG bytes equal the stored ones.
    """
    loc = storage.locate(path)
    manifest = mf.load(loc)
    if manifest is None:
        raise SynthgenError(f"{path}: no {mf.MANIFEST_FILE}; not a synthgen dataset")
    job = manifest.job
    if not 0 <= index < job["count"]:
        raise SynthgenError(f"--index must be between 0 and {job['count'] - 1}, got {index}")
    record = manifest.shards.get(shard_of(index, job["shard_size"]))
    if record is None:
        raise SynthgenError(f"--index {index}: its shard is not committed yet; finish the run first")
    device, not_exact = _device_like(manifest)
    ckpt = load_checkpoint(model or manifest.model["source"], device=device)
    if ckpt.fingerprint != manifest.model["fingerprint"]:
        raise SynthgenError(f"{ckpt.source}: fingerprint {ckpt.fingerprint[:12]} is not the dataset's model "
                            f"({manifest.model['fingerprint'][:12]}); pass --model with the original checkpoint")
    plan = LabelPlan.from_json(job["labels"])
    seeds = image_seeds(job["seed"], np.array([index]))
    labels = plan.labels(np.array([index]))
    identity = manifest.identity()
    model = with_sampler(prepare_model(ckpt.model, identity["inference_form"]), identity["sampler"])
    try:
        image = generate(model, seeds, labels, precision=job["precision"], bit_depth=ckpt.config.bit_depth)[0]
    except NonFiniteOutput as err:
        raise SynthgenError(str(NonFiniteOutput(index, err.precision))) from None
    stored = _stored_image(loc, job["format"], record, index)
    names = plan.class_names
    pixels = decode_file(job["format"], stored, f"index {index}") if isinstance(stored, bytes) else stored
    encode = file_encoder(layout_of(manifest))  # the actors' encoder: PNG, DICOM or NIfTI bytes
    same_bytes = encode(np.array([index]), labels, image[None])[0] == stored if isinstance(stored, bytes) else None
    return ShowResult(index, int(seeds[0]), int(labels[0]), names[labels[0]] if labels[0] >= 0 else "",
                      image, pixels, bool(np.array_equal(pixels, image)), same_bytes, device, not_exact,
                      {"dicom": "DICOM", "nifti": "NIfTI"}.get(job["format"], "PNG"))


def _device_like(manifest: mf.Manifest) -> tuple[str, str | None]:
    """The device kind the dataset was made on when this machine has one (cpu when it was not recorded), and
    else the CPU with the reason the comparison is not byte-exact."""
    made_on = manifest.job.get(mf.MADE_ON) or {"device": "cpu"}
    if made_on["device"] == "cpu":
        return "cpu", None
    if made_on["device"] == "cuda" and torch.cuda.is_available():
        make_deterministic("cuda")  # the actors' GPU numerics
        return "cuda", None
    return "cpu", (f"the dataset was made on {made_on['device']} and this machine has none; regenerated on the "
                   "CPU, whose kernels differ in the last bits of some pixels")


def _stored_image(loc: storage.Location, fmt: str, record: mf.ShardRecord, index: int) -> bytes | np.ndarray:
    """The stored file (PNG, DICOM, NIfTI) of ``index``, or its (H, W, C) pixels for raw encoding."""
    columns = ["index", "image"] if fmt == "parquet" else ["index", "file_name"]
    with loc.fs.open_input_file(loc.join(record.file)) as f:
        table = pq.read_table(f, columns=columns, filters=[("index", "=", index)])
    if table.num_rows != 1:
        raise SynthgenError(f"{record.file}: has no row for index {index}; run synthgen verify")
    if fmt in FILE_FORMATS:
        return storage.read_bytes(loc, loc.join(table.column("file_name")[0].as_py()))
    column = table.column("image").combine_chunks()
    pixels = raw_pixels(column, table.schema.field("image"))  # (1, H, W, C) for raw encoding
    return pixels[0] if pixels is not None else column[0]["bytes"].as_py()

