"""A diffusion model as a synthgen generator: ``sampler(z, labels) -> (B, C, H, W)`` in [-1, 1].

The engine's contract is that image i's noise is a row of z made from image i's own Philox stream. A sampler
therefore takes ALL its randomness from z: the first C*H*W values are the initial noise, and a stochastic
sampler's k-th noise injection is the (k+1)-th slice of C*H*W, so ``latent_dim = C*H*W * (1 + injections)``.
No torch or diffusers generator is ever drawn from, so image i does not depend on its batch (diffusers itself
makes no such promise: its issues #2659, #612, #3158).

The UNet runs on chunks of exactly ``chunk_rows`` rows (the last one padded): every forward pass has the same
shape whatever the caller's batch, so CPU kernels that pick another path for another shape cannot move a bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from synthgen.models.diffusion import Denoiser

# name -> (diffusers scheduler class, extra scheduler config, noise injections per step)
SAMPLERS: dict[str, tuple[str, dict[str, Any], int]] = {
    "ddim": ("DDIMScheduler", {}, 0),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 0),
    "euler": ("EulerDiscreteScheduler", {}, 0),
    "heun": ("HeunDiscreteScheduler", {}, 0),
    "ddpm": ("DDIMScheduler", {}, 1),  # DDIM with eta = 1 is ancestral DDPM sampling on the chosen steps
}
CHUNK_ROWS = 32


def noise_injections(name: str, steps: int) -> int:
    """How many C*H*W slices of noise beyond the initial one ``name`` draws in ``steps`` steps."""
    return SAMPLERS[name][2] * steps


class DiffusionSampler(nn.Module):
    """A denoiser and one diffusers sampler, run as a synthgen generator.

    Args:
        denoiser: the trained network.
        sampler: a key of SAMPLERS.
        steps: sampling steps (Heun evaluates the network about twice per step).
        guidance: classifier-free guidance scale; 1 = the conditional prediction alone (one network pass).
        chunk_rows: rows per network pass (fixed, so the pass shape never depends on the batch).
    """

    def __init__(self, denoiser: Denoiser, sampler: str = "ddim", steps: int = 50, guidance: float = 1.0,
                 chunk_rows: int = CHUNK_ROWS):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if steps < 1 or chunk_rows < 1:
            raise ValueError(f"steps and chunk_rows must be at least 1, got {steps} and {chunk_rows}")
        if guidance != 1.0 and denoiser.null_class is None:
            raise ValueError("guidance needs a model trained with a null class (label dropout); this one has none")
        self.denoiser = denoiser
        self.sampler, self.steps, self.guidance, self.chunk_rows = sampler, steps, float(guidance), chunk_rows
        c, h, w = denoiser.image_shape
        self.image_size = c * h * w
        self.latent_dim = self.image_size * (1 + noise_injections(sampler, steps))
        self._prototypes: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        """What the engine reads (``latent_dim``) and the settings that decide the bytes."""
        return {"latent_dim": self.latent_dim, "sampler": self.sampler, "steps": self.steps,
                "guidance": self.guidance, "chunk_rows": self.chunk_rows}

    def with_settings(self, sampler: str, steps: int, guidance: float, chunk_rows: int = CHUNK_ROWS
                      ) -> DiffusionSampler:
        """The same network (shared, not copied) with other sampler settings."""
        return DiffusionSampler(self.denoiser, sampler, steps, guidance, chunk_rows)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.denoiser.num_classes and labels is None:
            raise ValueError("this diffusion model is class-conditional: pass labels")
        out = []
        for start in range(0, len(z), self.chunk_rows):
            zc = z[start:start + self.chunk_rows]  # (n, latent)
            yc = labels[start:start + self.chunk_rows] if labels is not None else None
            n = len(zc)
            if n < self.chunk_rows:  # padding rows are sampled and discarded
                zc = torch.cat([zc, zc.new_zeros(self.chunk_rows - n, zc.shape[1])])
                yc = torch.cat([yc, yc.new_zeros(self.chunk_rows - n)]) if yc is not None else None
            out.append(self._sample(zc, yc)[:n])
        return torch.cat(out)  # (B, C, H, W) in [-1, 1]

    def _sample(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        scheduler = copy.deepcopy(self._prototype(z.device))  # its step state is per call: lanes share the model
        shape = (len(z), *self.denoiser.image_shape)
        x = z[:, : self.image_size].float().reshape(shape) * scheduler.init_noise_sigma  # (B, C, H, W)
        stochastic = SAMPLERS[self.sampler][2] > 0
        for k, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(x, t)  # (B, C, H, W)
            pred = self._predict(model_in, t, labels)  # (B, C, H, W) float32
            if stochastic:  # slice k+1 of this image's own noise
                noise = z[:, self.image_size * (k + 1): self.image_size * (k + 2)].float().reshape(shape)
                x = scheduler.step(pred, t, x, eta=1.0, variance_noise=noise).prev_sample
            else:
                x = scheduler.step(pred, t, x).prev_sample
        return x.clamp(-1, 1)

    def _predict(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.guidance == 1.0 or labels is None:
            return self.denoiser(x, t, labels).float()
        null = torch.full_like(labels, self.denoiser.null_class)
        both = self.denoiser(torch.cat([x, x]), t, torch.cat([labels, null])).float()  # (2B, C, H, W)
        cond, uncond = both.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _prototype(self, device: torch.device):
        """The scheduler with its timesteps set, made once per device; each call works on a copy."""
        key = str(device)
        if key not in self._prototypes:
            import diffusers
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.set_verbosity_error()  # a foreign scheduler config's unused keys are fine
            cls_name, extra, _ = SAMPLERS[self.sampler]
            scheduler = getattr(diffusers, cls_name).from_config({**self.denoiser.scheduler_config, **extra})
            scheduler.set_timesteps(self.steps, device=device)
            self._prototypes[key] = scheduler
        return self._prototypes[key]

    def shape_probe(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One network pass on the initial noise: the output shape of a full sample, at 1/steps the cost
        (checkpoint loading checks shapes with it)."""
        x = z[:, : self.image_size].reshape(len(z), *self.denoiser.image_shape)
        return self.denoiser(x, torch.tensor(0, device=z.device), labels)
