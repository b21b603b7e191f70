"""``manifest.json``, a dataset's commit record, and the dataset card ``README.md``.

A shard counts as written only once the manifest lists it with its index range, row count, byte size and
sha256; a file on disk that the manifest does not list is redone by the next run. The manifest holds no
timestamps, so an interrupted-then-resumed job ends with the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from synthgen import __version__, storage
from synthgen.dataset.format import PARQUET_COMPRESSION, RAW_LAYOUT
from synthgen.errors import SynthgenError
from synthgen.generate import diffusion_settings, plan
from synthgen.imaging import png_encoder_name, png_settings

if TYPE_CHECKING:
    from synthgen.checkpoint import CheckpointConfig
    from synthgen.generate.config import RunConfig

MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
FORMAT = "synthgen-dataset"
FORMAT_VERSION = 1
# The fields that decide every byte of a dataset; a re-run must match them to resume.
IDENTITY_FIELDS = ("count", "seed", "shard_size", "format", "encoding", "precision", "inference_form", "labels",
                   "png_encoder", "parquet_compression", "raw_layout", "sampler")
# What datasets written before a field was recorded did: synthgen 0.1.0 sampled the model as loaded, and
# before 0.3.0 every Parquet file was snappy-compressed; raw_layout is filled in by Manifest.identity. "sampler"
# holds a diffusion model's sampler settings (generate.diffusion_settings) and is None for other models.
BEFORE_RECORDED = {"inference_form": "plain", "png_encoder": None, "parquet_compression": "snappy", "sampler": None}
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
    png = config.encoding == "png"
    sampler = diffusion_settings.for_checkpoint(checkpoint, config.sampler, config.steps, config.guidance, source)
    # a diffusion model runs as loaded (the rewrites of generate.inference_form are for DCGAN-style layers)
    form = plan.INFERENCE_FORM if sampler is None else "plain"
    job = {"count": config.count, "seed": config.seed, "shard_size": config.shard_size, "format": config.format,
           "encoding": config.encoding, "precision": config.precision, "inference_form": form, "sampler": sampler,
           "labels": labels.to_json(), "png_encoder": png_encoder_name(png_settings(config.format)) if png else None,
           "parquet_compression": PARQUET_COMPRESSION, "raw_layout": None if png else RAW_LAYOUT}
    if sampler is None:  # other models' manifests and files stay as synthgen 0.6 wrote them
        del job["sampler"]
    model = {"source": source, "fingerprint": fingerprint, "arch": checkpoint.arch,
             "image_shape": checkpoint.image_shape, "latent_dim": checkpoint.latent_dim,
             "class_names": checkpoint.class_names, "training": checkpoint.training}
    return Manifest(job, model)


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


def _sampler_words(job: dict[str, Any]) -> str:
    sampler = job.get("sampler")
    if not sampler:
        return ""
    return f", sampler {sampler['sampler']} in {sampler['steps']} steps with guidance {sampler['guidance']:g}"


def write_card(loc: storage.Location, manifest: Manifest) -> None:
    """A Hugging Face style dataset card: what made the dataset, how to load it, counts per class."""
    job, model = manifest.job, manifest.model
    c, h, w = model["image_shape"]
    counts = "\n".join(f"| {name} | {n} |" for name, n in manifest.class_counts().items()) or "| (none) | |"
    training = model.get("training", {})
    files = "data/shard-*.parquet" if job["format"] == "parquet" else "images/<class>/<index>.png + metadata.parquet"
    if job["format"] == "parquet":
        loader = 'load_dataset("parquet", data_dir="DIR/data", split="train")'
        ray_line = 'ray.data.read_parquet("DIR/data")  # or pyarrow.dataset.dataset("DIR/data")'
    else:  # index, seed and label of each file are in DIR/metadata.parquet
        loader = 'load_dataset("imagefolder", data_dir="DIR", split="train")'
        ray_line = 'ray.data.read_images("DIR/images", include_paths=True)  # labels: DIR/metadata.parquet'
    text = f"""---
license: cc-by-4.0
tags: [synthetic, synthgen]
---
# Synthetic images made by synthgen {manifest.synthgen_version}

{job['count']} images of {h}x{w} pixels, {c} channel(s), generated by a `{model['arch']}` generator
(fingerprint `{model['fingerprint'][:16]}`, from `{model['source']}`) with base seed {job['seed']}, label plan
`{job['labels']['kind']}`, precision {job['precision']}{_sampler_words(job)}. Files: `{files}`; `manifest.json` lists every shard
with its index range and sha256 (`synthgen verify DIR` checks them).

Every image is reproducible: image *i* depends only on the model, the base seed, *i* and the label plan
(`synthgen show DIR --index I`).

| class | images |
| --- | --- |
{counts}

## Load

```python
from datasets import load_dataset
ds = {loader}
import ray; {ray_line}
```

## Provenance and license

The generator was trained on `{training.get('data', 'unknown data')}` (sha256 `{training.get('data_sha256', '?')}`).
Synthetic data inherits the terms of the data its generator learned from: for MedMNIST-trained models that is
CC BY 4.0 (cite MedMNIST v2, Yang et al., Scientific Data 10, 41 (2023), and the source dataset).
"""
    storage.write_bytes_atomic(loc, loc.join(CARD_FILE), text.encode())
