"""What ``synthgen eval`` was asked, and the checks made before any training starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from synthgen.errors import SynthgenError
from synthgen.evaluate.features import EVAL_THREADS
from synthgen.recipes import Recipe, parse_recipe

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
    classifier_steps: int = 1000  # each classifier keeps the weights of its best validation AUC
    inception_weights: str | None = None
    copy_ratio: float = COPY_RATIO
    threads: int = EVAL_THREADS
    repeats: int = 5  # classifier seeds per arm
    recipes: list[str] = field(default_factory=lambda: ["all"])
    real_fractions: list[float] = field(default_factory=list)
    cache_dir: str | None = None  # default: $SYNTHGEN_CACHE, else ~/.cache/synthgen
    encoder_steps: int = 600

    def check(self) -> None:
        if self.max_images < 10:
            raise SynthgenError(f"--max-images must be at least 10, got {self.max_images}")
        if self.k < 1:
            raise SynthgenError(f"--k must be at least 1, got {self.k}")
        if self.classifier_steps < 1:
            raise SynthgenError(f"--classifier-steps must be at least 1, got {self.classifier_steps}")
        if self.threads < 1:
            raise SynthgenError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed < 2**63 - self.repeats:
            raise SynthgenError(f"--seed must be in [0, 2**63 - repeats), got {self.seed}")
        if not 1 <= self.repeats <= 100:
            raise SynthgenError(f"--repeats must be 1 to 100, got {self.repeats}")
        if self.encoder_steps < 1:
            raise SynthgenError(f"encoder_steps must be at least 1, got {self.encoder_steps}")
        if not self.recipes:
            raise SynthgenError("--recipe: give at least one recipe (all, ratio:R, fraction:F, topup, pretrain)")
        _ = self.recipe_list  # parses each one now: a typo fails before any training
        for f in self.real_fractions:
            if not 0 < f <= 1:
                raise SynthgenError(f"--real-fractions: each must be in (0, 1], got {f:g}")
        for flag, path in (("--out", self.out), ("--figure", self.figure_path)):
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):  # fail now, not after minutes of training
                raise SynthgenError(f"{flag} {path}: folder {parent} does not exist")
            if os.path.isdir(path):
                raise SynthgenError(f"{flag} {path}: is a directory; give a file name")

    @property
    def recipe_list(self) -> list[Recipe]:
        try:
            parsed = [parse_recipe(text) for text in self.recipes]
        except ValueError as err:
            raise SynthgenError(f"--recipe: {err}") from None
        if len({r.name for r in parsed}) != len(parsed):
            raise SynthgenError(f"--recipe: a recipe is given twice ({', '.join(self.recipes)})")
        return parsed

    @property
    def fraction_list(self) -> list[float]:
        return sorted(set(self.real_fractions))

    @property
    def figure_path(self) -> str:
        return self.figure or os.path.splitext(self.out)[0] + ".png"
