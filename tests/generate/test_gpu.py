"""The CUDA path: marked `gpu`, skipped where torch sees no CUDA device."""

import numpy as np
import pytest
import torch

from synthgen.checkpoint import load_checkpoint
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import INFERENCE_FORMS, image_seeds
from synthgen.generate.sampling import generate, make_deterministic

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("form", INFERENCE_FORMS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_pixels_do_not_depend_on_batch_size(tiny_checkpoint, precision, form):
    make_deterministic("cuda")
    model = prepare_model(load_checkpoint(tiny_checkpoint, device="cuda").model, form)
    seeds, labels = image_seeds(5, np.arange(3000)), np.arange(3000) % 2
    reference = generate(model, seeds, labels, batch_size=1024, precision=precision)
    for batch_size in (64, 100, 333, 2048):
        np.testing.assert_array_equal(generate(model, seeds, labels, batch_size=batch_size, precision=precision),
                                      reference, err_msg=f"batch_size={batch_size}")


def test_cuda_fp32_is_close_to_cpu(tiny_checkpoint):
    make_deterministic("cuda")
    seeds, labels = image_seeds(5, np.arange(500)), np.arange(500) % 2
    cpu = generate(prepare_model(load_checkpoint(tiny_checkpoint).model), seeds, labels).astype(int)
    gpu = generate(prepare_model(load_checkpoint(tiny_checkpoint, device="cuda").model), seeds, labels).astype(int)
    assert np.abs(cpu - gpu).max() <= 1  # same noise on both; only float rounding may differ


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_shards_do_not_depend_on_lanes(tmp_path, tiny_checkpoint, precision):
    from test_actor import SPEC, worker

    records = [worker(tmp_path, tiny_checkpoint, f"lanes{n}", device="cuda", lanes=n, batch_size=b,
                      precision=precision)(SPEC) for n, b in ((1, 2048), (4, 100))]
    assert records[0].sha256 == records[1].sha256


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_lane_streams_give_the_bytes_of_a_plain_forward(tiny_checkpoint, precision):
    """The recipe's stages (lane stream, pinned buffers, async copy back) against one forward on the default
    stream with a blocking copy, as the actor ran it before the stages were pipelined."""
    from synthgen.generate.rng import normal_from_seeds
    from synthgen.generate.sampling import AUTOCAST_DTYPES, to_uint8

    make_deterministic("cuda")
    model = prepare_model(load_checkpoint(tiny_checkpoint, device="cuda").model)
    seeds, labels = image_seeds(5, np.arange(512)), np.arange(512) % 2
    z = torch.from_numpy(normal_from_seeds(seeds, 16)).cuda()  # (512, latent)
    dtype = AUTOCAST_DTYPES[precision]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        plain = to_uint8(model(z, torch.from_numpy(labels).cuda()))  # (512, H, W, C)
    np.testing.assert_array_equal(generate(model, seeds, labels, batch_size=512, precision=precision), plain)


def test_cuda_fp16_overflow_is_named(overflowing_checkpoint):
    from synthgen.generate.sampling import NonFiniteOutput

    model = prepare_model(load_checkpoint(overflowing_checkpoint, device="cuda").model)
    labels = np.zeros(200, np.int64)
    labels[130] = 1
    with pytest.raises(NonFiniteOutput, match=r"^image 130: .*precision fp16"):
        generate(model, image_seeds(0, np.arange(200)), labels, batch_size=64, precision="fp16")
    generate(model, image_seeds(0, np.arange(200)), labels, batch_size=64, precision="bf16")  # no overflow
