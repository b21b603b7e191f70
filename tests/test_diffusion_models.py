"""The diffusion network and its sampler: shapes at every size, row-independence, where the noise comes from,
and stored values (as diffusers' own tests pin a slice of a tiny model's output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthgen.generate import diffusion_settings
from synthgen.generate.rng import normal_from_seeds
from synthgen.generate.sampling import generate
from synthgen.models import (
    DiffusionConfig,
    DiffusionSampler,
    build_denoiser,
    build_generator,
)
from synthgen.models.diffusion_sampler import SAMPLERS, noise_injections

TINY = {"width": 8, "layers_per_block": 1, "attention_head_dim": 8}


def tiny(size: int = 28, channels: int = 1, classes: int = 2, seed: int = 0) -> DiffusionSampler:
    torch.manual_seed(seed)
    return build_generator("diffusion", {"image_size": size, "channels": channels, "num_classes": classes,
                                         **TINY}).eval()


def noise(sampler: DiffusionSampler, count: int, offset: int = 0) -> torch.Tensor:
    seeds = np.arange(offset, offset + count, dtype=np.uint64) * np.uint64(7919)
    return torch.from_numpy(normal_from_seeds(seeds, sampler.latent_dim))  # (count, latent)


def test_sampler_names_match_the_settings_module() -> None:
    assert tuple(SAMPLERS) == diffusion_settings.SAMPLER_NAMES


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 1), (128, 3)])
def test_every_supported_size_and_channel_count_runs(size: int, channels: int) -> None:
    model = tiny(size, channels, classes=0)
    config = DiffusionConfig(image_size=size, channels=channels, **TINY)
    assert model.latent_dim == config.latent_dim == channels * size * size
    lowest = size // 2 ** (len(config.channel_mult) - 1)
    assert lowest in (7, 8)  # 28 halves to 14 and 7 exactly: no padding
    z = torch.randn(2, model.latent_dim)
    with torch.no_grad():
        assert model.shape_probe(z).shape == (2, channels, size, size)
        if size <= 32:
            out = model.with_settings("ddim", 1, 1.0, chunk_rows=2)(z)
            assert out.shape == (2, channels, size, size) and out.abs().max() <= 1


def test_a_large_non_square_image_gets_six_levels_down_to_8x6() -> None:
    config = DiffusionConfig(image_size=[256, 192], **TINY)
    assert len(config.channel_mult) == 6
    model = build_generator("diffusion", {"image_size": [256, 192], "channels": 1, "num_classes": 0, **TINY}).eval()
    with torch.no_grad():
        assert model.shape_probe(torch.randn(1, model.latent_dim)).shape == (1, 1, 256, 192)


def test_attention_runs_at_the_lowest_resolution_only() -> None:
    unet = DiffusionConfig(image_size=64, **TINY).unet_config()
    assert unet["down_block_types"] == ["DownBlock2D"] * 3 + ["AttnDownBlock2D"]
    assert unet["up_block_types"] == ["AttnUpBlock2D"] + ["UpBlock2D"] * 3
    assert unet["num_class_embeds"] is None
    assert DiffusionConfig(num_classes=2).unet_config()["num_class_embeds"] == 3  # + the null class


def test_bad_configs_are_refused() -> None:
    for kw in ({"image_size": 30}, {"channels": 2}, {"image_size": 28, "channel_mult": [1, 1, 1, 1]}):
        with pytest.raises(ValueError):
            DiffusionConfig(**kw)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_an_image_does_not_depend_on_its_batch(name: str) -> None:
    # rows land at other positions of other chunks; image i must come out the same, bit for bit
    model = tiny().with_settings(name, 2, 2.0, chunk_rows=8)
    assert model.latent_dim == 784 * (1 + noise_injections(name, 2))
    z, y = noise(model, 21), torch.arange(21) % 2
    with torch.no_grad():
        whole = model(z, y)
        parts = torch.cat([model(z[:5], y[:5]), model(z[5:17], y[5:17]), model(z[17:], y[17:])])
    assert torch.equal(whole, parts)


def test_the_stochastic_sampler_takes_its_later_noise_from_the_image_row() -> None:
    model = tiny().with_settings("ddpm", 2, 1.0, chunk_rows=4)
    z, y = noise(model, 4), torch.zeros(4, dtype=torch.long)
    first, last = z.clone(), z.clone()
    first[:, 784:784 * 2] += 1  # the first step's injection
    last[:, 784 * 2:] += 1  # the last step's, whose variance is zero (it lands on the clean image)
    with torch.no_grad():
        a = model(z, y)
        assert not torch.equal(model(first, y), a) and torch.equal(model(last, y), a)
    torch.manual_seed(123)  # no global generator is drawn from: reseeding changes nothing
    with torch.no_grad():
        assert torch.equal(model(z, y), a)


def test_guidance_needs_a_null_class_and_conditional_models_need_labels() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="class-conditional"):
        model(noise(model, 2))
    unconditional = tiny(classes=0)
    with pytest.raises(ValueError, match="null class"):
        DiffusionSampler(unconditional.denoiser, guidance=2.0)


def test_thread_count_does_not_change_the_bits() -> None:
    # actors sample on one thread per lane; show and sample on the process's default
    model = tiny().with_settings("ddim", 2, 2.0, chunk_rows=8)
    z, y = noise(model, 8), torch.arange(8) % 2
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(model(z, y))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*outs)


def test_generate_pads_no_further_than_one_chunk() -> None:
    model = tiny().with_settings("ddim", 2, 1.0)
    seeds, labels = np.arange(3, dtype=np.uint64), np.array([0, 1, 0])
    one_by_one = np.concatenate([generate(model, seeds[i:i + 1], labels[i:i + 1]) for i in range(3)])
    assert np.array_equal(generate(model, seeds, labels, batch_size=2), one_by_one)


# Stored values: a tiny model with torch's seed 0, two images, DDIM in 3 steps with guidance 2 (diffusers' tests
# pin such slices with atol 1e-3); these catch a change in the noise rule, the schedule or the sampler loop.
EXPECTED_SLICE = np.array([
    0.492554, 0.824826, 1.0, 1.0, 0.481214, -0.046273, -1.0, -0.1749, 0.155891,
    -0.071957, 0.624543, -0.329049, -0.631258, 0.096094, 0.488192, -0.511, 0.760428, 1.0])


def test_stored_values_of_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = DiffusionSampler(build_denoiser(DiffusionConfig(num_classes=2, **TINY)), "ddim", 3, 2.0).eval()
    seeds = np.array([0, 1], dtype=np.uint64)
    with torch.no_grad():
        out = model(torch.from_numpy(normal_from_seeds(seeds, model.latent_dim)), torch.tensor([0, 1]))
    got = out[:, 0, 10:13, 10:13].flatten().numpy()  # (2 * 9,)
    np.testing.assert_allclose(got, EXPECTED_SLICE, atol=1e-3)


def test_bf16_on_cpu_runs_and_does_not_depend_on_the_batch() -> None:
    model = tiny().with_settings("dpm++", 2, 2.0, chunk_rows=8)
    seeds, labels = np.arange(10, dtype=np.uint64), np.arange(10) % 2
    whole = generate(model, seeds, labels, precision="bf16")
    parts = np.concatenate([generate(model, seeds[:3], labels[:3], precision="bf16"),
                            generate(model, seeds[3:], labels[3:], precision="bf16")])
    assert np.array_equal(whole, parts) and whole.shape == (10, 28, 28, 1)
    assert not np.array_equal(whole, generate(model, seeds, labels))  # bf16 is its own identity
