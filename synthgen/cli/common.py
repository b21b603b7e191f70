"""The Typer app and the edge where library errors become one-line messages."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer

from synthgen import __version__
from synthgen.errors import SynthgenError

# the flags of a diffusion model's sampler (synthgen.generate.diffusion_settings), shared by run and sample
SAMPLER_HELP = ("Diffusion models only: ddim (default, deterministic), dpm++ (DPM-Solver++ 2M), euler, heun, or "
                "ddpm (stochastic: its noise comes from each image's own seed); part of the dataset identity.")
STEPS_HELP = "Diffusion models only: sampling steps (default: ddim 50, dpm++ 20, euler 50, heun 25, ddpm 100)."
GUIDANCE_HELP = ("Diffusion models only: classifier-free guidance scale (default 1 = the conditional model "
                 "alone; above 1 pushes images toward their class, at the cost of a second network pass).")

app = typer.Typer(
    name="synthgen",
    help="Train image generators, then mass-produce deterministic synthetic image datasets on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synthgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a library ``SynthgenError`` (bad input, in words) into ``error: ...`` and exit 1, no traceback."""
    try:
        yield
    except SynthgenError as err:
        fail(str(err))
