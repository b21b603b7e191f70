"""A feature space that sees the variety within a class: an autoencoder's code, learned on the real images.

A classifier's features keep what separates the classes and discard the rest, so a generator that repeats a
few images of each class can look as close to the real data as the real test split. An autoencoder has to
reconstruct every image from its code, so two different scans of one class get different codes: FID and
recall there notice a collapsed class. It is trained once per training set (seeded) and cached by the
sha256 of the training images and its settings, through :mod:`synthgen.checkpoint` (safetensors + JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthgen import checkpoint
from synthgen.errors import SynthgenError
from synthgen.evaluate.classifier import as_input

CACHE_ENV = "SYNTHGEN_CACHE"
_BATCH = 512


def default_cache_dir() -> str:
    """``$SYNTHGEN_CACHE``, else ``~/.cache/synthgen``: never inside a repository or a dataset."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "synthgen")


@dataclass
class EncoderConfig:
    """The autoencoder's size and training; part of the cache key."""

    code_dim: int = 64
    width: int = 32
    steps: int = 600  # about one classifier's CPU time; the collapse test passes at 300
    batch_size: int = 64
    lr: float = 2e-3


class AutoEncoder(nn.Module):
    """28x28 (or any H, W divisible by 4) images -> a ``code_dim`` code -> the image again."""

    def __init__(self, channels: int, height: int, width_px: int, config: EncoderConfig):
        super().__init__()
        w, self.grid = config.width, (height // 4, width_px // 4)
        flat = 2 * w * self.grid[0] * self.grid[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),  # (B, 2w, H/4, W/4)
            nn.Flatten(), nn.Linear(flat, config.code_dim),  # (B, D)
        )
        self.decoder_in = nn.Linear(config.code_dim, flat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),  # (B, w, H/2, W/2)
            nn.ConvTranspose2d(w, channels, 4, stride=2, padding=1), nn.Tanh(),  # (B, C, H, W)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.encoder(x)  # (B, D)
        h = self.decoder_in(code).view(len(x), -1, *self.grid)  # (B, 2w, H/4, W/4)
        return self.decoder(h)  # (B, C, H, W)


def _key(images: np.ndarray, seed: int, config: EncoderConfig) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    # the weights depend on the thread count that trained them (sums split), so it is part of the key
    digest.update(json.dumps({"shape": images.shape, "seed": seed, **asdict(config), "threads": torch.get_num_threads(),
                              "torch": torch.__version__.split("+")[0]}, sort_keys=True).encode())
    return digest.hexdigest()


def train_autoencoder(images: np.ndarray, seed: int, config: EncoderConfig) -> AutoEncoder:
    """Fit an :class:`AutoEncoder` to uint8 (N, H, W, C) images with mirror flips; seeded."""
    x = as_input(images)  # (N, C, H, W)
    if x.shape[2] % 4 or x.shape[3] % 4:
        raise ValueError(f"the autoencoder needs image sides divisible by 4, got {tuple(x.shape[2:])}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoEncoder(x.shape[1], x.shape[2], x.shape[3], config)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
    model.train()
    for _ in range(config.steps):
        batch = x[torch.randint(0, len(x), (config.batch_size,), generator=gen)]  # (B, C, H, W)
        flip = torch.rand(len(batch), generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        loss = F.mse_loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


def cached_autoencoder(images: np.ndarray, seed: int, config: EncoderConfig | None = None,
                       cache_dir: str | None = None) -> tuple[AutoEncoder, dict]:
    """The autoencoder of these training images: read from the cache, or trained and written there.

    Returns:
        (model in eval mode, {"cache": path, "cached": whether it was read, "key": sha256 key}).
    """
    config = config or EncoderConfig()
    key = _key(images, seed, config)
    folder = os.path.join(cache_dir or default_cache_dir(), "eval-encoders", key[:32])
    n, h, w, c = images.shape
    try:
        tensors, meta = checkpoint.load_training_state(folder)
    except SynthgenError:  # not cached yet (or unreadable): train it again
        tensors, meta = None, {}
    if tensors is not None and meta.get("key") == key:
        model = AutoEncoder(c, h, w, config)
        model.load_state_dict(tensors)
        return model.eval(), {"cache": folder, "cached": True, "key": key}
    model = train_autoencoder(images, seed, config)
    try:
        os.makedirs(folder, exist_ok=True)
        checkpoint.save_training_state(folder, model.state_dict(), {"key": key, "config": asdict(config),
                                                                    "train_images": n, "seed": seed})
    except OSError as err:  # a read-only cache costs time, not the evaluation
        return model, {"cache": folder, "cached": False, "key": key, "not_written": str(err)}
    return model, {"cache": folder, "cached": False, "key": key}


@torch.no_grad()
def encode(model: AutoEncoder, images: np.ndarray) -> np.ndarray:
    """Codes (N, code_dim) float64 of uint8 images (N, H, W, C)."""
    out = [model.encoder(as_input(images[i:i + _BATCH])) for i in range(0, len(images), _BATCH)]
    return torch.cat(out).double().numpy()
