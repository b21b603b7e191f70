"""``manifest.json``, a dataset's commit record (the dataset card ``README.md``: :mod:`synthgen.dataset.card`).

A shard counts as written only once the manifest lists it with its index range, row count, byte size and
sha256; a file on disk that the manifest does not list is redone by the next run. The manifest holds no
timestamps, so an interrupted-then-resumed job ends with the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from synthgen import __version__, storage
from synthgen.dataset.files import encoder_name
from synthgen.dataset.format import PARQUET_COMPRESSION, PARQUET_DICTIONARY, RAW_LAYOUT
from synthgen.errors import SynthgenError
from synthgen.generate import diffusion_settings, plan
from synthgen.imaging import PNG_MARKING, png_encoder_name, png_settings

if TYPE_CHECKING:
    from synthgen.checkpoint import CheckpointConfig
    from synthgen.generate.config import RunConfig

MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
FORMAT = "synthgen-dataset"
FORMAT_VERSION = 1
# The fields that decide every byte of a dataset; a re-run must match them to resume.
IDENTITY_FIELDS = ("count", "seed", "shard_size", "format", "encoding", "precision", "inference_form", "labels",
                   "png_encoder", "parquet_compression", "raw_layout", "png_marking", "file_encoder", "spacing",
                   "sampler", "parquet_dictionary")
# What datasets written before a field was recorded did: synthgen 0.1.0 sampled the model as loaded, and
# before 0.3.0 every Parquet file was snappy-compressed; raw_layout is filled in by Manifest.identity.
# Before 0.7.0 no PNG carried the synthetic marking (imaging.PNG_MARKING); before 0.8.0 pyarrow chose each
# column's dictionary encoding.
# Recorded by --format dicom and nifti only (synthgen 0.7); None for the other formats, whose manifests and
# Parquet files leave them out, so their bytes stay what earlier versions wrote. "sampler" holds a diffusion
# model's sampler settings (generate.diffusion_settings) and is left out for other models.
MEDICAL_FIELDS = ("file_encoder", "spacing")
BEFORE_RECORDED = {"inference_form": "plain", "png_encoder": None, "parquet_compression": "snappy",
                   "png_marking": None, "file_encoder": None, "spacing": None, "sampler": None,
                   "parquet_dictionary": "pyarrow default"}
# Where the bytes were made (generate.provenance.made_on): known once the actors run, so kept beside the identity
# and out of the files' bytes; absent in datasets made before synthgen recorded it ("not recorded").
MADE_ON = "made_on"


@dataclass
class ShardRecord:
    """One committed shard."""

    shard_id: int
    file: str  # relative to the dataset root: the parquet shard, or the PNG shard's metadata part
    start: int
    stop: int
    rows: int
    bytes: int  # all of the shard's files together
    sha256: str  # of ``file`` (for PNG shards it lists each image's sha256)
    class_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    job: dict[str, Any]  # identity fields + informational settings (batch size, workers, ...)
    model: dict[str, Any]  # source, fingerprint, arch, image_shape, latent_dim, class_names, training
    shards: dict[int, ShardRecord] = field(default_factory=dict)
    status: str = "in_progress"
    synthgen_version: str = __version__

    @property
    def num_shards(self) -> int:
        return plan.num_shards(self.job["count"], self.job["shard_size"])

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def identity(self) -> dict[str, Any]:
        job = {**BEFORE_RECORDED, **self.job}
        if "raw_layout" not in job:  # before 0.4.0 raw pixels were Arrow's fixed_shape_tensor
            job["raw_layout"] = "fixed_shape_tensor" if job.get("encoding") == "raw" else None
        return {**{k: job[k] for k in IDENTITY_FIELDS}, "model_fingerprint": self.model["fingerprint"]}

    def file_stamp(self) -> dict[str, Any]:
        """What every Parquet file of the dataset carries: only what decides the bytes (no paths, which differ
        between machines, and nothing recorded after the run started)."""
        model = {k: self.model[k] for k in ("fingerprint", "arch", "image_shape", "class_names")}
        # a field a dataset's first version did not record stays out (and file_encoder, spacing outside
        # DICOM/NIfTI), so its files keep their bytes
        return {"job": {k: self.job[k] for k in IDENTITY_FIELDS if k in self.job}, "model": model}

    def rows_done(self) -> int:
        return sum(r.rows for r in self.shards.values())

    def class_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for record in self.shards.values():
            for name, n in record.class_counts.items():
                totals[name] = totals.get(name, 0) + n
        return dict(sorted(totals.items()))

    def to_json(self) -> str:
        body = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "synthgen_version": self.synthgen_version,
            "status": self.status, "job": self.job, "model": self.model, "num_shards": self.num_shards,
            "rows": self.rows_done(), "bytes": sum(r.bytes for r in self.shards.values()),
            "class_counts": self.class_counts(),
            "shards": [asdict(self.shards[j]) for j in sorted(self.shards)],
        }
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f'no "format": "{FORMAT}"')
            shards = {int(s["shard_id"]): ShardRecord(**s) for s in raw["shards"]}
            manifest = cls(raw["job"], raw["model"], shards, raw["status"], raw["synthgen_version"])
            _check_job(manifest.job)
            manifest.identity()  # every field a resume compares is there
            return manifest
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            detail = f"no {err} field" if isinstance(err, KeyError) else err
            raise SynthgenError(f"{source}: not a valid synthgen manifest ({detail})") from None


def new_manifest(config: RunConfig, checkpoint: CheckpointConfig, fingerprint: str, source: str,
                 labels: plan.LabelPlan) -> Manifest:
    """The manifest a new dataset starts with: its identity (IDENTITY_FIELDS) from the run's settings and the
    choices of the modules that make the bytes (inference form, PNG encoder, Parquet compression, raw layout).

    Args:
        config: the run's settings, already checked.
        checkpoint, fingerprint: the model's config and fingerprint (checkpoint.inspect_checkpoint).
        source: how the manifest names the model (engine.model_reference).
        labels: the parsed label plan.
    """
    png = config.encoding == "png" and config.format in ("parquet", "png")
    sampler = diffusion_settings.for_checkpoint(checkpoint, config.sampler, config.steps, config.guidance, source)
    # a diffusion model runs as loaded (the rewrites of generate.inference_form are for DCGAN-style layers)
    form = plan.INFERENCE_FORM if sampler is None else "plain"
    job = {"count": config.count, "seed": config.seed, "shard_size": config.shard_size, "format": config.format,
           "encoding": config.encoding, "precision": config.precision, "inference_form": form, "sampler": sampler,
           "labels": labels.to_json(), "png_encoder": png_encoder_name(png_settings(config.format)) if png else None,
           "parquet_compression": PARQUET_COMPRESSION,
           "parquet_dictionary": PARQUET_DICTIONARY, "raw_layout": RAW_LAYOUT if config.encoding == "raw" else None,
           "png_marking": PNG_MARKING if png else None}
    if config.format in ("dicom", "nifti"):  # the format is the encoding: no PNG inside
        job.update(encoding=config.format, file_encoder=encoder_name(config.format),
                   spacing=output_spacing(config, checkpoint))
    if sampler is None:  # other models' manifests and files stay as synthgen 0.6 wrote them
        del job["sampler"]
    from synthgen.checkpoint import data_terms

    model = {"source": source, "fingerprint": fingerprint, "arch": checkpoint.arch,
             "image_shape": checkpoint.image_shape, "bit_depth": checkpoint.bit_depth,
             "latent_dim": checkpoint.latent_dim, "class_names": checkpoint.class_names,
             "training": checkpoint.training,
             "data_terms": data_terms(source, checkpoint)}  # for the card; not part of the identity
    return Manifest(job, model)


def follow_unmarked(existing: Manifest, fresh: Manifest) -> None:
    """A dataset started before PNGs were marked (synthgen 0.6.0 and earlier) is finished without the marking,
    so its missing shards get the bytes its first version would have written, never a mix of the two."""
    if "png_marking" not in existing.job and fresh.job.get("png_marking") is not None:
        del fresh.job["png_marking"]


def bit_depth(manifest: Manifest) -> int:
    """The depth of a dataset's pixels: 8, or 16 for a 16-bit model (8 in manifests before 0.7.0)."""
    return int(manifest.model.get("bit_depth", 8))


def output_spacing(config: RunConfig, checkpoint: CheckpointConfig) -> list[float] | None:
    """[row, column] pixel spacing in mm that a NIfTI or DICOM dataset records: ``--spacing`` (NIfTI only),
    else the training data's (the checkpoint's ``training.pixel_spacing``), else None (unknown)."""
    if config.format not in ("dicom", "nifti"):
        return None
    if config.spacing is not None:
        from synthgen.generate.config import parse_spacing

        return parse_spacing(config.spacing)
    known = checkpoint.training.get("pixel_spacing")
    return [float(s) for s in known] if known else None


def record_made_on(manifest: Manifest, actors: list[dict[str, str]], uri: str) -> list[str]:
    """Put where this run makes bytes into ``manifest``, before its first shard is written.

    Args:
        manifest: the dataset the run continues (or starts).
        actors: the distinct ``made_on`` answers of the run's actors.
        uri: the dataset, for messages.

    Returns:
        Warning lines: library versions that differ from those the dataset was started with (recorded too).
        A resume on another device kind is refused: its images would be of two sorts under one identity.
    """
    before = manifest.job.get(MADE_ON)
    if not manifest.shards:  # nothing made yet: this run decides
        manifest.job[MADE_ON] = before = dict(actors[0])
    elif before is None:  # made before synthgen recorded this: its shards' origin stays "not recorded"
        return []
    for now in actors:
        if now["device"] != before["device"]:
            raise SynthgenError(f"--out {uri}: the dataset was started on {before['device']} actors and this run's "
                                f"are on {now['device']}, whose kernels differ in the last bits of some pixels; "
                                f"finish it on {before['device']} actors, or replace it with --overwrite, or "
                                "write to a new --out")
    warnings, also = [], before.get("also_with", [])
    for now in actors:
        changed = {k: v for k, v in now.items() if before.get(k) != v}
        if not changed:
            continue
        also += [changed] if changed not in also else []
        was = ", ".join(f"{k} {before.get(k, 'not recorded')}" for k in changed)
        warnings.append(f"warning: {uri} was started with {was}; this run has "
                        f"{', '.join(f'{k} {v}' for k, v in changed.items())}: its new shards may differ in the "
                        "last bits of some pixels from what the first versions would make (each shard still "
                        f"verifies; the manifest's {MADE_ON} records both)")
    if also:
        before["also_with"] = also
    return warnings


def _check_job(job: dict[str, Any]) -> None:
    """Refuse counts that verify, resume and readers divide by or count to (a hand-edited manifest)."""
    for key in ("count", "shard_size"):
        if not isinstance(job[key], int) or job[key] < 1:
            raise ValueError(f"job {key} must be a positive integer, got {job[key]!r}")


def manifest_path(loc: storage.Location) -> str:
    return loc.join(MANIFEST_FILE)


def load(loc: storage.Location) -> Manifest | None:
    """The manifest of the dataset at ``loc``, or None when there is none."""
    path = manifest_path(loc)
    if not storage.exists(loc, path):
        return None
    return Manifest.from_json(storage.read_bytes(loc, path).decode("utf-8", "replace"), path)


def save(loc: storage.Location, manifest: Manifest) -> None:
    storage.write_bytes_atomic(loc, manifest_path(loc), manifest.to_json().encode())


def identity_diff(old: Manifest, new: Manifest) -> list[str]:
    """Human-readable differences in the fields that decide a dataset's bytes."""
    a, b = old.identity(), new.identity()
    return [f"{k}: {a[k]!r} there, {b[k]!r} now" for k in a if a[k] != b[k]]


def sampler_words(job: dict[str, Any]) -> str:
    """The card's words for a diffusion dataset's sampler settings ("" for other models)."""
    sampler = job.get("sampler")
    if not sampler:
        return ""
    return f", sampler {sampler['sampler']} in {sampler['steps']} steps with guidance {sampler['guidance']:g}"
