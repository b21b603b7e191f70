"""--sampler, --steps and --guidance: defaults, refusals in one line (before anything is written), and only for
diffusion models."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.generate.diffusion_settings import DEFAULT_STEPS, resolve

runner = CliRunner()


def test_defaults_are_deterministic_ddim_without_guidance() -> None:
    assert resolve("diffusion", True, None, None, None) == {"sampler": "ddim", "steps": DEFAULT_STEPS["ddim"],
                                                            "guidance": 1.0, "chunk_rows": 32}
    assert resolve("diffusion", True, "dpm++", None, 3)["steps"] == DEFAULT_STEPS["dpm++"]
    assert resolve("dcgan", False, None, None, None) is None


@pytest.mark.parametrize("args, message", [
    (("euler-a", None, None), "--sampler must be one of ddim, dpm++, euler, heun, ddpm"),
    (("ddim", 0, None), "--steps must be between 1 and 1000"),
    (("ddim", None, -1.0), "--guidance must be a finite number >= 0"),
    (("ddim", None, float("nan")), "--guidance must be a finite number >= 0"),
])
def test_bad_values_name_the_flag(args, message) -> None:
    with pytest.raises(SynthgenError, match="^" + message.replace("+", r"\+")):
        resolve("diffusion", True, *args)


def test_guidance_needs_a_null_class() -> None:
    with pytest.raises(SynthgenError, match="no null class"):
        resolve("diffusers", False, None, None, 2.0)
    assert resolve("diffusers", False, None, None, 1.0)["guidance"] == 1.0


@pytest.mark.parametrize("flags", [("--sampler", "ddim"), ("--steps", "10"), ("--guidance", "2")])
def test_a_dcgan_refuses_sampler_flags_in_run_and_sample(flags, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "--count", "10", "--model", tiny_checkpoint, "--out", str(out), *flags])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {flags[0]}: only diffusion models take sampler settings" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    grid = runner.invoke(app, ["sample", "--model", tiny_checkpoint, "--out", str(tmp_path / "g.png"), *flags])
    assert grid.exit_code == 1 and "only diffusion models take sampler settings" in grid.output


def test_sample_draws_a_diffusion_grid(tiny_diffusion_checkpoint, tmp_path) -> None:
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--model", tiny_diffusion_checkpoint, "--out", str(out), "--count", "4",
                                 "--sampler", "heun", "--steps", "2", "--guidance", "1.5"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "8 images" in result.output
