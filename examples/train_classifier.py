"""Train a small classifier on real + synthetic BreastMNIST images end to end, with augmentations, and score it
on the real test split (ROC AUC). The two ways synthgen feeds training:

- real + synthetic mixed at a fixed fraction: ``mix(real, SyntheticImageDataset(DIR, cache=True), 0.5)`` with a
  plain shuffled DataLoader (the decoded cache gives random access at memory speed), augmentations per item;
- synthetic only, at full speed: ``synthgen.data.loader(DIR)`` with augmentations per batch.

Augmentations are MONAI dictionary transforms when MONAI is installed (``pip install monai``), else plain
tensor callables; torchvision v2 transforms (``v2.RandomHorizontalFlip()``) plug in the same way.

    synthgen run --count 20000 --out /tmp/breast-syn
    python examples/train_classifier.py --synthetic /tmp/breast-syn --epochs 5
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from synthgen.data import RealImageDataset, SyntheticImageDataset, loader, mix
from synthgen.evaluate.features import SmallCNN


def augmentations(dictionary: bool):
    """A random horizontal flip and a small intensity shift, per item (C, H, W) or per batch (B, C, H, W)."""
    try:
        import monai.transforms as mt
    except ImportError:
        mt = None
    if mt is not None and dictionary:
        return mt.Compose([mt.RandFlipd(keys="image", prob=0.5, spatial_axis=1),
                           mt.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5)])

    def flip_and_shift(x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-1])
        return (x + 0.05 * (torch.rand(()) - 0.5)).clamp_(0, 1)

    return flip_and_shift


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of scores for label 1 (Mann-Whitney, ties counted half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def evaluate(model: nn.Module, test: RealImageDataset) -> float:
    model.eval()
    x = torch.stack([test[i][0] for i in range(len(test))])  # (N, 1, 28, 28)
    with torch.no_grad():
        scores = model(x * 2 - 1).softmax(1)[:, 1].numpy()  # SmallCNN takes [-1, 1]
    return auc(scores, test.data.labels)


def train(model: nn.Module, batches, epochs: int, max_steps: int | None = None, lr: float = 1e-3) -> int:
    """Adam on cross-entropy; returns the steps taken."""
    opt, steps = torch.optim.Adam(model.parameters(), lr=lr), 0
    model.train()
    for _ in range(epochs):
        for x, y in batches:  # each pass over a synthgen loader is its next (reshuffled) epoch
            opt.zero_grad()
            nn.functional.cross_entropy(model(x * 2 - 1), y).backward()  # (B, K) logits
            opt.step()
            steps += 1
            if steps == max_steps:
                return steps
    return steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", default="data/breastmnist.npz")
    parser.add_argument("--synthetic", required=True, help="a synthgen dataset of the same classes")
    parser.add_argument("--fraction", type=float, default=0.5, help="synthetic share of the mixed data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-steps", type=int, default=400, help="steps of the synthetic-only run")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    test = RealImageDataset(args.real, split="test")

    real = RealImageDataset(args.real, split="train")
    synthetic = SyntheticImageDataset(args.synthetic, cache=True)  # decoded once, then memory-speed access
    mixed = mix(real, synthetic, synthetic_fraction=args.fraction, seed=args.seed)
    augment = augmentations(dictionary=False)
    batches = DataLoader(_Augmented(mixed, augment), batch_size=64, shuffle=True, num_workers=2)
    model = SmallCNN(1, 2)
    train(model, batches, args.epochs)
    print(f"real + synthetic ({len(mixed)} items, {args.fraction:.0%} synthetic): test AUC {evaluate(model, test):.3f}")

    fast = loader(args.synthetic, batch_size=256, num_workers=2, transform=augmentations(dictionary=True),
                  dict_transforms=True)  # per item, MONAI dictionary transforms when installed
    model = SmallCNN(1, 2)
    steps = train(model, fast, 1, args.synthetic_steps)
    print(f"synthetic only ({steps} batches of 256 of {len(fast.dataset)} images): "
          f"test AUC {evaluate(model, test):.3f}")


class _Augmented(torch.utils.data.Dataset):
    """Applies a tensor augmentation to each (image, label) item of a dataset."""

    def __init__(self, dataset, augment):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return self.augment(x), y


if __name__ == "__main__":
    main()
