"""Where a dataset's bytes are made: the device kind and the versions of the libraries that decide them.

Computed inside a generation actor (torch is imported there, not in the driver) and recorded in the manifest
before the first shard is written; docs/design.md says what a resume does when they change.
"""

from __future__ import annotations


def device_kind(device: str) -> str:
    """"cuda:1" -> "cuda": kernels differ between kinds of device, not between two cards of one kind."""
    return device.split(":", 1)[0]


def made_on(device: str) -> dict[str, str]:
    """The device kind and the library versions this process makes bytes with (torch's build tag included)."""
    import imagecodecs
    import numpy
    import pyarrow
    import torch

    codecs = imagecodecs.version(dict)
    # plain str: torch.__version__ is a TorchVersion, whose unpickling would import torch in the driver
    where = {"device": device_kind(device), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
             "pyarrow": str(pyarrow.__version__), "imagecodecs": str(codecs["imagecodecs"]),
             "libpng": str(codecs.get("libpng", "unknown")), "zlib": str(codecs.get("zlib", "unknown"))}
    if where["device"] == "cuda":  # the CUDA and cuDNN builds pick the GPU kernels
        where |= {"cuda": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version())}
    return where
