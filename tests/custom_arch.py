"""A user-defined generator for the registry tests, importable as ``custom_arch:tiny_factory``.

Importing this module leaves a trace in IMPORTED, so a test can tell whether loading a checkpoint ran it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IMPORTED = True


class TinyGenerator(nn.Module):
    """latent -> Linear -> tanh, reshaped to (C, S, S); no classes."""

    def __init__(self, latent_dim: int, size: int, channels: int):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "size": size, "channels": channels}
        self.shape = (channels, size, size)
        self.fc = nn.Linear(latent_dim, channels * size * size)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.fc(z)).view(-1, *self.shape)  # (B, C, S, S)


def tiny_factory(config: dict[str, Any]) -> nn.Module:
    return TinyGenerator(config["latent_dim"], config["size"], config["channels"])
