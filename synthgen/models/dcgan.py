"""DCGAN generator and discriminator, optionally class-conditional.

The generator follows the original sketch: latent -> Linear -> (width, s0, s0) -> BatchNorm + LeakyReLU ->
a stride-1 ConvTranspose, then n stride-2 ConvTransposes that double the size up to the image -> tanh.

Sizes: H and W (non-square allowed) must both be s * 2**n with the same n >= 1 and start sides s in 3..8;
n is the largest such. So 28 starts at 7x7 (n=2), 32, 64, 128 and 256 at 4x4 (n=3..6), 256x192 at 4x3
(n=6); 30 or 3000 are refused. Old checkpoints (28/32/64/128 squares, ``image_size`` an int) build exactly
the layers they were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_SIZES = (28, 32, 64, 128, 256)  # the square sizes tested; other H x W fitting the rule above work too
START_SIDES = range(3, 9)
MAX_SIDE = 512  # beyond this the first feature map's width runs out (see train._check_width) and memory grows
DISCRIMINATOR_MAX_MAP = 16  # the critic downsamples until its feature map is at most this (only > 128 px)


def image_hw(image_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(H, W) of a config's ``image_size``: an int for a square, or [H, W]."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in image_size):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"image_size must be an int or [H, W], got {image_size!r}")


def upsampling_plan(height: int, width: int) -> tuple[int, tuple[int, int]] | None:
    """(n, (start height, start width)) for an H x W image, or None when no DCGAN of this family makes it."""
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        return None
    for n in range(9, 0, -1):  # the largest n: the 4x4 start of 32..256, as before
        if height % 2**n == 0 and width % 2**n == 0 and height >> n in START_SIDES and width >> n in START_SIDES:
            return n, (height >> n, width >> n)
    return None


def describe_sizes() -> str:
    return (f"H and W up to {MAX_SIDE}, each s * 2**n with one n >= 1 and s in 3..8 (e.g. 28, 32, 64, 128, 256, "
            "256x192)")


@dataclass
class DCGANConfig:
    """Architecture of a DCGAN pair; saved with the weights, so every field must be JSON-serialisable."""

    latent_dim: int = 100
    image_size: int | list[int] = 28  # a square's side, or [H, W]
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional
    width: int = 256  # channels of the first feature map; halved at each upsampling stage
    embed_dim: int = 50  # label-embedding size concatenated to the latent (conditional only)

    def __post_init__(self) -> None:
        if upsampling_plan(*image_hw(self.image_size)) is None:
            raise ValueError(f"DCGAN image_size {self.image_size} is not supported: {describe_sizes()}")
        if self.channels not in (1, 3):
            raise ValueError(f"DCGAN channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1 or self.num_classes < 0:
            raise ValueError("DCGAN latent_dim must be >= 1 and num_classes >= 0")

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return image_hw(self.image_size)

    @property
    def start_size(self) -> tuple[int, int]:
        """(H, W) of the first feature map."""
        return upsampling_plan(*self.hw)[1]

    @property
    def num_upsamples(self) -> int:
        return upsampling_plan(*self.hw)[0]


def _up(c_in: int, c_out: int, stride: int, last: bool = False) -> list[nn.Module]:
    # kernel 5 / padding 2 keeps the size at stride 1; output_padding 1 makes stride 2 exactly double it
    conv = nn.ConvTranspose2d(c_in, c_out, 5, stride, padding=2, output_padding=stride - 1, bias=last)
    return [conv, nn.Tanh()] if last else [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


class DCGANGenerator(nn.Module):
    """Maps latent noise (and optional class labels) to images in [-1, 1]."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        c, (h0, w0) = config.width, config.start_size
        in_dim = config.latent_dim + (config.embed_dim if config.num_classes else 0)
        self.label_embed = nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None
        self.project = nn.Sequential(
            nn.Linear(in_dim, c * h0 * w0, bias=False), nn.BatchNorm1d(c * h0 * w0), nn.LeakyReLU(0.2),
            nn.Unflatten(1, (c, h0, w0)),
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
        h = self.project(z)  # (B, width, h0, w0)
        return self.deconv(h)  # (B, C, H, W) in [-1, 1]


class DCGANDiscriminator(nn.Module):
    """Strided-conv critic; with classes it is a projection discriminator (Miyato & Koyama, 2018)."""

    def __init__(self, config: DCGANConfig, width: int = 64):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, (height, wide) = config.channels, config.hw
        stages = max(2, min(3, config.num_upsamples))  # up to 128 px: the layers every earlier model had
        # larger images: more stride-2 stages (at 4x width) until the map is small, or the head grows huge
        while max(-(-height // 2**stages), -(-wide // 2**stages)) > DISCRIMINATOR_MAX_MAP:
            stages += 1
        for c_out in [width, width * 2] + [width * 4] * (stages - 2):
            layers += [nn.Conv2d(c_in, c_out, 5, 2, padding=2), nn.LeakyReLU(0.2), nn.Dropout(0.3)]
            c_in, height, wide = c_out, (height + 1) // 2, (wide + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        feat_dim = c_in * height * wide
        self.head = nn.Linear(feat_dim, 1)
        self.label_proj = nn.Embedding(config.num_classes, feat_dim) if config.num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)  # (B, F)
        logits = self.head(h).squeeze(1)  # (B,)
        if self.label_proj is not None:
            logits = logits + (self.label_proj(labels) * h).sum(dim=1)
        return logits
