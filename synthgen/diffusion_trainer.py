"""The optimisation step behind ``synthgen train --arch diffusion``: v-prediction under a cosine schedule.

Per batch: a timestep t uniform in [0, T), noise eps, x_t = sqrt(a_t) x + sqrt(1 - a_t) eps, and the network
learns v = sqrt(a_t) eps - sqrt(1 - a_t) x (Salimans & Ho, 2022) by mean squared error. With probability
LABEL_DROPOUT a label becomes the null class, so one network also predicts unconditionally and
classifier-free guidance can mix the two when sampling. The checkpoint holds an exponential moving average
of the weights (what is sampled); the trained weights and AdamW's state go in the training state, with the
random generators, so ``--resume`` continues exactly (``synthgen.trainers.Trainer``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from synthgen.models import DiffusionConfig, DiffusionSampler, build_denoiser
from synthgen.trainers import Trainer

LABEL_DROPOUT = 0.1
EMA_DECAY = 0.9995
WEIGHT_DECAY = 0.0
GRID_STEPS = 10  # the per-epoch sample grid: DDIM in 10 steps is enough to eyeball progress, and cheap


class DiffusionTrainer(Trainer):
    """Trains a :class:`synthgen.models.diffusion.Denoiser`; the checkpoint holds its EMA under a sampler."""

    arch = "diffusion"

    def __init__(self, model_config: dict[str, Any], lr: float, seed: int, device: torch.device):
        super().__init__(lr, seed, device)
        config = DiffusionConfig(**model_config)
        self.num_classes = config.num_classes
        self.trained = build_denoiser(config).to(device)
        ema = copy.deepcopy(self.trained).requires_grad_(False).eval()  # eval: no dropout in the average
        self.generator = DiffusionSampler(ema, "ddim", GRID_STEPS)
        alphas = _alphas_cumprod(config.scheduler).to(device)  # (T,)
        self.sqrt_a, self.sqrt_1ma = alphas.sqrt(), (1 - alphas).sqrt()
        self.modules = {"trained": self.trained}
        self.optimizers["unet"] = torch.optim.AdamW(self.trained.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        self.scalers["unet"] = torch.amp.GradScaler("cuda", enabled=self.amp)

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        b = len(x)
        t = torch.randint(len(self.sqrt_a), (b,), generator=self.noise, device=self.device)  # (B,)
        eps = torch.randn(x.shape, generator=self.noise, device=self.device)  # (B, C, H, W)
        a, s = self.sqrt_a[t].view(b, 1, 1, 1), self.sqrt_1ma[t].view(b, 1, 1, 1)
        x_t = a * x + s * eps  # (B, C, H, W)
        target = a * eps - s * x  # v
        if y is not None:
            drop = torch.rand(b, generator=self.noise, device=self.device) < LABEL_DROPOUT  # (B,)
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        with self.autocast():
            pred = self.trained(x_t, t, y)  # (B, C, H, W)
        loss = F.mse_loss(pred.float(), target)
        self._backward("unet", loss)
        self._update_ema()
        return {"loss": loss.item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up: early on the average follows the fast-moving weights, or short runs would save the init
        decay = min(EMA_DECAY, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.generator.denoiser.parameters(), self.trained.parameters()):
            avg.lerp_(cur, 1 - decay)
        for avg, cur in zip(self.generator.denoiser.buffers(), self.trained.buffers()):
            avg.copy_(cur)


def _alphas_cumprod(scheduler: dict[str, Any]) -> torch.Tensor:
    """The schedule's cumulative alphas, from the same diffusers scheduler config the samplers read."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler).alphas_cumprod.float()  # (T,)
