"""Temporaries an actor killed mid-shard leaves: removed by the run that finishes, listed by `synthgen verify`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import synthgen.generate.engine as engine
from synthgen import storage
from synthgen.cli import app
from synthgen.dataset.verify import verify_dataset
from synthgen.generate.config import RunConfig


def crash_leftover(out: Path, shard_file: str) -> Path:
    """A partial shard under the name storage.open_atomic gives it, as an actor SIGKILLed while writing leaves it."""
    path = Path(storage.temp_sibling(str(out / shard_file)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1" + b"\0" * 4096)  # a Parquet file cut short: its header and no footer
    return path


def config(out: Path, checkpoint: str) -> RunConfig:
    return RunConfig(count=300, out=str(out), model=checkpoint, shard_size=100, progress=False, gpus=0, workers=1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_checkpoint, ray_local) -> Path:
    out = tmp_path_factory.mktemp("strays") / "ds"
    engine.run(config(out, tiny_checkpoint))
    return out


def test_a_run_that_finishes_removes_the_temporaries_its_killed_actors_left(tmp_path, tiny_checkpoint, ray_local,
                                                                            monkeypatch):
    out = tmp_path / "ds"
    leftovers = []
    start_output = engine.write_output

    def start_then_lose_an_actor(loc, manifest, replace):
        start_output(loc, manifest, replace)  # the run has started: its start-up clean-up is behind it
        leftovers.append(crash_leftover(out, "data/shard-00001.parquet"))

    monkeypatch.setattr(engine, "write_output", start_then_lose_an_actor)
    engine.run(config(out, tiny_checkpoint))
    assert leftovers and not leftovers[0].exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(storage.TMP_PREFIX)]
    report = verify_dataset(str(out))
    assert report.ok and report.strays == []


def test_verify_lists_every_stray_file_in_the_datasets_folders(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    assert verify_dataset(str(copy)).strays == []
    temporary = crash_leftover(copy, "data/shard-00002.parquet")
    (copy / "data" / "notes.csv").write_text("mine")
    shutil.copy(copy / "data" / "shard-00000.parquet", copy / "data" / "shard-00007.parquet")
    result = CliRunner().invoke(app, ["verify", str(copy)])
    assert result.exit_code == 0, result.output  # the shards are intact: strays are listed, not failed
    strays = [line for line in result.output.splitlines() if line.startswith("stray: ")]
    assert strays == [f"stray: data/{name} (not part of the dataset)"
                      for name in sorted([temporary.name, "notes.csv", "shard-00007.parquet"])]
