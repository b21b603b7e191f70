"""The form a loaded generator is sampled in: the same function, rearranged to run faster.

Channels-last weights, BatchNorms folded, the thin image layer as a sub-pixel convolution (these move a few
pixels by one level, so ``plan.INFERENCE_FORM`` names the form in every manifest), plus three rewrites that
move no pixel. What each one gains, measured: docs/design.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from synthgen.generate.plan import INFERENCE_FORM, INFERENCE_FORMS
from synthgen.models.diffusion_sampler import DiffusionSampler

SUBPIXEL_MAX_OUT_CHANNELS = 4


def prepare_model(model: nn.Module, form: str = INFERENCE_FORM) -> nn.Module:
    """Ready a loaded generator for sampling: eval mode and, by default, its fast inference form.

    Args:
        model: a generator as :func:`synthgen.checkpoint.load_checkpoint` built it; changed in place.
        form: ``plan.INFERENCE_FORM``, or "plain" (as loaded) to reproduce datasets of synthgen 0.1.0.

    Returns:
        The model to sample with.
    """
    if form not in INFERENCE_FORMS:
        raise ValueError(f"form must be one of {', '.join(INFERENCE_FORMS)}, got {form!r}")
    model.eval()
    if form == "plain" or isinstance(model, DiffusionSampler):  # UNets run as loaded (manifest: "plain")
        return model
    with torch.no_grad():
        _rewrite_sequentials(model)
    return model.to(memory_format=torch.channels_last)


# Modules that act on each value alone, so the order features are stored in cannot change what they compute.
_ELEMENTWISE = (nn.Identity, nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)
_IN_PLACE = (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.SiLU)
# Layers whose output is always a new tensor (not their input, nor a view of it, as Dropout or Flatten give).
_FRESH_OUTPUT = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def _rewrite_sequentials(module: nn.Module) -> None:
    """Fold (Linear | Conv | ConvTranspose, BatchNorm) pairs and swap in sub-pixel image layers, in every
    nn.Sequential of the model (where one layer's output is known to feed the next)."""
    for child in module.children():
        _rewrite_sequentials(child)
    if not isinstance(module, nn.Sequential):
        return
    for i in range(len(module)):
        layer = module[i]
        norm = module[i + 1] if i + 1 < len(module) else None
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
            if isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
                layer = fuse_linear_bn_eval(layer, norm)
                module[i + 1] = nn.Identity()
            elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(norm, nn.BatchNorm2d):
                layer = fuse_conv_bn_eval(layer, norm, transpose=isinstance(layer, nn.ConvTranspose2d))
                module[i + 1] = nn.Identity()
        if SubPixelConvTranspose2d.can_replace(layer):
            layer = SubPixelConvTranspose2d(layer)
        module[i] = layer
    _channels_last_projection(module)
    previous = None  # the nearest layer before, Identity skipped
    for layer in module:
        # in place, it overwrites the previous layer's new output, which nothing else in a Sequential reads
        if isinstance(layer, _IN_PLACE) and isinstance(previous, (*_FRESH_OUTPUT, SubPixelConvTranspose2d)):
            layer.inplace = True
        if type(layer) is not nn.Identity:
            previous = layer


def _channels_last_projection(module: nn.Sequential) -> None:
    """Linear -> elementwise layers -> Unflatten(1, (C, H, W)): reorder the Linear's output features to
    (H, W, C) and unflatten them as a channels-last view. Same values at the same (b, c, h, w)."""
    if len(module) < 2:
        return
    last = module[-1]
    if not (type(module[0]) is nn.Linear and type(last) is nn.Unflatten and last.dim == 1
            and len(last.unflattened_size) == 3 and all(isinstance(m, _ELEMENTWISE) for m in module[1:-1])):
        return
    channels, height, width = last.unflattened_size
    linear = module[0]
    if linear.out_features != channels * height * width:
        return
    order = torch.arange(linear.out_features, device=linear.weight.device)
    order = order.view(channels, height, width).permute(1, 2, 0).reshape(-1)  # (H, W, C) position -> feature
    linear.weight.copy_(linear.weight[order])
    if linear.bias is not None:
        linear.bias.copy_(linear.bias[order])
    module[-1] = ChannelsLastUnflatten(channels, height, width)


class ChannelsLastUnflatten(nn.Module):
    """(B, H*W*C) features in (H, W, C) order -> (B, C, H, W) with channels-last strides (a view, no copy)."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.channels, self.height, self.width = channels, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.height, self.width, self.channels).permute(0, 3, 1, 2)  # (B, C, H, W)


class SubPixelConvTranspose2d(nn.Module):
    """A stride-2 ConvTranspose2d that doubles H and W, computed as Conv2d(C_in, 4 C_out) + pixel shuffle.

    Output pixel (2q + r, 2t + c) of the transposed convolution only ever meets kernel taps of one parity,
    so each of the four phases (r, c) is an ordinary convolution of the input with a sub-kernel; the four
    phases become four output channels per channel, which ``pixel_shuffle`` interleaves back.
    """

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        assert self.can_replace(deconv)
        k, p = deconv.kernel_size[0], deconv.padding[0]
        lo, hi = _input_offsets(k, p)
        c_in, c_out = deconv.in_channels, deconv.out_channels
        size = hi - lo + 1
        weight = deconv.weight.detach().new_zeros(c_out, 2, 2, c_in, size, size)  # (Co, r, c, Ci, kh, kw)
        for r in (0, 1):
            for c in (0, 1):
                for a, j in enumerate(range(lo, hi + 1)):
                    for b, m in enumerate(range(lo, hi + 1)):
                        ty, tx = r + p - 2 * j, c + p - 2 * m
                        if 0 <= ty < k and 0 <= tx < k:
                            weight[:, r, c, :, a, b] = deconv.weight.detach()[:, :, ty, tx].T  # (Co, Ci)
        self.conv = nn.Conv2d(c_in, 4 * c_out, size, padding=hi, bias=deconv.bias is not None,
                              device=deconv.weight.device, dtype=deconv.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight.reshape(4 * c_out, c_in, size, size))
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.repeat_interleave(4))

    @staticmethod
    def can_replace(layer: nn.Module) -> bool:
        if type(layer) is not nn.ConvTranspose2d or layer.out_channels > SUBPIXEL_MAX_OUT_CHANNELS:
            return False
        (k, kw), (p, pw), (op, opw) = layer.kernel_size, layer.padding, layer.output_padding
        return (layer.stride == (2, 2) and layer.dilation == (1, 1) and layer.groups == 1
                and k == kw and p == pw and op == opw and k + op - 2 * p == 2  # output exactly 2H x 2W
                and layer.padding_mode == "zeros" and _input_offsets(k, p)[0] == -_input_offsets(k, p)[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pixel_shuffle_channels_last(self.conv(x))  # (B, 4 Co, H, W) -> (B, Co, 2H, 2W)


def _pixel_shuffle_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.pixel_shuffle(x, 2)`` as one permuting copy into channels-last memory: the
    same values, and on a channels-last input 3x faster than torch's kernel for it (bundled model, 28x28:
    0.8 vs 2.3 us per image)."""
    batch, channels, height, width = x.shape
    phases = x.permute(0, 2, 3, 1).reshape(batch, height, width, channels // 4, 2, 2)  # (B, H, W, Co, r, c)
    out = phases.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2 * height, 2 * width, channels // 4)  # (B, 2H, 2W, Co)
    return out.permute(0, 3, 1, 2)  # (B, Co, 2H, 2W), channels-last strides


def _input_offsets(k: int, p: int) -> tuple[int, int]:
    """Input offsets j that feed an output phase r through kernel tap r + p - 2j, over both phases: the
    sub-kernel spans [lo, hi] (centred, so a symmetric padding of hi, for the usual k=4/p=1 and k=5/p=2)."""
    lo = min(-((k - 1 - r - p) // 2) for r in (0, 1))
    hi = max((r + p) // 2 for r in (0, 1))
    return lo, hi
