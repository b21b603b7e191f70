"""What a submitted ``synthgen run`` job does on the cluster: ``python jobs/generate.py --config job.json``.

:func:`entrypoint_main` is that script's body: it reads ``job.json`` (:func:`load_job_file`) back into a
RunConfig and runs the engine in this process, which Ray started inside the cluster (``RAY_ADDRESS`` points
at it). ``synthgen jobs stop`` arrives as SIGTERM and ends the run like Ctrl-C: the manifest is saved and
committed shards are kept, so the same submission resumes.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from pathlib import Path

from synthgen import __version__
from synthgen.errors import SynthgenError, stop_on_signals
from synthgen.generate.config import RunConfig


def load_job_file(path: str) -> RunConfig:
    """Read ``job.json`` (RunConfig fields; only ``count`` is required) into a RunConfig."""

    try:
        raw = json.loads(Path(path).read_text())
    except OSError as err:
        raise SynthgenError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SynthgenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or "count" not in raw:
        raise SynthgenError(f"{path}: expected a JSON object of synthgen run settings with at least \"count\"")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SynthgenError(f"{path}: unknown settings {', '.join(unknown)} (written by another synthgen "
                            f"version? this is {__version__})")
    raw["address"] = None  # the job runs inside the cluster: the engine joins it through RAY_ADDRESS
    return RunConfig(**raw)


def run_job_file(path: str) -> int:
    """Run the generation that ``job.json`` at ``path`` describes, on the cluster this process is in.

    Returns:
        0 when the dataset is complete; 1 (after an ``error:`` line on stderr) when it is not.
    """
    from synthgen.generate.engine import run

    stop_on_signals((signal.SIGTERM,))  # `jobs stop`, before the engine's session takes over: save, stop actors
    try:
        config = load_job_file(path)
        print(f"synthgen {__version__}: {config.count} images -> {config.out} "
              f"(model {config.model or 'bundled default'})", flush=True)
        summary = run(config)
    except SynthgenError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: stopped; committed shards are kept: submit the same run again to resume",
              file=sys.stderr, flush=True)
        return 1
    print(summary.report(), flush=True)
    return 0


def entrypoint_main(argv: list[str] | None = None) -> int:
    """``python jobs/generate.py --config job.json``."""
    import argparse

    parser = argparse.ArgumentParser(prog="jobs/generate.py", description=(
        "Generate a synthgen dataset inside a Ray job (Ray sets RAY_ADDRESS). The config is a JSON object "
        "of `synthgen run` settings (RunConfig fields), e.g. {\"count\": 100000, \"out\": \"s3://b/ds\", "
        "\"gpus\": 8}."))
    parser.add_argument("--config", required=True, help="Path of job.json.")
    args = parser.parse_args(argv)
    return run_job_file(args.config)
