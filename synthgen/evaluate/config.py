"""What ``synthgen eval`` was asked, and the checks made before any training starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from synthgen.errors import SynthgenError
from synthgen.evaluate.features import EVAL_THREADS

COPY_RATIO = 1 / 3  # near-copy: nearest training image < 1/3 the distance of the second nearest


@dataclass
class EvalConfig:
    """What ``synthgen eval`` was asked; see ``synthgen eval --help``."""

    real: str
    synthetic: str
    out: str = "report.json"
    figure: str | None = None  # default: the report's path with .png
    seed: int = 0
    max_images: int = 5000
    k: int = 3
    classifier_steps: int = 600
    inception_weights: str | None = None
    copy_ratio: float = COPY_RATIO
    threads: int = EVAL_THREADS

    def check(self) -> None:
        if self.max_images < 10:
            raise SynthgenError(f"--max-images must be at least 10, got {self.max_images}")
        if self.k < 1:
            raise SynthgenError(f"--k must be at least 1, got {self.k}")
        if self.classifier_steps < 1:
            raise SynthgenError(f"--classifier-steps must be at least 1, got {self.classifier_steps}")
        if self.threads < 1:
            raise SynthgenError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed < 2**63:
            raise SynthgenError(f"--seed must be in [0, 2**63), got {self.seed}")
        for flag, path in (("--out", self.out), ("--figure", self.figure_path)):
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):  # fail now, not after minutes of training
                raise SynthgenError(f"{flag} {path}: folder {parent} does not exist")
            if os.path.isdir(path):
                raise SynthgenError(f"{flag} {path}: is a directory; give a file name")

    @property
    def figure_path(self) -> str:
        return self.figure or os.path.splitext(self.out)[0] + ".png"
