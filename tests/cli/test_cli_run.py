"""`synthgen run / verify / show` through Typer's CliRunner: happy path, refusals and bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from synthgen.checkpoint import CheckpointConfig, save_checkpoint
from synthgen.cli import app
from synthgen.data import SyntheticImageDataset
from synthgen.dataset.format import raw_pixels
from synthgen.generate.plan import INFERENCE_FORM
from synthgen.models import DCGANConfig, DCGANGenerator, config_to_dict

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def run_args(model: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--count", "300", "--shard-size", "100", "--model", model, "--out", str(out),
            "--gpus", "0", "--workers", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint, ray_local) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ds"
    result = invoke(*run_args(tiny_checkpoint, out, "--labels", "malignant=0.25,normal=0.75"))
    assert result.exit_code == 0, result.output
    assert "done: 300 images" in result.output
    return out


def test_a_finished_dataset_run_again_has_nothing_to_do(dataset, tiny_checkpoint):
    again = invoke(*run_args(tiny_checkpoint, dataset, "--labels", "malignant=0.25,normal=0.75"))
    assert again.exit_code == 0
    assert re.fullmatch(rf"nothing to do: {re.escape(str(dataset))} already holds all 300 images \(\S+ \S+\)\n",
                        again.output)


def test_fp16_on_cpu_actors_is_warned_about_and_still_runs(tiny_checkpoint, tmp_path):
    result = invoke(*run_args(tiny_checkpoint, tmp_path / "fp16", "--precision", "fp16"))
    assert result.exit_code == 0 and "done: 300 images" in result.output, result.output
    assert "warning: --precision fp16 on CPU actors: torch's fp16 CPU path ran ~25x slower" in result.output
    plain = invoke(*run_args(tiny_checkpoint, tmp_path / "bf16", "--precision", "bf16"))
    assert plain.exit_code == 0 and "warning" not in plain.output, plain.output


def test_run_verify_show(dataset):
    verified = invoke("verify", str(dataset))
    assert verified.exit_code == 0 and "300 rows in 3 shards" in verified.output
    assert "malignant=75, normal=225" in verified.output
    shown = invoke("show", str(dataset), "--index", "123", "--out", str(dataset.parent / "x.png"))
    assert shown.exit_code == 0 and "identical PNG bytes" in shown.output
    assert (dataset.parent / "x.png").stat().st_size > 0
    card = (dataset / "README.md").read_text()
    assert "| normal | 225 |" in card


def test_rerun_of_a_complete_dataset_changes_nothing(dataset, tiny_checkpoint):
    before = {p: p.stat().st_mtime_ns for p in (dataset / "data").iterdir()}
    result = invoke(*run_args(tiny_checkpoint, dataset, "--labels", "malignant=0.25,normal=0.75"))
    assert result.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (dataset / "data").iterdir()} == before


def test_other_settings_are_refused_unless_overwrite(dataset, tiny_checkpoint, tmp_path):
    result = invoke(*run_args(tiny_checkpoint, dataset, "--seed", "5"))
    assert result.exit_code == 1
    assert "holds a dataset made with other settings" in result.output and "seed: 0 there, 5 now" in result.output
    copy = tmp_path / "copy"
    assert invoke(*run_args(tiny_checkpoint, copy)).exit_code == 0
    assert invoke(*run_args(tiny_checkpoint, copy, "--seed", "5", "--overwrite")).exit_code == 0
    assert invoke("verify", str(copy)).exit_code == 0


def test_overwrite_refuses_to_delete_a_users_file_inside_the_dataset(dataset, tiny_checkpoint, tmp_path):
    copy = tmp_path / "with-notes"
    shutil.copytree(dataset, copy)
    (copy / "data" / "labels-by-hand.csv").write_text("precious")
    shards = sorted(p.name for p in (copy / "data").iterdir())
    result = invoke(*run_args(tiny_checkpoint, copy, "--seed", "5", "--overwrite"))
    assert result.exit_code == 1
    assert "would delete files synthgen did not write (data/labels-by-hand.csv)" in result.output
    assert sorted(p.name for p in (copy / "data").iterdir()) == shards  # nothing deleted
    assert invoke("verify", str(copy)).exit_code == 0
    (copy / "data" / "labels-by-hand.csv").unlink()
    assert invoke(*run_args(tiny_checkpoint, copy, "--seed", "5", "--overwrite")).exit_code == 0


@pytest.mark.parametrize("field, before, now", [
    ("inference_form", "plain", INFERENCE_FORM),  # synthgen 0.1.0 sampled the model as loaded
    ("parquet_compression", "snappy", "zstd"),  # before 0.3.0
    ("parquet_dictionary", "pyarrow default", "none"),  # before 0.8.0
])
def test_a_dataset_from_an_older_release_is_not_resumed(dataset, tiny_checkpoint, tmp_path, field, before, now):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["job"][field]  # as the older release wrote it: the field was not recorded yet
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = invoke(*run_args(tiny_checkpoint, old, "--labels", "malignant=0.25,normal=0.75"))
    assert result.exit_code == 1
    assert f"{field}: '{before}' there, '{now}' now" in result.output
    assert sorted(p.name for p in (old / "data").iterdir()) == sorted(p.name for p in (dataset / "data").iterdir())


def as_written_by_0_3(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["job"]["raw_layout"]  # not recorded before 0.4.0 (raw pixels were a fixed_shape_tensor)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_raw_pixels_of_an_older_release_are_not_resumed_but_png_datasets_are(dataset, tiny_checkpoint, tmp_path):
    raw = tmp_path / "raw"
    assert invoke(*run_args(tiny_checkpoint, raw, "--encoding", "raw")).exit_code == 0
    as_written_by_0_3(raw)
    result = invoke(*run_args(tiny_checkpoint, raw, "--encoding", "raw"))
    assert result.exit_code == 1
    assert "raw_layout: 'fixed_shape_tensor' there, 'fixed_size_binary' now" in result.output

    png = tmp_path / "png"  # the layout of raw pixels says nothing about a PNG dataset
    shutil.copytree(dataset, png)
    as_written_by_0_3(png)
    result = invoke(*run_args(tiny_checkpoint, png, "--labels", "malignant=0.25,normal=0.75"))
    assert result.exit_code == 0, result.output


def rewrite_raw_shards_as_0_3(out: Path) -> None:
    """Store each shard's raw pixels as synthgen 0.2-0.3 did (Arrow's fixed_shape_tensor, no shape metadata),
    and record the new files' checksums, as that release's manifest would have."""
    as_written_by_0_3(out)
    manifest = json.loads((out / "manifest.json").read_text())
    for record in manifest["shards"]:
        path = out / record["file"]
        table = pq.read_table(path)
        pixels = raw_pixels(table.column("image"), table.schema.field("image"))  # (N, H, W, C)
        tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(pixels))
        table = table.set_column(0, pa.field("image", tensors.type), tensors)
        pq.write_table(table, path, compression="zstd")
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        record["bytes"] = path.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_raw_pixels_of_an_older_release_still_verify_load_and_show(tiny_checkpoint, tmp_path):
    now, old = tmp_path / "now", tmp_path / "old"
    assert invoke(*run_args(tiny_checkpoint, now, "--encoding", "raw")).exit_code == 0
    shutil.copytree(now, old)
    rewrite_raw_shards_as_0_3(old)
    assert isinstance(pq.read_schema(old / "data" / "shard-00001.parquet").field("image").type, pa.FixedShapeTensorType)
    verified = invoke("verify", str(old))
    assert verified.exit_code == 0 and "300 rows in 3 shards" in verified.output, verified.output
    shown = invoke("show", str(old), "--index", "123")
    assert shown.exit_code == 0 and "identical pixels" in shown.output, shown.output
    then, current = SyntheticImageDataset(str(old)), SyntheticImageDataset(str(now))
    assert len(then) == len(current) == 300
    for i in (0, 99, 100, 123, 299):
        (x_then, y_then), (x_now, y_now) = then[i], current[i]
        assert y_then == y_now and torch.equal(x_then, x_now)


def test_foreign_directory_is_refused_and_left_alone(tiny_checkpoint, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for extra in ((), ("--overwrite",)):
        result = invoke(*run_args(tiny_checkpoint, out, *extra))
        assert result.exit_code == 1 and "not a synthgen dataset" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_synthgen_names_without_a_manifest_are_not_ours(tiny_checkpoint, tmp_path, ray_local):
    out = tmp_path / "project"  # a user's folder that happens to use the names synthgen writes
    (out / "data").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    (out / "data" / "scans.npz").write_bytes(b"precious")
    for extra in ((), ("--overwrite",)):
        result = invoke(*run_args(tiny_checkpoint, out, *extra))
        assert result.exit_code == 1 and "not a synthgen dataset" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]
    assert (out / "README.md").read_text() == "my notes"
    assert (out / "data" / "scans.npz").read_bytes() == b"precious"


def test_a_damaged_manifest_is_refused_and_replaced_with_overwrite(dataset, tiny_checkpoint, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    (damaged / "manifest.json").write_text("{truncated")
    refused = invoke(*run_args(tiny_checkpoint, damaged))
    assert refused.exit_code == 1 and "not a valid synthgen manifest" in refused.output
    assert invoke(*run_args(tiny_checkpoint, damaged, "--overwrite")).exit_code == 0
    assert invoke("verify", str(damaged)).exit_code == 0


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = DCGANConfig(latent_dim=8, width=16)
    out = tmp_path_factory.mktemp("uncond")
    save_checkpoint(str(out), DCGANGenerator(cfg).eval(),
                    CheckpointConfig("dcgan", config_to_dict(cfg), [1, 28, 28], 8, []))
    return str(out)


@pytest.mark.parametrize("extra,message", [
    (("--count", "0"), "--count must be at least 1"),
    (("--count", str(2**63)), "--count must be at most 2**63-1"),
    (("--shard-size", "-1"), "--shard-size must be at least 1"),
    (("--labels", "benign=1"), "unknown class 'benign'; this model's classes are malignant, normal"),
    (("--format", "jpeg"), "--format must be one of parquet, png"),
    (("--precision", "fp8"), "--precision must be one of"),
    (("--batch-size", "0"), "--batch-size must be at least 1"),
    (("--seed", "-1"), "--seed must be between"),
    (("--format", "png", "--encoding", "raw"), "--encoding must be png or raw (raw only with --format parquet)"),
    (("--workers", "0"), "--workers must be >= 1"),  # checked before the output directory is made
    (("--gpus", "-1"), "--gpus must be >= 0"),
    (("--actors-per-gpu", "0"), "--actors-per-gpu must be >= 1"),
])
def test_bad_flags(extra, message, tiny_checkpoint, tmp_path):
    result = invoke(*run_args(tiny_checkpoint, tmp_path / "never"), *extra)
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("extra, message", [
    (("--gpus", "1"), "--gpus 1: the cluster has 0 GPU(s) and 2 CPU(s)"),
    (("--workers", "3"), "--workers 3: the cluster has 0 GPU(s) and 2 CPU(s)"),
])
def test_more_than_the_cluster_has_is_refused_and_leaves_nothing(extra, message, tiny_checkpoint, tmp_path,
                                                                 ray_local):
    refused = invoke(*run_args(tiny_checkpoint, tmp_path / "new"), *extra)
    assert refused.exit_code == 1 and message in refused.output
    assert not (tmp_path / "new").exists()
    # a dataset in progress keeps its manifest and shards when a resume is refused
    partial = tmp_path / "partial"
    assert invoke(*run_args(tiny_checkpoint, partial, "--count", "20", "--shard-size", "10")).exit_code == 0
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["status"] = "in_progress"
    (partial / manifest["shards"].pop()["file"]).unlink()
    (partial / "manifest.json").write_text(json.dumps(manifest))
    assert invoke(*run_args(tiny_checkpoint, partial, "--count", "20", "--shard-size", "10"), *extra).exit_code == 1
    assert [s["shard_id"] for s in json.loads((partial / "manifest.json").read_text())["shards"]] == [0]
    # nor does --overwrite delete anything when the cluster refuses the run that would replace it
    other = invoke(*run_args(tiny_checkpoint, partial, "--count", "30", "--overwrite"), *extra)
    assert other.exit_code == 1 and message in other.output
    assert json.loads((partial / "manifest.json").read_text())["job"]["count"] == 20
    assert (partial / "data" / "shard-00000.parquet").exists()
    assert invoke(*run_args(tiny_checkpoint, partial, "--count", "20", "--shard-size", "10")).exit_code == 0


def test_bad_model_and_out(tmp_path, unconditional, ray_local):
    missing = invoke(*run_args(str(tmp_path / "nope"), tmp_path / "o1"))
    assert missing.exit_code == 1 and "nope: no such checkpoint directory" in missing.output
    labels = invoke(*run_args(unconditional, tmp_path / "o2", "--labels", "normal"))
    assert labels.exit_code == 1 and "unconditional" in labels.output
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    unwritable = invoke(*run_args(unconditional, blocker / "ds"))
    assert unwritable.exit_code == 1 and "cannot write there" in unwritable.output
    assert invoke(*run_args(unconditional, tmp_path / "o3")).exit_code == 0  # unconditional works


def test_verify_and_show_bad_input(tmp_path, dataset):
    assert "not a synthgen dataset" in invoke("verify", str(tmp_path)).output
    out_of_range = invoke("show", str(dataset), "--index", "300")
    assert out_of_range.exit_code == 1 and "--index must be between 0 and 299" in out_of_range.output


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["job"].pop("count"), "no 'count' field"),
    (lambda m: m["job"].update(shard_size=0), "job shard_size must be a positive integer, got 0"),
    (lambda m: m["model"].pop("fingerprint"), "no 'fingerprint' field"),
])
def test_a_hand_edited_manifest_is_one_error_line(dataset, tmp_path, edit, message):
    edited = tmp_path / "edited"
    shutil.copytree(dataset, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    edit(manifest)
    (edited / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", str(edited))
    assert result.exit_code == 1 and "not a valid synthgen manifest" in result.output and message in result.output
