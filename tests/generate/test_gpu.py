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

    records = [worker(tmp_path, tiny_checkpoint, f"lanes{n}", device="cuda", threads=n, batch_size=b,
                      precision=precision)(SPEC) for n, b in ((1, 2048), (4, 100))]
    assert records[0].sha256 == records[1].sha256
