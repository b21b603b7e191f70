"""The dataset identity is built where its fields are declared, and a Parquet file carries only that."""

from __future__ import annotations

import pytest

from synthgen.checkpoint import inspect_checkpoint
from synthgen.dataset import manifest as mf
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig
from synthgen.generate.plan import INFERENCE_FORM, parse_label_plan


def fresh(checkpoint: str, **settings) -> mf.Manifest:
    ckpt, fingerprint = inspect_checkpoint(checkpoint)
    config = RunConfig(count=10, model=checkpoint, **settings)
    return mf.new_manifest(config, ckpt, fingerprint, checkpoint, parse_label_plan(None, ckpt.class_names))


def test_a_new_manifest_sets_exactly_the_identity_fields(tiny_checkpoint, tiny_diffusion_checkpoint):
    # a model that is not a diffusion model has no "sampler" field: its manifest and files stay as 0.6 made them
    for settings in ({}, {"encoding": "raw"}, {"format": "png", "precision": "bf16"}, {"format": "dicom"},
                     {"format": "nifti", "spacing": "0.5"}):
        manifest = fresh(tiny_checkpoint, **settings)
        medical = manifest.job["format"] in ("dicom", "nifti")  # only they record file_encoder and spacing
        absent = {"sampler"} | (set() if medical else set(mf.MEDICAL_FIELDS))
        fields = tuple(f for f in mf.IDENTITY_FIELDS if f not in absent)
        assert tuple(sorted(manifest.job)) == tuple(sorted(fields))
        assert manifest.identity() == {**manifest.job, **dict.fromkeys(absent),
                                       "model_fingerprint": manifest.model["fingerprint"]}
        assert manifest.job["inference_form"] == INFERENCE_FORM and manifest.job["parquet_compression"] == "zstd"
    diffusion = fresh(tiny_diffusion_checkpoint, sampler="heun", steps=3)
    assert tuple(sorted(diffusion.job)) == tuple(sorted(set(mf.IDENTITY_FIELDS) - set(mf.MEDICAL_FIELDS)))
    assert diffusion.job["sampler"] == {"sampler": "heun", "steps": 3, "guidance": 1.0, "chunk_rows": 32}
    assert diffusion.job["inference_form"] == "plain" and diffusion.file_stamp()["job"]["sampler"]["steps"] == 3
    raw, png = fresh(tiny_checkpoint, encoding="raw"), fresh(tiny_checkpoint)
    assert (raw.job["png_encoder"], raw.job["raw_layout"]) == (None, "fixed_size_binary")
    assert png.job["png_encoder"].startswith("imagecodecs-") and png.job["raw_layout"] is None
    dicom, nifti = fresh(tiny_checkpoint, format="dicom"), fresh(tiny_checkpoint, format="nifti", spacing="0.7x0.5")
    assert dicom.job["file_encoder"].startswith("highdicom-") and dicom.job["encoding"] == "dicom"
    assert (nifti.job["spacing"], nifti.job["png_encoder"]) == ([0.7, 0.5], None)


def test_the_file_stamp_holds_the_identity_and_no_path(tiny_checkpoint):
    manifest = fresh(tiny_checkpoint)
    manifest.job["made_on"] = {"device": "cpu"}  # recorded once actors run: never in the files' bytes
    stamp = manifest.file_stamp()
    assert stamp["job"] == {k: manifest.job[k] for k in mf.IDENTITY_FIELDS
                            if k not in mf.MEDICAL_FIELDS and k != "sampler"}
    assert sorted(stamp["model"]) == ["arch", "class_names", "fingerprint", "image_shape"]
    assert tiny_checkpoint not in str(stamp)


def test_where_the_bytes_are_made_is_decided_by_the_first_run_that_makes_any(tiny_checkpoint):
    cpu = {"device": "cpu", "torch": "2.13.0+cpu", "numpy": "2.1.0"}
    manifest = fresh(tiny_checkpoint)
    assert mf.record_made_on(manifest, [cpu], "ds") == [] and manifest.job[mf.MADE_ON] == cpu
    manifest.job[mf.MADE_ON] = {**cpu, "device": "cuda"}  # started on GPUs, but no shard of it was kept
    assert mf.record_made_on(manifest, [cpu], "ds") == [] and manifest.job[mf.MADE_ON] == cpu


def test_nodes_with_other_versions_are_warned_about_and_recorded_once(tiny_checkpoint):
    cpu = {"device": "cpu", "torch": "2.13.0+cpu", "numpy": "2.1.0"}
    manifest = fresh(tiny_checkpoint)
    manifest.job[mf.MADE_ON] = dict(cpu)
    manifest.shards[0] = mf.ShardRecord(0, "data/shard-00000.parquet", 0, 10, 10, 1, "0" * 64)
    newer = {**cpu, "numpy": "2.2.0"}
    for _ in range(2):
        warnings = mf.record_made_on(manifest, [cpu, newer], "ds")
        assert len(warnings) == 1 and "started with numpy 2.1.0; this run has numpy 2.2.0" in warnings[0]
    assert manifest.job[mf.MADE_ON] == {**cpu, "also_with": [{"numpy": "2.2.0"}]}
    with pytest.raises(SynthgenError, match="started on cpu actors and this run's are on cuda"):
        mf.record_made_on(manifest, [{**cpu, "device": "cuda"}], "ds")
