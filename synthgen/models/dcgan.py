"""DCGAN generator and discriminator, optionally class-conditional.

The generator follows the original sketch: latent -> Linear -> (width, s0, s0) -> BatchNorm + LeakyReLU ->
a stride-1 ConvTranspose, then stride-2 ConvTransposes that double the size up to the image -> tanh.
s0 is 7 for 28x28 images and 4 for 32, 64 and 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_SIZES = (28, 32, 64, 128)


@dataclass
class DCGANConfig:
    """Architecture of a DCGAN pair; saved with the weights, so every field must be JSON-serialisable."""

    latent_dim: int = 100
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional
    width: int = 256  # channels of the first feature map; halved at each upsampling stage
    embed_dim: int = 50  # label-embedding size concatenated to the latent (conditional only)

    def __post_init__(self) -> None:
        if self.image_size not in SUPPORTED_SIZES:
            raise ValueError(f"DCGAN image_size must be one of {SUPPORTED_SIZES}, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"DCGAN channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1 or self.num_classes < 0:
            raise ValueError("DCGAN latent_dim must be >= 1 and num_classes >= 0")

    @property
    def start_size(self) -> int:
        return 7 if self.image_size == 28 else 4

    @property
    def num_upsamples(self) -> int:
        return int(math.log2(self.image_size // self.start_size))


def _up(c_in: int, c_out: int, stride: int, last: bool = False) -> list[nn.Module]:
    # kernel 5 / padding 2 keeps the size at stride 1; output_padding 1 makes stride 2 exactly double it
    conv = nn.ConvTranspose2d(c_in, c_out, 5, stride, padding=2, output_padding=stride - 1, bias=last)
    return [conv, nn.Tanh()] if last else [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


class DCGANGenerator(nn.Module):
    """Maps latent noise (and optional class labels) to images in [-1, 1]."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        c, s0 = config.width, config.start_size
        in_dim = config.latent_dim + (config.embed_dim if config.num_classes else 0)
        self.label_embed = nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None
        self.project = nn.Sequential(
            nn.Linear(in_dim, c * s0 * s0, bias=False), nn.BatchNorm1d(c * s0 * s0), nn.LeakyReLU(0.2),
            nn.Unflatten(1, (c, s0, s0)),
        )
        layers = _up(c, c // 2, stride=1)
        c //= 2
        for _ in range(config.num_upsamples - 1):
            layers += _up(c, c // 2, stride=2)
            c //= 2
        layers += _up(c, config.channels, stride=2, last=True)
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.label_embed(labels)], dim=1)  # (B, latent + embed)
        h = self.project(z)  # (B, width, s0, s0)
        return self.deconv(h)  # (B, C, H, W) in [-1, 1]


class DCGANDiscriminator(nn.Module):
    """Strided-conv critic; with classes it is a projection discriminator (Miyato & Koyama, 2018)."""

    def __init__(self, config: DCGANConfig, width: int = 64):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, size = config.channels, config.image_size
        for c_out in (width, width * 2, width * 4)[: max(2, config.num_upsamples)]:
            layers += [nn.Conv2d(c_in, c_out, 5, 2, padding=2), nn.LeakyReLU(0.2), nn.Dropout(0.3)]
            c_in, size = c_out, (size + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        feat_dim = c_in * size * size
        self.head = nn.Linear(feat_dim, 1)
        self.label_proj = nn.Embedding(config.num_classes, feat_dim) if config.num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)  # (B, F)
        logits = self.head(h).squeeze(1)  # (B,)
        if self.label_proj is not None:
            logits = logits + (self.label_proj(labels) * h).sum(dim=1)
        return logits
