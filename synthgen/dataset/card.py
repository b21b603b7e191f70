"""The dataset card ``DIR/README.md`` (Hugging Face style) and the evaluation summary it quotes.

The card says what made the dataset and how to load it, and is honest about what it may be used for: the
license and citation are those the model's training data declared (``synthgen train --data-license /
--data-citation``, or ``data_terms.json`` beside the checkpoint; "unknown" when nobody said), the intended use
is research, and the evaluation and memorization results appear once ``synthgen eval`` has judged this very
dataset: eval leaves ``DIR/eval.json`` (a summary tagged with the dataset's identity) and rewrites the card.
A summary whose identity is not the dataset's (it was replaced since) is not quoted.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from synthgen import storage
from synthgen.dataset import manifest as mf

CARD_FILE = mf.CARD_FILE
EVAL_FILE = "eval.json"
UNKNOWN = "unknown"

INTENDED_USE = """Research only: augmenting training sets, developing and testing methods and pipelines, teaching.
**Not for diagnosis** or any clinical decision, and not evidence about any patient: the images are made by a
generator from random noise, not acquired from anyone; they carry the generator's artefacts and the biases of
the data it learned from, and a model trained on them must be validated on real data. Every file says it is
synthetic (see "Synthetic marking"); keep the marking when you copy or convert the images."""

MARKING = {
    "parquet": "the Parquet files' `synthgen` metadata names the generator (model fingerprint) and the job.",
    "png": "`manifest.json` and `metadata.parquet` name the generator (model fingerprint), the job and each "
           "file's index.",
    "dicom": "ImageType `DERIVED\\SECONDARY`, ConversionType `SYN` (synthetic image), SyntheticData (0008,001C) "
             "`YES`, BurnedInAnnotation `NO`, RecognizableVisualFeatures `NO`, a SeriesDescription starting "
             "`SYNTHETIC`, ImageComments and DerivationDescription naming synthgen, the model fingerprint and the "
             "index. Patient and study are synthetic by construction: PatientName `SYNTHETIC^SYNTHGEN`, PatientID "
             "`SYNTHGEN-<dataset key>`, no dates, no sex, no accession number. UIDs are `2.25.<UUID>` derived "
             "from the dataset's identity and the index; one study per dataset, one series per (shard, class). "
             "Index and label: InstanceNumber = index + 1 and synthgen's private block (0009,0010) = `SYNTHGEN 1`: "
             "(0009,1001) index (UL), (0009,1002) label (SL), (0009,1003) class name, (0009,1004) model "
             "fingerprint.",
    "nifti": "the header's `descrip` reads `SYNTHETIC synthgen <fingerprint> index <i> label <l>` and `aux_file` "
             "holds IPTC's digital source type `trainedAlgorithmicMedia`. The voxel array is (W, H) (x along an "
             "image row; RGB as (W, H, 1, 1, 3), intent VECTOR), the affine has the pixel spacing with y flipped "
             "so that viewers show row 0 at the top.",
}

LOADERS = {
    "parquet": ('from datasets import load_dataset\nds = load_dataset("parquet", data_dir="DIR/data", split="train")\n'
                'import ray; ray.data.read_parquet("DIR/data")  # or pyarrow.dataset.dataset("DIR/data")'),
    "png": ('from datasets import load_dataset\nds = load_dataset("imagefolder", data_dir="DIR", split="train")\n'
            'import ray; ray.data.read_images("DIR/images", include_paths=True)  # labels: DIR/metadata.parquet'),
    "dicom": ('import pydicom; pydicom.dcmread("DIR/images/<class>/000000000.dcm").pixel_array\n'
              'from monai.transforms import LoadImage; LoadImage(image_only=True)("DIR/images/<class>/000000000.dcm")\n'
              'from synthgen.data import SyntheticImageDataset; ds = SyntheticImageDataset("DIR")  # (image, label)'),
    "nifti": ('import nibabel; nibabel.load("DIR/images/<class>/000000000.nii.gz").get_fdata()  # (W, H)\n'
              'from monai.transforms import LoadImage  # (W, H), the spacing in its meta\n'
              'LoadImage(image_only=True)("DIR/images/<class>/000000000.nii.gz")\n'
              'from synthgen.data import SyntheticImageDataset; ds = SyntheticImageDataset("DIR")  # (image, label)'),
}
FILES = {"parquet": "data/shard-*.parquet", "png": "images/<class>/<index>.png + metadata.parquet",
         "dicom": "images/<class>/<index>.dcm + metadata.parquet",
         "nifti": "images/<class>/<index>.nii.gz + metadata.parquet"}


def identity_key(manifest: mf.Manifest) -> str:
    """sha256 of the dataset's identity: what an evaluation summary must match to be quoted."""
    return hashlib.sha256(json.dumps(manifest.identity(), sort_keys=True).encode()).hexdigest()


def write_card(loc: storage.Location, manifest: mf.Manifest) -> None:
    """Write ``DIR/README.md`` for a dataset (called when it completes, and again after ``synthgen eval``)."""
    job, model = manifest.job, manifest.model
    c, h, w = model["image_shape"]
    counts = "\n".join(f"| {name} | {n} |" for name, n in manifest.class_counts().items()) or "| (none) | |"
    training = model.get("training", {})
    terms = model.get("data_terms") or {"license": UNKNOWN, "citation": UNKNOWN, "declared_in": "nowhere"}
    fmt = job["format"]
    spacing = job.get("spacing")
    spacing_line = (f"\nPixel spacing: {spacing[0]} x {spacing[1]} mm (row x column)." if spacing else
                    "\nPixel spacing: unknown (not in the training data; `--spacing` sets it for NIfTI)."
                    if fmt in ("dicom", "nifti") else "")
    text = f"""---
license: {_hf_license(terms['license'])}
tags: [synthetic, synthgen, trainedAlgorithmicMedia]
---
# Synthetic images made by synthgen {manifest.synthgen_version}

{job['count']} **synthetic** images of {h}x{w} pixels, {c} channel(s), generated by a `{model['arch']}` generator
(fingerprint `{model['fingerprint'][:16]}`, from `{model['source']}`) with base seed {job['seed']}, label plan
`{job['labels']['kind']}`, precision {job['precision']}{mf.sampler_words(job)}.
Files: `{FILES.get(fmt, fmt)}`; `manifest.json` lists every shard with its index range and sha256
(`synthgen verify DIR` checks them).{spacing_line}

Every image is reproducible: image *i* depends only on the model, the base seed, *i* and the label plan
(`synthgen show DIR --index I`).

| class | images |
| --- | --- |
{counts}

## Intended use

{INTENDED_USE}

## Load

```python
{LOADERS.get(fmt, '')}
```

## Synthetic marking

{MARKING.get(fmt, '')}

{_evaluation(loc, manifest)}

## Training data, license and citation

The generator was trained on `{training.get('data', 'unknown data')}` (sha256 `{training.get('data_sha256', '?')}`).
Synthetic data inherits the terms of the data its generator learned from, as declared with the model
({_declared(terms)}):

- License: **{terms['license']}**
- Cite: {terms['citation']}
"""
    storage.write_bytes_atomic(loc, loc.join(CARD_FILE), text.encode())


def _declared(terms: dict[str, str]) -> str:
    where = terms.get("declared_in", "nowhere")
    if where == "nowhere":
        return ("nobody declared them: train with `--data-license` and `--data-citation`, or put `data_terms.json` "
                "beside the checkpoint; until then, find out before you share this dataset")
    return "in the checkpoint's " + " and ".join(f"`{name}`" for name in where.split(" + "))


def _hf_license(value: str) -> str:
    """The card's front matter wants a Hugging Face license id (cc-by-4.0, mit, unknown, ...); else "other"."""
    value = value.strip().lower()
    return value if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value) else "other"


def _evaluation(loc: storage.Location, manifest: mf.Manifest) -> str:
    summary = read_eval(loc, manifest)
    if summary is None:
        return ("## Evaluation and memorization\n\nNot evaluated yet. `synthgen eval --real <training data> "
                "--synthetic DIR` measures fidelity, usefulness for a downstream classifier and memorization (the "
                "nearest real training image of each synthetic one), and adds the results here.")
    mem = summary["memorization"]
    head = (f"`synthgen eval` against `{summary['real']}` (seed {summary['seed']}, {summary['images_used']} "
            "synthetic images):")
    lines = [head, ""]
    lines += [f"- {name} features: FID {s['fid']:.2f} (real test split {s['baseline_fid']:.2f})"
              + (f", precision {s['precision']:.2f} / recall {s['recall']:.2f}" if "precision" in s else "")
              for name, s in summary["feature_spaces"].items()]
    for name, arm in summary.get("auc", {}).items():
        lines.append(f"- downstream classifier trained on {name}: test AUC {arm['auc']:.3f} "
                     f"[{arm['low']:.3f}, {arm['high']:.3f}]")
    lines += [f"- {name}: {text}" for name, text in summary.get("verdicts", {}).items()]
    memorization = (f"**Memorization**: {mem['near_copies']} of {summary['images_used']} synthetic images "
                    f"({mem['fraction']:.1%}) are near-copies of a training image (nearest/second-nearest distance "
                    f"ratio under {mem['copy_ratio']} in pixel or classifier-feature space); the real test split has "
                    f"{mem['baseline_pixel']:.1%} (pixel) and {mem['baseline_feature']:.1%} (feature) by the same "
                    "test.")
    lines += ["", memorization]
    return "## Evaluation and memorization\n\n" + "\n".join(lines)


def eval_summary(report: dict, manifest: mf.Manifest) -> dict[str, Any]:
    """The part of a ``synthgen eval`` report the card quotes, tagged with the dataset's identity."""
    spaces = {}
    for name, space in report["feature_spaces"].items():
        if "skipped" in space:
            continue
        fk, pr = space["fid_kid"], space["precision_recall"]
        spaces[name] = {"fid": fk["fid"], "baseline_fid": fk["baseline_real_test"]["fid"],
                        **({"precision": pr["precision"], "recall": pr["recall"]} if "precision" in pr else {})}
    mem, down = report["memorization"], report["downstream"]
    out = {"identity": identity_key(manifest), "real": report["real"]["path"], "seed": report["settings"]["seed"],
           "images_used": report["synthetic"]["images_used"], "feature_spaces": spaces,
           "memorization": {"near_copies": mem["near_copies"], "fraction": mem["near_copy_fraction_either"],
                            "copy_ratio": mem["copy_ratio"],
                            "baseline_pixel": mem["pixel"]["baseline_real_test_near_copy_fraction"],
                            "baseline_feature": mem["feature"]["baseline_real_test_near_copy_fraction"]}}
    if "skipped" not in down:
        out["auc"] = {name: {k: arm[k] for k in ("auc", "low", "high")} for name, arm in down["arms"].items()}
        out["verdicts"] = dict(down["verdicts"])
    return out


def record_eval(path: str, report: dict) -> str | None:
    """Leave ``report``'s summary in the synthgen dataset at ``path`` and rewrite its card.

    Returns:
        None when done or when ``path`` is no complete synthgen dataset (nothing to do); else a warning line
        (the dataset is read-only, say).
    """
    loc = storage.locate(path)
    try:
        manifest = mf.load(loc)
        if manifest is None or not manifest.complete:
            return None
        summary = eval_summary(report, manifest)
        storage.write_bytes_atomic(loc, loc.join(EVAL_FILE), (json.dumps(summary, indent=1) + "\n").encode())
        write_card(loc, manifest)
    except (OSError, ValueError) as err:
        return f"warning: could not add the evaluation to {path}'s card ({err})"
    return None


def read_eval(loc: storage.Location, manifest: mf.Manifest) -> dict | None:
    """The dataset's evaluation summary, when there is one for this very dataset."""
    path = loc.join(EVAL_FILE)
    try:
        summary = json.loads(storage.read_bytes(loc, path)) if storage.exists(loc, path) else None
    except (OSError, ValueError):
        return None
    ok = isinstance(summary, dict) and summary.get("identity") == identity_key(manifest)
    return summary if ok else None
