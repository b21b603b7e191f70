"""The working_dir a submitted ``synthgen run`` job carries to the cluster, and the checks made before upload.

:func:`stage_job` lays out this synthgen package, ``jobs/generate.py``, ``job.json`` (the RunConfig) and a
local checkpoint's two files; :func:`check_submittable` refuses settings that cannot work remotely. Both run
on the submitting machine before anything is sent (:mod:`synthgen.cluster.client`); on the cluster,
:mod:`synthgen.cluster.jobrun` reads ``job.json`` back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from synthgen import storage
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig

JOB_FILE = "job.json"
ENTRYPOINT = f"python jobs/generate.py --config {JOB_FILE}"
WORKING_DIR_LIMIT = 512 * 1024 * 1024  # Ray's GCS_STORAGE_MAX_SIZE (max gRPC message); read from ray when there

# What `python jobs/generate.py` does when synthgen is installed without its source tree (no jobs/ there).
_ENTRYPOINT_STUB = '''"""synthgen job entrypoint, written by synthgen.cluster.staging (see jobs/generate.py)."""
import sys

from synthgen.cluster.jobrun import entrypoint_main

sys.exit(entrypoint_main())
'''


def check_submittable(config: RunConfig) -> None:
    """Refuse, before anything is uploaded, settings that cannot work on a remote cluster."""
    from synthgen.generate.config import check_run_settings

    check_run_settings(config)
    if not storage.is_uri(config.out) and not os.path.isabs(config.out):
        raise SynthgenError(f"--out {config.out}: a relative path means nothing on the cluster; give an "
                            "object-store URI (s3://bucket/prefix) or an absolute path on a filesystem "
                            "every node shares")


def stage_job(config: RunConfig, dest: Path) -> RunConfig:
    """Lay out the job's working_dir in ``dest``; returns the RunConfig written to ``job.json``.

    ``dest`` gets ``synthgen/`` (this package's source, no caches), ``jobs/generate.py``, ``job.json`` and,
    for a local checkpoint, ``model/<its name>/`` with its config and weights (training state stays behind).
    Refuses a working_dir over Ray's upload limit.
    """
    import synthgen
    from synthgen import diffusers_import
    from synthgen.checkpoint import (
        CONFIG_FILE,
        DATA_TERMS_FILE,
        WEIGHTS_FILE,
        bundled_models,
        inspect_checkpoint,
        read_config,
    )
    from synthgen.generate import diffusion_settings
    from synthgen.generate.plan import parse_label_plan

    package = Path(synthgen.__file__).resolve().parent
    shutil.copytree(package, dest / "synthgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    (dest / "jobs").mkdir()
    entry = package.parent / "jobs" / "generate.py"
    if entry.is_file():
        shutil.copyfile(entry, dest / "jobs" / "generate.py")
    else:
        (dest / "jobs" / "generate.py").write_text(_ENTRYPOINT_STUB)
    model = config.model
    if model is None or model in bundled_models():
        checked = read_config(model)
    elif not storage.is_uri(model):  # a local checkpoint: checked here, before anything is uploaded
        checked = inspect_checkpoint(model)[0]
        shipped = Path("model") / (Path(model).resolve().name or "checkpoint")
        (dest / shipped).mkdir(parents=True)
        imported = diffusers_import.find(storage.locate(model))
        own = [n for n in (CONFIG_FILE, WEIGHTS_FILE, DATA_TERMS_FILE)  # the terms file only where there is one
               if n != DATA_TERMS_FILE or (Path(model) / n).is_file()]
        names = imported.files() if imported is not None else {n: n for n in own}
        for source, name in names.items():
            (dest / shipped / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(model) / source, dest / shipped / name)
        model = shipped.as_posix()  # relative to the job's working directory on the cluster
    if model is None or not storage.is_uri(model):
        parse_label_plan(config.labels, checked.class_names)
        diffusion_settings.for_checkpoint(checked, config.sampler, config.steps, config.guidance, str(model))
    job = dataclasses.replace(config, model=model, address=None)
    (dest / JOB_FILE).write_text(json.dumps(dataclasses.asdict(job), indent=1, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    limit = _working_dir_limit()
    if size >= limit:
        raise SynthgenError(f"the job's working_dir (synthgen + model) is {size / 2**20:.0f} MiB, over Ray's "
                            f"{limit / 2**20:.0f} MiB upload limit; put the checkpoint in object storage and "
                            "pass --model s3://bucket/path")
    return job


def _working_dir_limit() -> int:
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
    except ImportError:  # pragma: no cover - a ray without it
        return WORKING_DIR_LIMIT
    return int(GCS_STORAGE_MAX_SIZE)
