"""What every generation actor of a job needs: small, picklable and free of torch, so the driver stays light."""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.writers import Layout


@dataclass(frozen=True)
class WorkerConfig:
    """What every actor of a job needs; small and picklable, so Ray ships it to each actor."""

    model: str
    fingerprint: str
    out: str
    layout: Layout
    seed: int
    labels: dict  # LabelPlan.to_json()
    batch_size: int | None = None  # None: 96 on CPU, 2048 on a GPU, fewer for images above 28x28
    precision: str = "fp32"
    device: str = "auto"  # auto = cuda when this process sees a GPU
    threads: int = 0  # lanes (threads taking whole batches through model + encoder); 0 = one per usable CPU
    allow_import: bool = False
