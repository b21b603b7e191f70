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
    batch_size: int | None = None  # None: 256 on CPU, 2048 on a GPU, fewer for images above 28x28
    precision: str = "fp32"
    device: str = "auto"  # auto = cuda when this process sees a GPU
    threads: int = 0  # lanes (threads taking whole batches through model + encoder); 0 = one per usable CPU
    allow_import: bool = False


def allocator_env(lanes: int) -> dict[str, str]:
    """Environment for a generation actor's process: allocator settings, read when the process starts.

    glibc: with its defaults an actor hands freed activation memory back to the kernel between batches and
    page-faults it in again on the next one (measured with two 96-row fp32 lanes: 4-6 minor faults and
    13-17 us of kernel time per image, ~5% of the CPU). Fixed thresholds above one batch's working set keep
    it in the process, and one arena per lane bounds how many copies of it are kept. End to end on 2 cores:
    +2-6% images/s in paired runs, actor memory unchanged (docs/benchmarks.md).
    Arrow: the Parquet writers allocate through glibc too, not pyarrow's default mimalloc pool, which kept
    freed pages of the raw-pixel writer (measured with 0.3's tensor column: two 10k-image raw shards at a time
    grew one process by 260 MiB with mimalloc, 170 MiB with the system pool; PNG 160 MiB either way); writer
    speed the same.
    """
    return {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
            "MALLOC_ARENA_MAX": str(max(1, lanes)), "ARROW_DEFAULT_MEMORY_POOL": "system"}
