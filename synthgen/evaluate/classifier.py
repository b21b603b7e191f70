"""The downstream classifier behind TRTR / TSTR / real + synthetic: whole schedules, best validation checkpoint kept.

A verdict about synthetic data is only as steady as the classifier that gives it, so every classifier of an
evaluation is trained the same way: class-weighted loss (it cannot settle on the majority class), flips and
small shifts, a cosine learning rate, an exponential moving average of the weights, and the EMA weights of
the step with the best AUC on a validation part of the real *training* split (never the test split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthgen.evaluate import metrics

_BATCH = 512  # images per inference batch


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling, an ``embed_dim`` feature layer and a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, embed_dim: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(  # strided convs, not max-pooling: cheaper on CPU for the same accuracy
            *_block(channels, w, 1),  # (B, w, H, W)
            *_block(w, 2 * w, 2),  # (B, 2w, H/2, W/2)
            *_block(2 * w, 4 * w, 2),  # (B, 4w, H/4, W/4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        )
        self.embed = nn.Linear(4 * w, embed_dim)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, embed_dim), before the ReLU (so features are not half zeros)."""
        return self.embed(self.body(x))  # (B, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(F.relu(self.features(x))))  # (B, K)


@dataclass
class ClassifierConfig:
    """How every classifier of one evaluation is trained: same settings, so TSTR and TRTR compare."""

    steps: int = 1000  # most optimiser steps, the same whatever the training set's size
    batch_size: int = 64
    lr: float = 2e-3  # peak of the cosine schedule
    weight_decay: float = 1e-4
    width: int = 16  # 24 doubled the CPU time per step
    embed_dim: int = 64
    ema: float = 0.98  # per-step decay of the weight average that is validated and kept
    check_every: int = 50  # steps between validations
    # validations without a better score before stopping early; None: run the whole schedule and keep the best
    # (stopping early quit BreastMNIST runs in a plateau before the learning rate annealed: docs/evaluation.md)
    patience: int | None = None
    stop: str = "auc"  # keep the EMA weights of the best validation "auc" or "loss", or "none": the last ones
    shift: int = 2  # pixels of random translation


def as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    return x.float().div_(127.5).sub_(1)


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to ``shift`` pixels (edge padding), per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)  # (B, C, H, W)
    if shift:
        padded = F.pad(x, (shift,) * 4, mode="replicate")  # (B, C, H+2s, W+2s)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    return x


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequencies, scaled to average 1 over the images (absent classes weigh 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.from_numpy(weights).float()


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                     config: ClassifierConfig | None = None, val_images: np.ndarray | None = None,
                     val_labels: np.ndarray | None = None, init: SmallCNN | None = None) -> SmallCNN:
    """Train a :class:`SmallCNN`; seeded, so the same call gives the same weights on the same thread count.

    Args:
        images, labels: uint8 (N, H, W, C) training images, int (N,) classes in range(num_classes).
        num_classes: size of the head.
        seed: initialisation, batch order and augmentations (the global torch RNG is left as it was).
        config: steps, schedule and sizes.
        val_images, val_labels: real images held out of training; the EMA weights with the best AUC on them
            are returned (training stops after ``patience`` checks without a better one, if set). Without them the
            EMA weights after ``steps`` steps are returned.
        init: start from these weights (fine-tuning) instead of a seeded initialisation.

    Returns:
        The trained classifier, in eval mode.
    """
    config = config or ClassifierConfig()
    if config.stop not in ("auc", "loss", "none"):  # checked here, not at the first validation many steps in
        raise ValueError(f"stop must be auc, loss or none, got {config.stop!r}")
    x, y = as_input(images), torch.from_numpy(np.asarray(labels, np.int64))
    val = None if val_images is None else (val_images, np.asarray(val_labels))
    with torch.random.fork_rng(devices=[]):  # init and dropout masks come from the seed; the caller's RNG stays
        torch.manual_seed(seed)
        model = SmallCNN(x.shape[1], num_classes, config.width, config.embed_dim)
        if init is not None:
            model.load_state_dict(init.state_dict())
        return _fit(model, x, y, class_weights(np.asarray(labels, np.int64), num_classes), seed, config, val)


def _fit(model: SmallCNN, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, seed: int,
         config: ClassifierConfig, val: tuple[np.ndarray, np.ndarray] | None) -> SmallCNN:
    average = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = _schedule(opt, config)
    best, best_state, best_step, stale = -np.inf, None, 0, 0
    order, pos = torch.randperm(len(x), generator=gen), 0
    for step in range(1, config.steps + 1):
        if pos + config.batch_size > len(x):  # a new epoch: reshuffle
            order, pos = torch.randperm(len(x), generator=gen), 0
        batch = order[pos:pos + config.batch_size]
        pos += config.batch_size
        model.train()
        loss = F.cross_entropy(model(_augment(x[batch], config.shift, gen)), y[batch], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        average.update_parameters(model)
        if val is None or config.stop == "none" or (step % config.check_every and step != config.steps):
            continue
        score = _val_score(average.module, val, weights, config.stop)
        if score > best:
            best, best_step, stale = score, step, 0
            best_state = {k: v.clone() for k, v in average.module.state_dict().items()}
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                break
    final = average.module
    if best_state is not None:
        final.load_state_dict(best_state)
    final.trained = {"steps": step, "best_step": best_step or step, "val_auc": None if best_state is None else best}
    return final.eval()


def _val_score(model: SmallCNN, val: tuple[np.ndarray, np.ndarray], weights: torch.Tensor, stop: str) -> float:
    """Higher is better: the validation AUC, or minus the class-weighted cross-entropy."""
    proba = predict_proba(model, val[0])  # (N, K)
    if stop == "auc":
        return metrics.roc_auc(val[1], proba)
    log_p = torch.from_numpy(np.log(np.clip(proba, 1e-12, 1.0)))
    return -float(F.nll_loss(log_p.float(), torch.from_numpy(np.asarray(val[1], np.int64)), weight=weights))


def _schedule(opt: torch.optim.Optimizer, config: ClassifierConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """One cycle (10% warm-up, then cosine to near 0); a constant rate for runs too short to have one."""
    if config.steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # OneCycleLR divides by its warm-up length - 1: at least 2 warm-up steps (10 steps crashed with 0.1)
    pct = max(0.1, 2 / config.steps)
    return torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=pct)


@torch.no_grad()
def embed(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    """Feature vectors (N, embed_dim) float64 of uint8 images (N, H, W, C)."""
    model.eval()
    out = [model.features(as_input(images[i:i + _BATCH])) for i in range(0, len(images), _BATCH)]
    return torch.cat(out).double().numpy()


@torch.no_grad()
def predict_proba(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) float64 of uint8 images (N, H, W, C), averaged with their mirror images."""
    model.eval()
    out = []
    for i in range(0, len(images), _BATCH):
        x = as_input(images[i:i + _BATCH])  # (B, C, H, W)
        out.append((model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2)  # (B, K)
    return torch.cat(out).double().numpy()
