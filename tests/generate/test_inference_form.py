"""The inference form: the same function as the loaded model, rearranged; images at most one level apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from synthgen.checkpoint import load_checkpoint
from synthgen.generate import inference_form as inference
from synthgen.generate.inference_form import ChannelsLastUnflatten, SubPixelConvTranspose2d, prepare_model
from synthgen.generate.plan import INFERENCE_FORM, image_seeds
from synthgen.generate.sampling import generate, to_uint8
from synthgen.models import DCGANConfig, DCGANGenerator


@pytest.mark.parametrize("kernel,padding,output_padding,out_channels", [(5, 2, 1, 1), (4, 1, 0, 3), (6, 2, 0, 2)])
def test_subpixel_layer_computes_the_transposed_convolution(kernel, padding, output_padding, out_channels):
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(8, out_channels, kernel, 2, padding=padding, output_padding=output_padding)
    assert SubPixelConvTranspose2d.can_replace(deconv)
    x = torch.randn(3, 8, 9, 7)  # (B, C, H, W), H != W
    expected = deconv(x)  # (B, Co, 2H, 2W)
    got = SubPixelConvTranspose2d(deconv)(x)
    assert got.shape == expected.shape == (3, out_channels, 18, 14)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_subpixel_shuffle_moves_the_values_pixel_shuffle_does(channels_last, out_channels):
    x = torch.randn(2, 4 * out_channels, 5, 6)  # (B, 4 Co, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = inference._pixel_shuffle_channels_last(x)
    assert torch.equal(got, torch.nn.functional.pixel_shuffle(x, 2))  # (B, Co, 10, 12)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layer", [
    nn.ConvTranspose2d(8, 8, 5, 2, padding=2, output_padding=1),  # wide: the direct kernel is faster
    nn.ConvTranspose2d(8, 1, 5, 1, padding=2),  # stride 1
    nn.ConvTranspose2d(8, 1, 3, 2, padding=1, output_padding=1),  # sub-kernel not centred
    nn.ConvTranspose2d(8, 1, 5, 2, padding=2),  # output 2H - 1
    nn.Conv2d(8, 1, 3),
])
def test_subpixel_leaves_other_layers_alone(layer):
    assert not SubPixelConvTranspose2d.can_replace(layer)


def test_inference_form_rewrites_the_dcgan_and_keeps_images_close(tiny_checkpoint):
    seeds, labels = image_seeds(0, np.arange(256)), np.arange(256) % 2
    plain = prepare_model(load_checkpoint(tiny_checkpoint).model, "plain")
    fast = prepare_model(load_checkpoint(tiny_checkpoint).model, INFERENCE_FORM)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    assert isinstance(fast.deconv[-2], SubPixelConvTranspose2d)  # the image layer; tanh follows
    for precision in ("fp32", "bf16"):
        a = generate(plain, seeds, labels, precision=precision)
        b = generate(fast, seeds, labels, precision=precision)
        # other kernels, same function: at most one level apart (which is why the manifest records the form)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, precision
        # bf16 rounds per kernel: 0.1-1% of pixels differ on hosts with AVX-512 BF16, 3.8% on one without it
        assert np.mean(a != b) < (0.01 if precision == "fp32" else 0.06), precision
    with pytest.raises(ValueError, match="form must be one of"):
        prepare_model(load_checkpoint(tiny_checkpoint).model, "nhwc")


@pytest.mark.parametrize("size,channels", [(32, 3), (64, 1)])
def test_inference_form_matches_other_architectures(size, channels):
    torch.manual_seed(1)
    model = DCGANGenerator(DCGANConfig(latent_dim=8, image_size=size, channels=channels, width=32))
    for p in model.modules():  # BatchNorm statistics other than the defaults, as a trained model has
        if isinstance(p, nn.modules.batchnorm._BatchNorm):
            p.running_mean.uniform_(-0.5, 0.5)
            p.running_var.uniform_(0.5, 2.0)
    model.eval()
    z = torch.randn(64, 8)
    with torch.inference_mode():
        expected = model(z)
        got = prepare_model(model)(z)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_channels_last_projection_changes_no_value_and_skips_the_layout_copy():
    torch.manual_seed(2)
    head = nn.Sequential(nn.Linear(12, 8 * 3 * 5), nn.LeakyReLU(0.2), nn.Unflatten(1, (8, 3, 5)))
    head.eval()
    z = torch.randn(64, 12)
    with torch.inference_mode():
        expected = head(z)  # (B, 8, 3, 5), NCHW-contiguous
        fast = prepare_model(head)
        got = fast(z)
    assert isinstance(fast[-1], ChannelsLastUnflatten) and fast[1].inplace
    assert torch.equal(got, expected)  # the same dot products, stored in another order
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()


def test_layout_rewrites_change_no_pixel_of_the_dcgan(tiny_checkpoint, monkeypatch):
    """The channels-last projection, in-place activations and the permuting shuffle move values, never
    change them: the form's images are byte-identical with and without them (so datasets made before them
    stay reproducible)."""
    seeds, labels = image_seeds(5, np.arange(300)), np.arange(300) % 2
    fast = prepare_model(load_checkpoint(tiny_checkpoint).model)
    assert isinstance(fast.project[-1], ChannelsLastUnflatten)
    after = {p: generate(fast, seeds, labels, precision=p) for p in ("fp32", "bf16")}
    monkeypatch.setattr(inference, "_channels_last_projection", lambda module: None)
    monkeypatch.setattr(inference, "_IN_PLACE", ())
    monkeypatch.setattr(inference, "_pixel_shuffle_channels_last", lambda x: torch.nn.functional.pixel_shuffle(x, 2))
    before = prepare_model(load_checkpoint(tiny_checkpoint).model)
    assert isinstance(before.project[-1], nn.Unflatten)
    assert not any(getattr(m, "inplace", False) for m in before.modules())
    for precision, images in after.items():
        assert np.array_equal(generate(before, seeds, labels, precision=precision), images), precision


def test_in_place_layers_never_overwrite_the_callers_tensors():
    # the first activation and the one after Dropout (which returns its input in eval mode) read the input
    model = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.ReLU())
    fast = prepare_model(model.eval())
    assert [getattr(m, "inplace", None) for m in fast] == [False, None, True, False, False]
    x = torch.randn(8, 4)
    before = x.clone()
    with torch.inference_mode():
        fast(x)
        images = torch.rand(2, 1, 4, 4) * 2 - 1
        copy = images.clone()
        to_uint8(images)
    assert torch.equal(x, before) and torch.equal(images, copy)
