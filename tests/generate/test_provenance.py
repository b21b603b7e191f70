"""Where a dataset's bytes were made: recorded before the first shard, checked on resume, honoured by show."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.dataset.verify import verify_dataset
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run
from synthgen.generate.provenance import made_on
from synthgen.generate.show import regenerate


def config(out: Path, checkpoint: str) -> RunConfig:
    return RunConfig(count=300, out=str(out), model=checkpoint, shard_size=100, progress=False, gpus=0, workers=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_checkpoint, ray_local) -> Path:
    out = tmp_path_factory.mktemp("provenance") / "ds"
    run(config(out, tiny_checkpoint))
    return out


def unfinished_copy(made: Path, to: Path, edit) -> Path:
    """The dataset with its last shard not yet committed, and its manifest's ``made_on`` edited."""
    shutil.copytree(made, to)
    manifest = json.loads((to / "manifest.json").read_text())
    manifest["shards"], manifest["status"] = manifest["shards"][:-1], "in_progress"
    edit(manifest["job"])
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_the_manifest_records_the_device_kind_and_library_versions_but_no_shard_carries_them(made):
    where = json.loads((made / "manifest.json").read_text())["job"]["made_on"]
    assert where["device"] == "cpu" and where["torch"] == torch.__version__
    assert (where["numpy"], where["pyarrow"]) == (np.__version__, pyarrow.__version__)
    assert {"imagecodecs", "libpng", "zlib"} <= set(where) and "also_with" not in where
    stamp = json.loads(pq.read_schema(made / "data" / "shard-00000.parquet").metadata[b"synthgen"])
    assert "made_on" not in stamp["job"]  # shards made on any device carry the same metadata bytes


def test_what_an_actor_reports_reaches_the_driver_without_importing_torch_there():
    sent = pickle.dumps(made_on("cpu"))  # as Ray ships the placement probe's answer
    code = f"import pickle, sys; pickle.loads({sent!r}); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


def test_a_resume_on_another_device_kind_is_refused_before_anything_is_written(made, tmp_path, tiny_checkpoint):
    copy = unfinished_copy(made, tmp_path / "cuda", lambda job: job["made_on"].update(device="cuda"))
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(SynthgenError) as refused:
        run(config(copy, tiny_checkpoint))
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"--out {copy}: the dataset was started on cuda actors and this "
                                                "run's are on cpu")
    assert "finish it on cuda actors, or replace it with --overwrite, or write to a new --out" in line
    assert (copy / "manifest.json").read_bytes() == before


def test_a_resume_with_another_torch_says_so_and_records_both(made, tmp_path, tiny_checkpoint, capsys):
    copy = unfinished_copy(made, tmp_path / "old-torch", lambda job: job["made_on"].update(torch="2.2.0"))
    run(config(copy, tiny_checkpoint))
    warning = capsys.readouterr().err
    assert f"was started with torch 2.2.0; this run has torch {torch.__version__}: its new shards may" in warning
    where = json.loads((copy / "manifest.json").read_text())["job"]["made_on"]
    assert where["torch"] == "2.2.0" and where["also_with"] == [{"torch": torch.__version__}]
    assert verify_dataset(str(copy)).ok


def test_a_dataset_made_before_this_was_recorded_resumes_verifies_and_shows(made, tmp_path, tiny_checkpoint):
    copy = unfinished_copy(made, tmp_path / "older", lambda job: job.pop("made_on"))
    run(config(copy, tiny_checkpoint))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "made_on" not in manifest["job"]  # still "not recorded"
    assert verify_dataset(str(copy)).ok
    shown = regenerate(str(copy), 250)
    assert shown.same_bytes and shown.not_exact is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows a CUDA dataset on a machine without CUDA")
def test_show_of_a_cuda_dataset_without_cuda_says_the_comparison_is_not_byte_exact(made, tmp_path):
    copy = tmp_path / "from-gpu"
    shutil.copytree(made, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["job"]["made_on"]["device"] = "cuda"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["show", str(copy), "--index", "7"])
    assert result.exit_code == 0, result.output
    assert ("note: not a byte-exact comparison: the dataset was made on cuda and this machine has none; "
            "regenerated on the CPU") in result.output
