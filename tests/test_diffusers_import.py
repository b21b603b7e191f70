"""A local diffusers folder as --model: UNet2DModel folders and pipeline folders, unconditional and
class-conditional, through the checkpoint loader, the engine and show; pickled weights refused unopened."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from synthgen.checkpoint import inspect_checkpoint, load_checkpoint, read_config
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.generate.diffusion_settings import for_checkpoint, with_sampler
from synthgen.generate.rng import normal_from_seeds

TINY_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": (8, 16),
             "layers_per_block": 1, "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
             "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8, "attention_head_dim": 8}


def save_unet(out: Path, classes: int = 0, pipeline: bool = False) -> Path:
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(1)
    unet = UNet2DModel(**TINY_UNET, num_class_embeds=classes or None)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    if pipeline:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    else:
        unet.save_pretrained(out, safe_serialization=True)
        DDIMScheduler.from_config(scheduler.config).save_pretrained(out)  # scheduler_config.json beside it
    return out


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory) -> Path:
    return save_unet(tmp_path_factory.mktemp("hf") / "unet")


def test_a_unet_folder_loads_as_an_unconditional_model(unet_dir: Path) -> None:
    config, fingerprint = inspect_checkpoint(str(unet_dir))  # the driver's path: no torch work
    assert config.arch == "diffusers" and config.image_shape == [1, 16, 16] and config.class_names == []
    ckpt = load_checkpoint(str(unet_dir))
    assert ckpt.fingerprint == fingerprint and ckpt.config.latent_dim == 256


def test_ddim_matches_a_hand_loop_of_diffusers(unet_dir: Path) -> None:
    # synthgen's sampler is diffusers' DDIM loop; only where the noise comes from differs
    from diffusers import DDIMScheduler, UNet2DModel

    ckpt = load_checkpoint(str(unet_dir))
    model = with_sampler(ckpt.model, for_checkpoint(ckpt.config, "ddim", 5, None))
    z = torch.from_numpy(normal_from_seeds(np.arange(3, dtype=np.uint64), 256))  # (3, 256)
    with torch.no_grad():
        ours = model(z)
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True).eval()
        scheduler = DDIMScheduler.from_pretrained(unet_dir)
        scheduler.set_timesteps(5)
        x = z.reshape(3, 1, 16, 16)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-5, rtol=0)


def test_a_class_conditional_pipeline_folder_runs_and_shows(tmp_path: Path, ray_local) -> None:
    folder = save_unet(tmp_path / "pipe", classes=3, pipeline=True)
    assert (folder / "model_index.json").is_file() and (folder / "unet").is_dir()
    assert read_config(str(folder)).class_names == ["0", "1", "2"]
    out = tmp_path / "ds"
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--count", "40", "--shard-size", "20", "--model", str(folder), "--out",
                                 str(out), "--gpus", "0", "--workers", "1", "--no-progress", "--steps", "3"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["show", str(out), "--index", "38"])
    assert shown.exit_code == 0 and "identical PNG bytes" in shown.output, shown.output
    # which embedding (if any) was trained as the null class is not recorded: guidance is refused
    guided = runner.invoke(app, ["run", "--count", "40", "--model", str(folder), "--out", str(tmp_path / "g"),
                                 "--guidance", "2"])
    assert guided.exit_code == 1 and "no null class" in guided.output and "Traceback" not in guided.output


class _Payload:
    """Unpickling this creates the marker file: proof that the pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt"])
def test_pickled_weights_are_refused_without_being_opened(unet_dir: Path, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(unet_dir, folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (folder / name).write_bytes(pickle.dumps({"conv_in.weight": _Payload(str(marker))}))
    for call in (read_config, inspect_checkpoint, load_checkpoint):
        with pytest.raises(SynthgenError, match="only pickled weights") as err:
            call(str(folder))
        assert "\n" not in str(err.value)
    assert not marker.exists()
    result = CliRunner().invoke(app, ["sample", "--model", str(folder), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 1 and "only pickled weights" in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused_unexecuted(unet_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "disguised"
    shutil.copytree(unet_dir, folder)
    marker = tmp_path / "pwned"
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    with pytest.raises(SynthgenError, match="pickle"):
        load_checkpoint(str(folder))
    assert not marker.exists()


def test_other_diffusers_models_and_missing_schedules_are_one_line(unet_dir: Path, tmp_path: Path) -> None:
    no_schedule = tmp_path / "no-schedule"
    shutil.copytree(unet_dir, no_schedule)
    (no_schedule / "scheduler_config.json").unlink()
    with pytest.raises(SynthgenError, match="scheduler_config.json"):
        read_config(str(no_schedule))
    other = tmp_path / "other"
    shutil.copytree(unet_dir, other)
    config = (other / "config.json").read_text().replace('"UNet2DModel"', '"UNet2DConditionModel"')
    (other / "config.json").write_text(config)
    with pytest.raises(SynthgenError, match="not a UNet2DModel"):
        read_config(str(other))


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_submitted_job_carries_the_whole_diffusers_folder(tmp_path: Path, pipeline: bool) -> None:
    from synthgen.cluster.staging import stage_job
    from synthgen.generate.config import RunConfig

    folder = save_unet(tmp_path / "m", classes=2, pipeline=pipeline)
    dest = tmp_path / "workdir"
    dest.mkdir()
    staged = stage_job(RunConfig(count=10, model=str(folder), out="s3://b/x", steps=3), dest)
    copy = dest / staged.model
    assert read_config(str(copy)).model_config == read_config(str(folder)).model_config
    assert inspect_checkpoint(str(copy))[1] == inspect_checkpoint(str(folder))[1]
    with pytest.raises(SynthgenError, match="no null class"):  # refused here, before anything is uploaded
        stage_job(RunConfig(count=10, model=str(folder), out="s3://b/x", guidance=3), tmp_path / "w2")
