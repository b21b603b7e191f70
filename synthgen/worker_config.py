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
    batch_size: int | None = None  # None: 256 on CPU, 2048 on a GPU (enough rows to keep it busy)
    precision: str = "fp32"
    device: str = "auto"  # auto = cuda when this process sees a GPU
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    encode_threads: int = 0  # PNG encoding threads; 0 = one per CPU this process may use
    allow_import: bool = False
