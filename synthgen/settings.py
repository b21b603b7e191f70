"""Checks of a run's settings that need no model, no cluster and no files: made before anything starts.

Both the local driver (:mod:`synthgen.engine`) and the job submitter (:mod:`synthgen.submit`, before it
uploads anything) call :func:`check_run_settings`, so a bad flag is one line wherever the run would go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthgen.errors import SynthgenError
from synthgen.plan import check_counts, check_precision, check_seed
from synthgen.writers import ENCODINGS, FORMATS

if TYPE_CHECKING:  # engine imports ray; this module must not
    from synthgen.engine import RunConfig


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
    if config.encoding not in ENCODINGS or (config.format == "png" and config.encoding != "png"):
        raise SynthgenError(f"--encoding must be png or raw (raw only with --format parquet), "
                            f"got {config.encoding!r} with --format {config.format}")
    if config.batch_size is not None and config.batch_size < 1:
        raise SynthgenError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.gpus is not None and config.gpus < 0:
        raise SynthgenError(f"--gpus must be >= 0, got {config.gpus}")
    if config.workers is not None and config.workers < 1:
        raise SynthgenError(f"--workers must be >= 1, got {config.workers}")
    if config.actors_per_gpu < 1:
        raise SynthgenError(f"--actors-per-gpu must be >= 1, got {config.actors_per_gpu}")
