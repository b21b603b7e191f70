"""The dataset identity is built where its fields are declared, and a Parquet file carries only that."""

from __future__ import annotations

from synthgen.checkpoint import inspect_checkpoint
from synthgen.dataset import manifest as mf
from synthgen.generate.config import RunConfig
from synthgen.generate.plan import INFERENCE_FORM, parse_label_plan


def fresh(checkpoint: str, **settings) -> mf.Manifest:
    ckpt, fingerprint = inspect_checkpoint(checkpoint)
    config = RunConfig(count=10, model=checkpoint, **settings)
    return mf.new_manifest(config, ckpt, fingerprint, checkpoint, parse_label_plan(None, ckpt.class_names))


def test_a_new_manifest_sets_exactly_the_identity_fields(tiny_checkpoint):
    for settings in ({}, {"encoding": "raw"}, {"format": "png", "precision": "bf16"}):
        manifest = fresh(tiny_checkpoint, **settings)
        assert tuple(sorted(manifest.job)) == tuple(sorted(mf.IDENTITY_FIELDS))
        assert manifest.identity() == {**manifest.job, "model_fingerprint": manifest.model["fingerprint"]}
        assert manifest.job["inference_form"] == INFERENCE_FORM and manifest.job["parquet_compression"] == "zstd"
    raw, png = fresh(tiny_checkpoint, encoding="raw"), fresh(tiny_checkpoint)
    assert (raw.job["png_encoder"], raw.job["raw_layout"]) == (None, "fixed_size_binary")
    assert png.job["png_encoder"].startswith("imagecodecs-") and png.job["raw_layout"] is None


def test_the_file_stamp_holds_the_identity_and_no_path(tiny_checkpoint):
    manifest = fresh(tiny_checkpoint)
    manifest.job["made_on"] = {"device": "cpu"}  # recorded once actors run: never in the files' bytes
    stamp = manifest.file_stamp()
    assert stamp["job"] == {k: manifest.job[k] for k in mf.IDENTITY_FIELDS}
    assert sorted(stamp["model"]) == ["arch", "class_names", "fingerprint", "image_shape"]
    assert tiny_checkpoint not in str(stamp)
