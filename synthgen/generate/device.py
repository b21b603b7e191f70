"""The torch device a process computes on, and whether the GPU a process was given is usable: torch only, no ray.

Training, ``synthgen sample`` and the generation actors all pick their device here, so "auto" means the same
everywhere; a generation actor that holds a GPU it cannot use stops the run instead of falling back to CPU.
"""

from __future__ import annotations

import re
import warnings

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when torch can use it, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as asked.

    Raises:
        ValueError: an unknown name, or cuda asked for where torch cannot use it (the reason included).
    """
    if name == "auto":
        return torch.device("cuda" if cuda_unusable_reason() is None else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"must be {DEVICE_CHOICES}, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"must be {DEVICE_CHOICES}, got {name!r}")
    if device.type == "cuda":
        reason = cuda_unusable_reason()
        if reason is not None:
            raise ValueError(f"{name} was asked for but torch cannot use CUDA here: {reason} ({versions()})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def cuda_unusable_reason() -> str | None:
    """Why torch cannot compute on CUDA in this process, in one line; None when a kernel runs on cuda:0."""
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    with warnings.catch_warnings(record=True) as caught:  # e.g. "the NVIDIA driver on your system is too old"
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        torch.cuda.init()  # raises with the driver's own words where the count only says 0
        if count == 0:
            return _first_line(caught) or "torch sees no CUDA device"
        # a driver or build mismatch may only show in the first kernel ("no kernel image is available")
        torch.ones(1, device="cuda").add_(1).item()
    except (RuntimeError, AssertionError) as err:
        return _one_line(str(err)) or _first_line(caught) or type(err).__name__
    return None


def gpu_holder_problem(node: str, gpu_ids: list[int]) -> str | None:
    """What stops a process that holds GPUs ``gpu_ids`` on ``node`` from using them, as the one line the user
    sees, with what to do; None when CUDA works."""
    reason = cuda_unusable_reason()
    if reason is None:
        return None
    return (f"the actor on node {node} holds GPU(s) {gpu_ids} but torch cannot use CUDA: {reason} ({versions()}); "
            "install a CUDA build of torch that matches the node's NVIDIA driver, or run with --gpus 0 for CPU actors")


def versions() -> str:
    """torch's version, the CUDA version it was built for and the node's NVIDIA driver, for error messages."""
    return f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, NVIDIA driver {_driver()}"


def _driver() -> str:
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"Kernel Module\s+(\S+)", f.read())
    except OSError:
        return "none found"
    return found.group(1) if found else "unknown"


def _first_line(caught: list[warnings.WarningMessage]) -> str:
    return next((_one_line(str(w.message)) for w in caught if "CUDA" in str(w.message)), "")


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:1]).rstrip(".")
