"""Generator families and the registry that builds one from its saved config.

Built-in families: ``dcgan``, ``vae`` and ``diffusion`` (a denoising UNet sampled by :mod:`diffusion_sampler`;
``diffusers`` is the same for a UNet2DModel folder imported by :mod:`synthgen.diffusers_import`). A user plugs
in an architecture of their own either by calling :func:`register` before loading, or by naming a factory
``package.module:factory`` as the architecture. A factory
takes the config dict and returns an ``nn.Module`` whose ``forward(z, labels)`` maps ``(B, latent_dim)`` noise
and ``(B,)`` int64 labels (or ``None``) to ``(B, C, H, W)`` images in [-1, 1].

Importing a module named inside a checkpoint would run code from an untrusted file, so import-path
architectures are only imported when the caller passes ``allow_import=True`` (CLI: ``--allow-custom-arch``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from torch import nn

from synthgen.models.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator
from synthgen.models.diffusion import Denoiser, DiffusionConfig, build_denoiser
from synthgen.models.diffusion_sampler import DiffusionSampler
from synthgen.models.vae import VAE, VAEConfig

GeneratorFactory = Callable[[dict[str, Any]], nn.Module]

_FACTORIES: dict[str, GeneratorFactory] = {
    "dcgan": lambda cfg: DCGANGenerator(DCGANConfig(**cfg)),
    "vae": lambda cfg: VAE(VAEConfig(**cfg)).decoder,
    # a diffusion generator is its network under the default sampler; a run swaps in its own settings
    "diffusion": lambda cfg: DiffusionSampler(build_denoiser(DiffusionConfig(**cfg))),
    "diffusers": lambda cfg: DiffusionSampler(Denoiser(cfg["unet"], cfg["scheduler"], cfg["num_classes"])),
}


def register(name: str, factory: GeneratorFactory) -> None:
    """Make ``name`` a known architecture: checkpoints whose ``arch`` is ``name`` are built by ``factory``."""
    _FACTORIES[name] = factory


def known_architectures() -> list[str]:
    return sorted(_FACTORIES)


def build_generator(arch: str, config: dict[str, Any], allow_import: bool = False) -> nn.Module:
    """Build an untrained generator of architecture ``arch`` from its config dict.

    Args:
        arch: a registered name (``dcgan``, ``vae``, ...) or ``package.module:factory``.
        config: the architecture's config, as saved in a checkpoint's ``model_config``.
        allow_import: permit importing ``package.module`` for an import-path ``arch``.

    Returns:
        The generator module, in training mode, with freshly initialised weights.
    """
    factory = _FACTORIES.get(arch)
    if factory is None:
        factory = _import_factory(arch, allow_import)
    try:
        return factory(dict(config))
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid config for architecture {arch!r}: {err}") from None


def _import_factory(arch: str, allow_import: bool) -> GeneratorFactory:
    if ":" not in arch:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(known_architectures())} "
                         "or an import path package.module:factory")
    if not allow_import:
        raise ValueError(f"architecture {arch!r} is an import path; importing it runs its code, "
                         "so pass --allow-custom-arch (allow_import=True) if you trust it")
    module_name, _, attr = arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import architecture {arch!r}: {err}") from None
    return factory


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a family's config dataclass."""
    return dataclasses.asdict(config)


__all__ = [
    "DCGANConfig", "DCGANDiscriminator", "DCGANGenerator", "Denoiser", "DiffusionConfig", "DiffusionSampler",
    "VAE", "VAEConfig",
    "build_generator", "config_to_dict", "known_architectures", "register",
]
