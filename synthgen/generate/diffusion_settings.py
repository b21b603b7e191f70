"""A diffusion run's sampler settings (``--sampler``, ``--steps``, ``--guidance``): checked against the model,
recorded in the manifest's identity, and applied to the loaded model. No torch here: the driver checks them.

The settings dict, as the manifest keeps it: ``{"sampler", "steps", "guidance", "chunk_rows"}``; None for a
model that is not a diffusion model. ``chunk_rows`` is the fixed number of rows per network pass
(``synthgen.models.diffusion_sampler``): it decides which kernels run, so it is part of what decides the bytes.
"""

from __future__ import annotations

import math
from typing import Any

from synthgen.errors import SynthgenError

DIFFUSION_ARCHS = ("diffusion", "diffusers")  # trained by synthgen; imported from a diffusers folder
# the same names as synthgen.models.diffusion_sampler.SAMPLERS (a test keeps them in step); ddim first: the default
SAMPLER_NAMES = ("ddim", "dpm++", "euler", "heun", "ddpm")
# Common choices for each sampler (multistep DPM-Solver++ is made for 10-25 steps; Heun spends two network passes
# per step); not tuned by FID here (docs/design.md says what was and was not measured).
DEFAULT_STEPS = {"ddim": 50, "dpm++": 20, "euler": 50, "heun": 25, "ddpm": 100}
CHUNK_ROWS = 32
MAX_STEPS = 1000


def is_diffusion(arch: str) -> bool:
    return arch in DIFFUSION_ARCHS


def resolve(arch: str, has_null_class: bool, sampler: str | None, steps: int | None,
            guidance: float | None, model_name: str = "the model") -> dict[str, Any] | None:
    """The run's sampler settings, defaults filled in, or a one-line refusal naming the flag.

    Args:
        arch: the checkpoint's architecture.
        has_null_class: the model was trained with label dropout (guidance needs it).
        sampler, steps, guidance: the flags as given (None = not given).
        model_name: how messages name the model.

    Returns:
        The settings dict, or None for a model that is not a diffusion model (and no flag given).
    """
    if not is_diffusion(arch):
        given = [f for f, v in (("--sampler", sampler), ("--steps", steps), ("--guidance", guidance)) if v is not None]
        if given:
            raise SynthgenError(f"{'/'.join(given)}: only diffusion models take sampler settings; {model_name} "
                                f"is a {arch}")
        return None
    name = sampler or SAMPLER_NAMES[0]
    if name not in SAMPLER_NAMES:
        raise SynthgenError(f"--sampler must be one of {', '.join(SAMPLER_NAMES)}, got {name!r}")
    steps = DEFAULT_STEPS[name] if steps is None else steps
    if not 1 <= steps <= MAX_STEPS:
        raise SynthgenError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    guidance = 1.0 if guidance is None else float(guidance)
    if not math.isfinite(guidance) or guidance < 0:
        raise SynthgenError(f"--guidance must be a finite number >= 0, got {guidance}")
    if guidance != 1.0 and not has_null_class:
        raise SynthgenError(f"--guidance {guidance:g}: {model_name} has no null class (it was not trained with "
                            "label dropout), so classifier-free guidance cannot run; leave --guidance at 1")
    return {"sampler": name, "steps": steps, "guidance": guidance, "chunk_rows": CHUNK_ROWS}


def for_checkpoint(config: Any, sampler: str | None, steps: int | None, guidance: float | None,
                   model_name: str = "the model") -> dict[str, Any] | None:
    """:func:`resolve` for a :class:`synthgen.checkpoint.CheckpointConfig`."""
    null = config.arch == "diffusion" and bool(config.class_names)  # synthgen trains a null class with labels
    return resolve(config.arch, null, sampler, steps, guidance, model_name)


def with_sampler(model: Any, settings: dict[str, Any] | None) -> Any:
    """The loaded generator under ``settings`` (the network shared, not copied); ``model`` itself for None."""
    if settings is None:
        return model
    return model.with_settings(settings["sampler"], settings["steps"], settings["guidance"],
                               settings["chunk_rows"])
