"""Helpers of ``synthgen eval``'s feature spaces: the thread count, pixel vectors, and Inception-v3 when its
weights are on local disk. The learned spaces live in :mod:`~synthgen.evaluate.classifier` (what separates
the classes) and :mod:`~synthgen.evaluate.encoder` (what makes images of one class differ).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

from synthgen.errors import SynthgenError

INCEPTION_ENV = "SYNTHGEN_INCEPTION_WEIGHTS"
# A classifier's weights depend on how its sums are split between torch threads (BreastMNIST, seed 0: FID
# 14.55 on two threads, 15.08 on one), so eval runs on a fixed count, never the machine's core count; two is
# what docs/evaluation.md's figures use.
EVAL_THREADS = 2


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the process's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, H*W*C) in [0, 1], the pixel space of the memorization audit."""
    return images.reshape(len(images), -1).astype(np.float32) / 255


# ---------------------------------------------------------------- Inception-v3 (optional)

def inception_weights(path: str | None) -> tuple[str | None, str]:
    """Which Inception-v3 weights to use: ``--inception-weights``, else ``$SYNTHGEN_INCEPTION_WEIGHTS``.

    Returns:
        (path or None, why None). A path that was asked for but does not exist raises SynthgenError.
    """
    flag = "--inception-weights"
    if path is None and os.environ.get(INCEPTION_ENV):
        path, flag = os.environ[INCEPTION_ENV], f"${INCEPTION_ENV}"
    if path is None:
        return None, (f"no Inception-v3 weights given ({flag} PATH or ${INCEPTION_ENV}; the torch-fidelity "
                      "file weights-inception-2015-12-05-6726825d.pth)")
    if not os.path.isfile(path):
        raise SynthgenError(f"{flag} {path}: no such file; give the path of the Inception-v3 weights "
                            "(weights-inception-2015-12-05-6726825d.pth) or leave it out")
    return path, ""


def inception_features(images: np.ndarray, weights: str) -> np.ndarray:
    """2048-d pool features of torch-fidelity's Inception-v3 (the FID network), from local weights only.

    Args:
        images: uint8 (N, H, W, C); gray images are repeated to 3 channels, resizing happens inside.
        weights: path of the converted TensorFlow weights (never downloaded here).

    Returns:
        float64 (N, 2048); raises ImportError when torch-fidelity is not installed.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    except Exception as err:  # torch.load of an arbitrary file raises many types (unpickling, zip, size, ...)
        raise SynthgenError(f"{weights}: cannot load as Inception-v3 weights ({str(err).splitlines()[0]})") \
            from None
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W) uint8
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (N, 3, H, W)
    with torch.no_grad():
        out = [net(x[i:i + 64].contiguous())[0] for i in range(0, len(x), 64)]
    return torch.cat(out).double().numpy()
