"""Feature extractors for ``synthgen eval``: a small CNN classifier trained on the real data, and
Inception-v3 when its weights are on local disk.

Medical images are far from ImageNet, so the default feature space is the penultimate layer of a small
classifier trained (seeded, on CPU, in seconds) on the real training split: distances there reflect what
separates the classes in *this* data. The same classifier, trained on synthetic images instead, gives TSTR.
Nothing is cached: every ``synthgen eval`` trains its classifiers afresh from its seed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthgen.errors import SynthgenError

INCEPTION_ENV = "SYNTHGEN_INCEPTION_WEIGHTS"
_BATCH = 512  # images per inference batch
# A classifier's weights depend on how its sums are split between torch threads (BreastMNIST, seed 0: FID
# 14.55 on two threads, 15.08 on one), so eval runs on a fixed count, never the machine's core count; two is
# what docs/evaluation.md's figures use.
EVAL_THREADS = 2


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling, an ``embed_dim`` feature layer and a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, embed_dim: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(  # strided convs, not max-pooling: half the CPU time for the same accuracy
            nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),  # (B, w, H, W)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),  # (B, 2w, H/2, W/2)
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),  # (B, 4w, H/4, W/4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        )
        self.embed = nn.Linear(4 * w, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, embed_dim), before the ReLU (so features are not half zeros)."""
        return self.embed(self.body(x))  # (B, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))  # (B, K)


@dataclass
class ClassifierConfig:
    """How every classifier of one evaluation is trained: same settings, so TSTR and TRTR compare."""

    steps: int = 1000  # optimiser steps, the same whatever the training set's size
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 16  # wider costs CPU time and gained no test AUC on BreastMNIST
    embed_dim: int = 64


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the process's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    return x.float().div_(127.5).sub_(1)


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                     config: ClassifierConfig | None = None) -> SmallCNN:
    """Train a :class:`SmallCNN` with Adam on ``images``; seeded, so the same call gives the same weights.

    Args:
        images: uint8 (N, H, W, C) training images.
        labels: int (N,) classes in range(num_classes).
        num_classes: size of the head.
        seed: initialisation and batch order (the global torch RNG is left as it was).
        config: steps, batch size, learning rate and sizes.

    Returns:
        The trained classifier, in eval mode.
    """
    config = config or ClassifierConfig()
    x, y = _as_input(images), torch.from_numpy(np.asarray(labels, np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(x.shape[1], num_classes, config.width, config.embed_dim)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    order, pos = torch.randperm(len(x), generator=gen), 0
    for _ in range(config.steps):
        if pos + config.batch_size > len(x):  # a new epoch: reshuffle
            order, pos = torch.randperm(len(x), generator=gen), 0
        batch = order[pos:pos + config.batch_size]
        pos += config.batch_size
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def embed(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    """Feature vectors (N, embed_dim) float64 of uint8 images (N, H, W, C)."""
    out = [model.features(_as_input(images[i:i + _BATCH])) for i in range(0, len(images), _BATCH)]
    return torch.cat(out).double().numpy()


@torch.no_grad()
def predict_proba(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) float64 of uint8 images (N, H, W, C)."""
    out = [model(_as_input(images[i:i + _BATCH])).softmax(1) for i in range(0, len(images), _BATCH)]
    return torch.cat(out).double().numpy()


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, H*W*C) in [0, 1], the pixel space of the memorization audit."""
    return images.reshape(len(images), -1).astype(np.float32) / 255


# ---------------------------------------------------------------- Inception-v3 (optional)

def inception_weights(path: str | None) -> tuple[str | None, str]:
    """Which Inception-v3 weights to use: ``--inception-weights``, else ``$SYNTHGEN_INCEPTION_WEIGHTS``.

    Returns:
        (path or None, why None). A path that was asked for but does not exist raises SynthgenError.
    """
    flag = "--inception-weights"
    if path is None and os.environ.get(INCEPTION_ENV):
        path, flag = os.environ[INCEPTION_ENV], f"${INCEPTION_ENV}"
    if path is None:
        return None, (f"no Inception-v3 weights given ({flag} PATH or ${INCEPTION_ENV}; the torch-fidelity "
                      "file weights-inception-2015-12-05-6726825d.pth)")
    if not os.path.isfile(path):
        raise SynthgenError(f"{flag} {path}: no such file; give the path of the Inception-v3 weights "
                            "(weights-inception-2015-12-05-6726825d.pth) or leave it out")
    return path, ""


def inception_features(images: np.ndarray, weights: str) -> np.ndarray:
    """2048-d pool features of torch-fidelity's Inception-v3 (the FID network), from local weights only.

    Args:
        images: uint8 (N, H, W, C); gray images are repeated to 3 channels, resizing happens inside.
        weights: path of the converted TensorFlow weights (never downloaded here).

    Returns:
        float64 (N, 2048); raises ImportError when torch-fidelity is not installed.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    except Exception as err:  # torch.load of an arbitrary file raises many types (unpickling, zip, size, ...)
        raise SynthgenError(f"{weights}: cannot load as Inception-v3 weights ({str(err).splitlines()[0]})") \
            from None
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W) uint8
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (N, 3, H, W)
    with torch.no_grad():
        out = [net(x[i:i + 64].contiguous())[0] for i in range(0, len(x), 64)]
    return torch.cat(out).double().numpy()
