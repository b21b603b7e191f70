"""Sampling: shape and range, and pixels independent of batch size and of which subset is generated."""

import numpy as np
import pytest
import torch

from synthgen.checkpoint import load_checkpoint
from synthgen.generate.inference_form import prepare_model
from synthgen.generate.plan import INFERENCE_FORMS, image_seeds
from synthgen.generate.sampling import MIN_BATCH, NonFiniteOutput, finite_rows, generate, pass_bounds


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).model


def test_generate_shape_dtype(tiny_model):
    images = generate(tiny_model, image_seeds(0, np.arange(10)), np.arange(10) % 2)
    assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 0


@pytest.mark.parametrize("form", INFERENCE_FORMS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pixels_do_not_depend_on_batch_size_or_subset(tiny_checkpoint, precision, form):
    tiny_model = prepare_model(load_checkpoint(tiny_checkpoint).model, form)
    seeds, labels = image_seeds(3, np.arange(700)), np.arange(700) % 2
    reference = generate(tiny_model, seeds, labels, batch_size=256, precision=precision)
    for batch_size in (1, 7, 64, 100, 333, 1024):
        out = generate(tiny_model, seeds, labels, batch_size=batch_size, precision=precision)
        np.testing.assert_array_equal(out, reference, err_msg=f"batch_size={batch_size}")
    one = generate(tiny_model, seeds[417:418], labels[417:418], precision=precision)
    np.testing.assert_array_equal(one[0], reference[417])


def test_labels_change_the_image(tiny_model):
    seeds = image_seeds(0, np.arange(4))
    assert not np.array_equal(generate(tiny_model, seeds, np.zeros(4, np.int64)),
                              generate(tiny_model, seeds, np.ones(4, np.int64)))


def test_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="precision"):
        generate(tiny_model, image_seeds(0, np.arange(2)), None, precision="fp8")


@pytest.mark.parametrize("count,batch_size", [(10_000, 256), (10_001, 256), (700, 333), (5, 256), (64, 1),
                                              (1000, 64), (1, 1), (2048, 2048)])
def test_passes_are_few_even_and_cover_every_row(count, batch_size):
    bounds = pass_bounds(count, batch_size)
    sizes = [stop - start for start, stop in bounds]
    assert [start for start, _ in bounds] == [0] + [stop for _, stop in bounds[:-1]]  # contiguous, in order
    assert bounds[-1][1] == count and sum(sizes) == count
    assert max(sizes) <= max(batch_size, MIN_BATCH) and max(sizes) - min(sizes) <= 1
    assert len(bounds) == -(-count // max(batch_size, MIN_BATCH))  # the fewest that fit
    assert pass_bounds(0, batch_size) == []


def test_no_pass_is_padded_beyond_min_batch(tiny_model):
    """A run that does not divide by the batch size costs no padding rows: 1,000 images at 256 rows per pass
    run as 4 passes of 250 (not 3 x 256 + 232 real rows padded to 256), and 10 images as one pass of 64."""
    rows_seen = []
    hook = tiny_model.register_forward_pre_hook(lambda module, args: rows_seen.append(args[0].shape[0]))
    try:
        generate(tiny_model, image_seeds(1, np.arange(1000)), np.arange(1000) % 2, batch_size=256)
        generate(tiny_model, image_seeds(1, np.arange(10)), np.arange(10) % 2, batch_size=256)
    finally:
        hook.remove()
    assert rows_seen == [250, 250, 250, 250, MIN_BATCH]


def test_non_finite_output_is_refused_naming_the_first_bad_image(overflowing_checkpoint):
    """Clamping keeps NaN, which became arbitrary pixels; now the first inf/NaN image is named."""
    model = prepare_model(load_checkpoint(overflowing_checkpoint).model)
    seeds, labels = image_seeds(0, np.arange(300)), np.zeros(300, np.int64)
    labels[[170, 250]] = 1  # only class 1 overflows, and only in fp16
    for precision in ("fp32", "bf16"):
        assert generate(model, seeds, labels, batch_size=100, precision=precision).shape == (300, 28, 28, 1)
    with pytest.raises(NonFiniteOutput, match=r"^image 170: .* at precision fp16; use --precision bf16"):
        generate(model, seeds, labels, batch_size=100, precision="fp16")


def test_finite_rows_finds_inf_and_nan_and_not_a_sum_that_overflows():
    images = torch.zeros(4, 1, 2, 2)  # (B, C, H, W)
    images[2, 0, 1, 1], images[1, 0, 0, 0] = float("inf"), float("nan")
    assert finite_rows(images).tolist() == [True, False, False, True]
    assert finite_rows(torch.full((4, 1, 2, 2), 3e38)).all()  # finite, though their sum is not
