"""A run's configuration, free of torch and ray: what the CLI and a job file fill in, what every actor gets,
and the checks of settings that need no model, no cluster and no files.

Both the local driver and the job submitter call :func:`check_run_settings` before anything starts, so a bad
flag is one line wherever the run would go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synthgen.dataset.format import ENCODINGS, FORMATS, Layout
from synthgen.errors import SynthgenError
from synthgen.generate.plan import check_counts, check_precision, check_seed
from synthgen.storage import human_bytes

DICOM_MAX_IMAGES = 2**31 - 1  # InstanceNumber (IS) is index + 1


@dataclass
class RunConfig:
    """Everything ``synthgen run`` takes; see ``synthgen run --help`` for each field."""

    count: int
    out: str = "synthetic"
    model: str | None = None  # None = the bundled default model
    format: str = "parquet"
    encoding: str = "png"  # png, or raw uint8 pixels (parquet only)
    spacing: str | None = None  # --format nifti: "ROW[xCOL]" mm; None = the training data's, if known
    shard_size: int = 10_000
    seed: int = 0
    labels: str | None = None
    batch_size: int | None = None  # None: 256 on CPU, 2048 on a GPU (fewer for larger images)
    precision: str = "fp32"
    sampler: str | None = None  # diffusion models only (generate.diffusion_settings); None = the default
    steps: int | None = None
    guidance: float | None = None
    gpus: int | None = None  # None = every GPU the cluster has; 0 = CPU actors
    workers: int | None = None  # CPU actors when running without GPUs; None = one per node (8 lanes at most)
    actors_per_gpu: int = 1
    address: str | None = None
    overwrite: bool = False
    allow_import: bool = False
    progress: bool = True
    max_retries: int = 3
    start_timeout_s: float = 120.0


@dataclass
class RunSummary:
    out: str
    total: int  # images in the dataset
    generated: int  # images made by this run (the rest were already committed)
    bytes: int
    seconds: float  # wall time of the whole run, cluster start included
    generate_seconds: float = 0.0  # from the first shard handed out to the last one committed
    lanes: list[int] = field(default_factory=list)  # each actor's threads taking batches through the model
    device: str = ""  # the torch device(s) the actors run on
    gpu_ids: list[list[int]] = field(default_factory=list)  # Ray's GPU ids held by each actor
    retried_shards: list[int] = field(default_factory=list)

    @property
    def actors(self) -> int:
        return len(self.lanes)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def describe_actors(self) -> str:
        """E.g. "ran 2 actor(s) x 8 lane(s) on cpu", or "ran 3 actor(s) with 2+8+8 lanes on cpu"."""
        uniform = len(set(self.lanes)) == 1
        lanes = f"x {self.lanes[0]} lane(s)" if uniform else f"with {'+'.join(map(str, self.lanes))} lanes"
        gpus = f" holding GPUs {self.gpu_ids}" if any(self.gpu_ids) else ""
        return f"ran {self.actors} actor(s) {lanes} on {self.device}{gpus}"

    def report(self) -> str:
        """What a finished run tells its user, the same from the CLI and from a Ray job's entrypoint."""
        if not self.generated:
            return f"nothing to do: {self.out} already holds all {self.total} images ({human_bytes(self.bytes)})"
        made = f"{self.generated} new" if self.generated != self.total else f"{self.generated}"
        done = (f"done: {made} images ({self.total} in the dataset), {human_bytes(self.bytes)}, "
                f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s while generating) -> {self.out}")
        return f"{self.describe_actors()}\n{done}" if self.actors else done


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
    lanes: int = 0  # threads taking whole batches through model + encoder; 0 = one per usable CPU
    allow_import: bool = False
    sampler: dict | None = None  # a diffusion model's settings (generate.diffusion_settings), as the manifest has them


def allocator_env(lanes: int) -> dict[str, str]:
    """Environment for a generation actor's process: allocator settings, read when the process starts.

    Thresholds above one batch's working set keep glibc from returning and page-faulting activations every
    batch; Arrow allocates through glibc too (measurements: docs/design.md).
    """
    return {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
            "MALLOC_ARENA_MAX": str(max(1, lanes)), "ARROW_DEFAULT_MEMORY_POOL": "system"}


def parse_spacing(text: str) -> list[float]:
    """``--spacing``: "0.5" (square pixels) or "ROWxCOL" ("0.7x0.5"), millimetres -> [row, column]."""
    parts = str(text).lower().split("x")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < 1e6 for v in values):
        raise SynthgenError(f"--spacing must be a positive size in mm, or ROWxCOL (e.g. 0.5 or 0.7x0.5), "
                            f"got {text!r}")
    return values * 2 if len(values) == 1 else values


def check_run_settings(config: RunConfig) -> None:
    """Raise :class:`SynthgenError` naming the flag for settings no cluster could run.

    Args:
        config: the run as the CLI or a job file gave it.
    """
    check_counts(config.count, config.shard_size)
    check_seed(config.seed)
    check_precision(config.precision)
    if config.format not in FORMATS:
        raise SynthgenError(f"--format must be one of {', '.join(FORMATS)}, got {config.format!r}")
    if config.encoding not in ENCODINGS or (config.format != "parquet" and config.encoding != "png"):
        raise SynthgenError(f"--encoding must be png or raw (raw only with --format parquet), "
                            f"got {config.encoding!r} with --format {config.format}")
    if config.spacing is not None:
        if config.format != "nifti":
            raise SynthgenError(f"--spacing is for --format nifti (DICOM takes the training data's spacing), "
                                f"got --format {config.format}")
        parse_spacing(config.spacing)
    if config.format == "dicom" and config.count > DICOM_MAX_IMAGES:
        raise SynthgenError(f"--count {config.count}: --format dicom numbers images 1..{DICOM_MAX_IMAGES} "
                            "(InstanceNumber); write fewer, or use --format parquet")
    if config.batch_size is not None and config.batch_size < 1:
        raise SynthgenError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.gpus is not None and config.gpus < 0:
        raise SynthgenError(f"--gpus must be >= 0, got {config.gpus}")
    if config.workers is not None and config.workers < 1:
        raise SynthgenError(f"--workers must be >= 1, got {config.workers}")
    if config.actors_per_gpu < 1:
        raise SynthgenError(f"--actors-per-gpu must be >= 1, got {config.actors_per_gpu}")
