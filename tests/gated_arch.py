"""A generator that stops at a chosen forward pass, so a test can stop or kill a run at a known point.

``gated_factory`` builds a DCGAN (the weights of conftest's tiny checkpoint fit it, and it draws the same images)
from a ``model_config`` that also names a ``gate`` directory and a pass number ``stop_at``. While
``gate/armed`` exists, the first process whose own count of forward passes reaches ``stop_at`` takes it (renames
it to ``gate/held-<pid>``, so one process ever stops) and waits until ``gate/release`` appears. Load the
checkpoint with ``allow_import=True`` (``--allow-custom-arch``), with this directory on the actors' PYTHONPATH.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from synthgen.checkpoint import CONFIG_FILE
from synthgen.models import DCGANConfig, DCGANGenerator

ARCH = "gated_arch:gated_factory"
HOLD_LIMIT_S = 180  # a run whose test failed before releasing the gate must not wait forever


class GatedGenerator(DCGANGenerator):
    """A DCGAN whose forward pass ``stop_at`` (counted in this process) waits at the gate while it is armed."""

    def __init__(self, config: DCGANConfig, gate: str, stop_at: int):
        super().__init__(config)
        self.gate, self.stop_at = Path(gate), stop_at
        self.passes = itertools.count(1)  # next() is atomic under the GIL: lanes may call forward at once

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if next(self.passes) >= self.stop_at:
            self._hold_if_armed()
        return super().forward(z, labels)  # (B, C, H, W)

    def _hold_if_armed(self) -> None:
        try:
            os.rename(self.gate / "armed", self.gate / f"held-{os.getpid()}")  # atomic: one taker
        except FileNotFoundError:
            return
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not (self.gate / "release").exists():
            if time.monotonic() > deadline:  # a shard that fails makes the run fail: no test passes this way
                raise RuntimeError(f"gated_arch: held {HOLD_LIMIT_S} s, neither released nor killed")
            time.sleep(0.02)


def gated_factory(config: dict[str, Any]) -> GatedGenerator:
    gate, stop_at = config.pop("gate"), config.pop("stop_at")
    return GatedGenerator(DCGANConfig(**config), gate, stop_at)


def gated_checkpoint(tiny_checkpoint: str, out: Path, stop_at: int) -> tuple[Path, Path]:
    """A copy of the tiny DCGAN checkpoint as a gated model; returns (checkpoint dir, gate dir), gate unarmed."""
    gate = out / "gate"
    gate.mkdir(parents=True)
    model = out / "gated-model"
    shutil.copytree(tiny_checkpoint, model)
    config = json.loads((model / CONFIG_FILE).read_text())
    config["arch"] = ARCH
    config["model_config"].update(gate=str(gate), stop_at=stop_at)
    (model / CONFIG_FILE).write_text(json.dumps(config))
    return model, gate


def wait_until_held(gate: Path, alive, timeout_s: float = 120) -> int:
    """The pid of the process held at ``gate``, once one is; ``alive()`` false means the run ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = list(gate.glob("held-*"))
        if held:
            return int(held[0].name.removeprefix("held-"))
        assert alive(), "the run ended before any forward pass reached the gate"
        time.sleep(0.02)
    raise AssertionError(f"no process reached the gate in {timeout_s:.0f} s")


def gated_diffusion_factory(config: dict[str, Any]):
    """A diffusion model whose network's pass ``stop_at`` waits at the gate, sampled with ``config["sampler"]``."""
    from synthgen.models import DiffusionConfig, DiffusionSampler
    from synthgen.models.diffusion import Denoiser

    class GatedDenoiser(Denoiser):
        def forward(self, x, t, labels):
            if next(self.passes) >= self.stop_at:
                GatedGenerator._hold_if_armed(self)
            return super().forward(x, t, labels)

    gate, stop_at, sampler = config.pop("gate"), config.pop("stop_at"), config.pop("sampler")
    model_config = DiffusionConfig(**config)
    denoiser = GatedDenoiser(model_config.unet_config(), model_config.scheduler, model_config.num_classes,
                             model_config.num_classes or None)
    denoiser.gate, denoiser.stop_at, denoiser.passes = Path(gate), stop_at, itertools.count(1)
    return DiffusionSampler(denoiser, **sampler)


def gated_diffusion_checkpoint(checkpoint: str, out: Path, stop_at: int, sampler: dict) -> tuple[Path, Path]:
    """A copy of a diffusion checkpoint as a gated model (see :func:`gated_checkpoint`). An import-path
    architecture is not one synthgen knows as diffusion, so it takes no --sampler flags: the model samples
    with ``sampler`` (DiffusionSampler's arguments) built in, and its latent_dim says how much noise that takes."""
    from synthgen.models.diffusion_sampler import noise_injections

    model, gate = gated_checkpoint(checkpoint, out, stop_at)
    config = json.loads((model / CONFIG_FILE).read_text())
    config["arch"] = "gated_arch:gated_diffusion_factory"
    config["model_config"]["sampler"] = sampler
    config["latent_dim"] *= 1 + noise_injections(sampler["sampler"], sampler["steps"])
    (model / CONFIG_FILE).write_text(json.dumps(config))
    return model, gate
