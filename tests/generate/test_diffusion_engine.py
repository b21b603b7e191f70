"""Diffusion models through the engine on real Ray: byte-identical datasets for any batch size, shard size and
worker count, a killed actor replaced, show --index, and the sampler settings as part of the dataset identity."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from gated_arch import gated_diffusion_checkpoint, wait_until_held
from test_engine import gone, images_by_index, shard_digests
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.dataset.verify import verify_dataset
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run
from synthgen.generate.show import regenerate

COUNT = 300
SAMPLER = {"sampler": "ddpm", "steps": 2, "guidance": 2.0}  # stochastic, and guided: the hardest case


def job(tmp_path, name, checkpoint, **kw) -> RunConfig:
    defaults = dict(count=COUNT, out=str(tmp_path / name), model=checkpoint, shard_size=100, seed=5,
                    progress=False, gpus=0, workers=1, batch_size=64, **SAMPLER)
    return RunConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_diffusion_checkpoint, ray_local):
    config = job(tmp_path_factory.mktemp("dref"), "ref", tiny_diffusion_checkpoint)
    assert run(config).generated == COUNT
    return config


def test_the_manifest_records_the_sampler_and_the_plain_form(reference):
    job_fields = json.loads(Path(reference.out, "manifest.json").read_text())["job"]
    assert job_fields["sampler"] == {**SAMPLER, "chunk_rows": 32}
    assert job_fields["inference_form"] == "plain"
    assert verify_dataset(reference.out).ok


def test_bytes_do_not_depend_on_batch_shard_or_workers(tmp_path, tiny_diffusion_checkpoint, reference):
    expected = images_by_index(reference.out)
    assert sorted(expected) == list(range(COUNT))
    for name, kw in {"batch100": {"batch_size": 100, "shard_size": 150},
                     "batch256-2workers": {"batch_size": 256, "shard_size": 70, "workers": 2}}.items():
        config = job(tmp_path, name, tiny_diffusion_checkpoint, **kw)
        assert run(config).actors == kw.get("workers", 1)
        assert images_by_index(config.out) == expected, name


def test_show_regenerates_the_stored_bytes(reference):
    for index in (0, 171, COUNT - 1):
        result = regenerate(reference.out, index)
        assert result.same_pixels and result.same_bytes and result.not_exact is None


def test_other_sampler_settings_are_another_dataset(tmp_path, tiny_diffusion_checkpoint, reference):
    for change in ({"steps": 3}, {"guidance": 1.5}, {"sampler": "ddim"}):
        with pytest.raises(SynthgenError, match="other settings|sampler"):
            run(job(tmp_path, "x", tiny_diffusion_checkpoint, out=reference.out, **change))
    assert shard_digests(reference.out) and verify_dataset(reference.out).ok  # untouched


def test_an_actor_killed_mid_shard_is_replaced_and_the_bytes_hold(tmp_path, tiny_diffusion_checkpoint, reference):
    # the network is gated: the first actor holds its 6th UNet pass until it is killed there
    model, gate = gated_diffusion_checkpoint(tiny_diffusion_checkpoint, tmp_path, stop_at=6, sampler=SAMPLER)
    (gate / "armed").touch()
    config = job(tmp_path, "killed", str(model), allow_import=True, shard_size=50, sampler=None, steps=None,
                 guidance=None)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(config)))
    thread.start()
    try:
        victim = wait_until_held(gate, thread.is_alive)
        while not Path(config.out, "manifest.json").exists() or not shard_digests(config.out):
            assert thread.is_alive(), "the run ended while an actor was held"
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
    finally:
        (gate / "release").touch()
    thread.join(timeout=300)
    assert not thread.is_alive() and "summary" in result and gone(victim)
    assert verify_dataset(config.out).ok
    assert images_by_index(config.out) == images_by_index(reference.out)


def test_the_cli_runs_and_shows_a_diffusion_dataset(tmp_path, tiny_diffusion_checkpoint, reference):
    out = tmp_path / "cli"
    args = ["run", "--count", str(COUNT), "--shard-size", "100", "--model", tiny_diffusion_checkpoint, "--out",
            str(out), "--seed", "5", "--gpus", "0", "--workers", "1", "--no-progress", "--sampler", "ddpm",
            "--steps", "2", "--guidance", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert images_by_index(str(out)) == images_by_index(reference.out)
    shown = CliRunner().invoke(app, ["show", str(out), "--index", "7"])
    assert shown.exit_code == 0 and "identical PNG bytes" in shown.output
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
    sheet = tmp_path / "sheet.png"
    preview = CliRunner().invoke(app, ["preview", str(out), "--out", str(sheet)])
    assert preview.exit_code == 0 and sheet.stat().st_size > 0, preview.output
