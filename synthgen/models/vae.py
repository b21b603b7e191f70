"""Convolutional VAE, optionally class-conditional. Its decoder is the generator that synthgen samples from.

The decoder reuses the DCGAN generator's shape (latent -> Linear -> ConvTranspose stack -> tanh), so both
families share one upsampling design and one set of supported image sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synthgen.models.dcgan import DCGANConfig, DCGANGenerator


@dataclass
class VAEConfig:
    """Architecture of a VAE; saved with the weights, so every field must be JSON-serialisable."""

    latent_dim: int = 32
    image_size: int | list[int] = 28  # a square's side, or [H, W] (the DCGAN's sizes)
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional
    width: int = 128  # decoder's first feature-map channels; the encoder mirrors it
    embed_dim: int = 16

    def decoder_config(self) -> DCGANConfig:
        return DCGANConfig(latent_dim=self.latent_dim, image_size=self.image_size, channels=self.channels,
                           num_classes=self.num_classes, width=self.width, embed_dim=self.embed_dim)


class VAEEncoder(nn.Module):
    """Images (and labels) -> the mean and log-variance of q(z | x, y)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        dec = config.decoder_config()  # validates size and channels
        layers: list[nn.Module] = []
        (height, wide), c_in, c_out = dec.hw, config.channels, config.width // 4
        for _ in range(dec.num_upsamples):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c_in, height, wide, c_out = c_out, height // 2, wide // 2, c_out * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.label_embed = nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None
        in_dim = c_in * height * wide + (config.embed_dim if config.num_classes else 0)
        self.to_stats = nn.Linear(in_dim, 2 * config.latent_dim)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        h = self.features(images)  # (B, F)
        if self.label_embed is not None:
            h = torch.cat([h, self.label_embed(labels)], dim=1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)  # (B, latent) each
        return mu, logvar


class VAE(nn.Module):
    """Encoder + decoder; ``decoder(z, labels)`` is the generator."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = DCGANGenerator(config.decoder_config())

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        mu, logvar = self.encoder(images, labels)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation trick
        return self.decoder(z, labels), mu, logvar
