"""Generator families and the architecture registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from synthgen.models import (
    DCGANConfig,
    DCGANDiscriminator,
    build_generator,
    config_to_dict,
    known_architectures,
    register,
)
from synthgen.models.vae import VAE, VAEConfig

TESTS = str(Path(__file__).resolve().parent)


@pytest.mark.parametrize("arch", ["dcgan", "vae"])
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shape_and_range(arch: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    config = {"latent_dim": 8, "image_size": size, "channels": channels, "num_classes": 2, "width": 32}
    net = build_generator(arch, config).eval()
    z = torch.randn(3, 8) * 10  # large inputs push tanh to its limits
    with torch.no_grad():
        out = net(z, torch.tensor([0, 1, 1]))  # (3, C, S, S)
    assert out.shape == (3, channels, size, size)
    assert out.min() >= -1 and out.max() <= 1
    assert out.std() > 0


@pytest.mark.parametrize("arch", ["dcgan", "vae"])
def test_conditioning_changes_the_output(arch: str) -> None:
    torch.manual_seed(0)
    net = build_generator(arch, {"latent_dim": 8, "num_classes": 2, "width": 32}).eval()
    z = torch.randn(4, 8)
    with torch.no_grad():
        a, b = net(z, torch.zeros(4, dtype=torch.long)), net(z, torch.ones(4, dtype=torch.long))
        again = net(z, torch.zeros(4, dtype=torch.long))
    assert torch.equal(a, again)
    assert (a - b).abs().mean() > 1e-3


def test_conditional_generator_needs_labels() -> None:
    net = build_generator("dcgan", {"latent_dim": 8, "num_classes": 2, "width": 32}).eval()
    with pytest.raises(ValueError, match="labels"):
        net(torch.zeros(2, 8), None)


def test_discriminator_and_vae_shapes() -> None:
    config = DCGANConfig(latent_dim=8, image_size=32, channels=3, num_classes=5, width=32)
    logits = DCGANDiscriminator(config, width=8)(torch.zeros(4, 3, 32, 32), torch.arange(4))
    assert logits.shape == (4,)
    vae = VAE(VAEConfig(latent_dim=6, image_size=28, channels=1, width=32))
    recon, mu, logvar = vae(torch.zeros(2, 1, 28, 28))
    assert recon.shape == (2, 1, 28, 28) and mu.shape == logvar.shape == (2, 6)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_generator("dcgan", {"image_size": 30})
    with pytest.raises(ValueError, match="invalid config"):
        build_generator("dcgan", {"no_such_field": 1})
    with pytest.raises(ValueError, match="unknown architecture"):
        build_generator("stylegan9", {})


def test_import_path_architecture_needs_allow_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.delitem(sys.modules, "custom_arch", raising=False)
    config = {"latent_dim": 4, "size": 8, "channels": 3}
    with pytest.raises(ValueError, match="allow-custom-arch"):
        build_generator("custom_arch:tiny_factory", config)
    assert "custom_arch" not in sys.modules  # refused before importing (running) anything
    net = build_generator("custom_arch:tiny_factory", config, allow_import=True)
    assert net(torch.zeros(2, 4)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="cannot import"):
        build_generator("custom_arch:missing_factory", config, allow_import=True)


def test_register_a_named_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)
    import custom_arch

    from synthgen import models

    monkeypatch.setitem(models._FACTORIES, "tiny", custom_arch.tiny_factory)  # undone after the test
    register("tiny", custom_arch.tiny_factory)
    assert "tiny" in known_architectures()
    assert build_generator("tiny", {"latent_dim": 2, "size": 4, "channels": 1})(torch.zeros(1, 2)).shape == (1, 1, 4, 4)


def test_config_round_trips_through_dict() -> None:
    config = DCGANConfig(latent_dim=7, image_size=64, channels=3, num_classes=4, width=64)
    assert DCGANConfig(**config_to_dict(config)) == config
