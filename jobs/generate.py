"""Entrypoint of a synthgen Ray job: ``python jobs/generate.py --config job.json``.

``synthgen run --address http://HEAD:8265`` writes ``job.json`` (the run's settings) and submits this
script with synthgen's source in the job's working_dir. It also works by hand from a synthgen checkout:

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".git", "data", "tests", "bench"]}' \\
        -- python jobs/generate.py --config job.json

where ``job.json`` holds ``synthgen run`` settings, e.g. ``{"count": 100000, "out": "s3://bucket/ds",
"gpus": 8, "model": "s3://bucket/models/breast"}`` (every field of ``synthgen.generate.engine.RunConfig``; only
``count`` is required). Inside a job Ray sets ``RAY_ADDRESS``, so the engine joins the cluster. Exit status
0 when the dataset is complete, 1 with an ``error:`` line otherwise; the job's status follows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Use the synthgen that came with the job (next to jobs/), else the one installed on the cluster.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "synthgen" / "__init__.py").is_file():
    sys.path.insert(0, str(_ROOT))

from synthgen.cluster.jobrun import entrypoint_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(entrypoint_main())
