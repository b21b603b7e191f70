"""The ``synthgen`` command: flags in, one library call out, one-line errors instead of tracebacks.

``model_commands`` holds train, sample and models; ``dataset_commands`` holds run, verify and show. Both
register on the one Typer :data:`app` from ``common``.
"""

from __future__ import annotations

import sys

import typer

from synthgen.cli import (  # noqa: F401  (registers the commands)
    dataset_commands,
    eval_commands,  # noqa: F401  (registers eval and preview)
    job_commands,  # noqa: F401  (registers jobs list|status|logs|stop)
    model_commands,
)
from synthgen.cli.common import app
from synthgen.errors import SynthgenError, exit_status

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SynthgenError as err:  # a library error a command forgot to wrap: still one line
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as stop:
        typer.echo("interrupted", err=True)
        sys.exit(exit_status(stop))
