"""Sampling: shape and range, and pixels independent of batch size and of which subset is generated."""

import numpy as np
import pytest

from synthgen.checkpoint import load_checkpoint
from synthgen.plan import INFERENCE_FORMS, image_seeds
from synthgen.inference import prepare_model
from synthgen.sampling import generate


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
