"""A class-conditional denoising UNet (Hugging Face diffusers' ``UNet2DModel``) and its config.

The network predicts v (Salimans & Ho, 2022) under a cosine noise schedule; ``scheduler`` in the config is the
diffusers scheduler config it was trained with, so every diffusers sampler reads the same schedule. Class
labels go through ``num_class_embeds = num_classes + 1`` embeddings: the extra one is the null class that
classifier-free guidance's label dropout trains (Ho & Salimans, 2022). Why v-prediction + cosine rather than EDM:
docs/design.md.

diffusers is imported when a network is built, not when this module is, so ``synthgen --help`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from typing import Any

import torch
from torch import nn

from synthgen.models.dcgan import image_hw

SUPPORTED_SIZES = (28, 32, 64, 128, 256)  # the square sizes tested; other H x W that diffusion_levels takes work too
# channel multipliers by number of levels: the lowest resolution is 8 pixels or fewer, where attention runs
DEFAULT_MULTS = {3: (1, 2, 2), 4: (1, 2, 2, 2), 5: (1, 1, 2, 2, 2), 6: (1, 1, 2, 2, 2, 2)}
TRAIN_TIMESTEPS = 1000
MAX_SIDE = 512


def diffusion_levels(height: int, width: int) -> int | None:
    """UNet levels for an H x W image: halve until the shorter side is 8 px or less (28 -> 14 -> 7, 32 -> 16 ->
    8, 256x192 -> ... -> 8x6); None when a side is under 16 or over MAX_SIDE px or does not halve exactly."""
    if min(height, width) < 16 or max(height, width) > MAX_SIDE:
        return None
    levels, side = 1, min(height, width)
    while side > 8:
        side, levels = side / 2, levels + 1
    step = 2 ** (levels - 1)
    return levels if height % step == 0 and width % step == 0 and levels in DEFAULT_MULTS else None


def default_scheduler() -> dict[str, Any]:
    """The training schedule, as a diffusers scheduler config: cosine betas, v-prediction, and "trailing"
    timesteps, which reach the pure-noise end when sampling in few steps (Lin et al., 2024)."""
    return {"num_train_timesteps": TRAIN_TIMESTEPS, "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": False}


@dataclass
class DiffusionConfig:
    """Architecture of a diffusion model; saved with the weights, so every field must be JSON-serialisable."""

    image_size: int | list[int] = 28  # a square's side, or [H, W]
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional; else labels 0..K-1 and the null class K
    width: int = 64  # channels of the first level
    channel_mult: list[int] | None = None  # per level; default DEFAULT_MULTS[image_size]
    layers_per_block: int = 2
    attention_head_dim: int = 32
    dropout: float = 0.1
    scheduler: dict[str, Any] = field(default_factory=default_scheduler)

    def __post_init__(self) -> None:
        levels = diffusion_levels(*image_hw(self.image_size))
        if levels is None:
            raise ValueError(f"diffusion image_size {self.image_size} is not supported: sides of 16-{MAX_SIDE} px "
                             "that halve exactly down to 8 px or fewer (e.g. 28, 32, 64, 128, 256, 256x192)")
        if self.channels not in (1, 3):
            raise ValueError(f"diffusion channels must be 1 or 3, got {self.channels}")
        if self.num_classes < 0 or self.width < 4 or self.layers_per_block < 1:
            raise ValueError("diffusion num_classes must be >= 0, width >= 4 and layers_per_block >= 1")
        self.channel_mult = list(self.channel_mult or DEFAULT_MULTS[levels])
        if any(side % 2 ** (len(self.channel_mult) - 1) for side in image_hw(self.image_size)):
            raise ValueError(f"{len(self.channel_mult)} levels cannot halve {self.image_size} px exactly")

    @property
    def latent_dim(self) -> int:
        """Noise per image for a deterministic sampler: one image's worth."""
        height, width = image_hw(self.image_size)
        return self.channels * height * width

    def unet_config(self) -> dict[str, Any]:
        """The diffusers ``UNet2DModel`` config: attention in the last down block, the mid block and the
        first up block, i.e. at the lowest resolution only."""
        chans = [self.width * m for m in self.channel_mult]
        levels = len(chans)
        return {
            "sample_size": self.image_size if isinstance(self.image_size, int) else list(self.image_size),
            "in_channels": self.channels, "out_channels": self.channels,
            "block_out_channels": chans, "layers_per_block": self.layers_per_block,
            "down_block_types": ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1),
            "norm_num_groups": gcd(32, min(chans)), "attention_head_dim": min(self.attention_head_dim, chans[-1]),
            "dropout": self.dropout, "num_class_embeds": self.num_classes + 1 if self.num_classes else None,
        }


class Denoiser(nn.Module):
    """``(x_t, t, labels) -> model output`` of a diffusers ``UNet2DModel`` (v, epsilon or x0, as its
    scheduler config's ``prediction_type`` says).

    Args:
        unet_config: a ``UNet2DModel`` config dict.
        scheduler: the diffusers scheduler config the network was trained with.
        num_classes: real classes; ``null_class`` (the label guidance drops to) is given only when trained
            with label dropout.
    """

    def __init__(self, unet_config: dict[str, Any], scheduler: dict[str, Any], num_classes: int = 0,
                 null_class: int | None = None):
        super().__init__()
        from diffusers import UNet2DModel  # lazily: a second or more of imports

        self.unet = UNet2DModel.from_config(unet_config)
        self.scheduler_config = dict(scheduler)
        self.num_classes, self.null_class = num_classes, null_class
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.image_shape = (self.unet.config.in_channels, height, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.unet(x, t, class_labels=labels if self.num_classes else None).sample  # (B, C, H, W)


def build_denoiser(config: DiffusionConfig) -> Denoiser:
    """The network of a synthgen-trained diffusion model."""
    return Denoiser(config.unet_config(), config.scheduler, config.num_classes,
                    config.num_classes if config.num_classes else None)
