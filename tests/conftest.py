"""Shared fixtures: the real data files, a tiny (untrained) checkpoint made once per session, this process's Ray
and a `ray start` head shared by the engine tests. The processes behind them are started by ``processes``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from processes import env_with_tests, pythonpath_with_tests
from processes import ray_head as start_ray_head

from synthgen.checkpoint import CheckpointConfig, save_checkpoint
from synthgen.models import DCGANConfig, DCGANGenerator, config_to_dict

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def breast_npz() -> str:
    """Path to the real BreastMNIST file (546 train images, 28x28 grayscale, 0=malignant 1=normal)."""
    path = DATA_DIR / "breastmnist.npz"
    assert path.is_file(), f"missing test data {path}"
    return str(path)


@pytest.fixture(scope="session")
def breast(breast_npz):
    """BreastMNIST's training split as an ImageSet (images, labels, class names); do not modify it."""
    from synthgen.readers import load_images

    return load_images(breast_npz)


@pytest.fixture(scope="session")
def retina_npz() -> str:
    """Path to the real RetinaMNIST file (1080 train images, 28x28 RGB, 5 grades)."""
    path = DATA_DIR / "retinamnist.npz"
    assert path.is_file(), f"missing test data {path}"
    return str(path)


def make_tiny_checkpoint(out_dir: Path, seed: int = 0) -> str:
    """Save a randomly initialised conditional DCGAN (width 32, malignant/normal, 28x28); return its fingerprint."""
    torch.manual_seed(seed)
    model_config = DCGANConfig(latent_dim=16, image_size=28, channels=1, num_classes=2, width=32, embed_dim=8)
    generator = DCGANGenerator(model_config).eval()
    config = CheckpointConfig(
        arch="dcgan", model_config=config_to_dict(model_config), image_shape=[1, 28, 28],
        latent_dim=model_config.latent_dim, class_names=["malignant", "normal"],
        training={"note": "random init, made by tests/conftest.py"},
    )
    return save_checkpoint(str(out_dir), generator, config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a small conditional DCGAN checkpoint (random weights); do not modify it."""
    out = tmp_path_factory.mktemp("tiny-checkpoint")
    make_tiny_checkpoint(out)
    return str(out)


def make_tiny_diffusion_checkpoint(out_dir: Path, seed: int = 0, num_classes: int = 2) -> str:
    """Save a randomly initialised diffusion model (a UNet of width 8, one layer per block, 28x28 gray,
    malignant/normal); return its fingerprint. Its images are noise-like, which is all determinism needs."""
    from synthgen.models import DiffusionConfig, DiffusionSampler, build_denoiser

    torch.manual_seed(seed)
    model_config = DiffusionConfig(image_size=28, channels=1, num_classes=num_classes, width=8, layers_per_block=1,
                                   attention_head_dim=8)
    model = DiffusionSampler(build_denoiser(model_config)).eval()
    names = ["malignant", "normal"][:num_classes]
    config = CheckpointConfig(arch="diffusion", model_config=config_to_dict(model_config), image_shape=[1, 28, 28],
                              latent_dim=model_config.latent_dim, class_names=names,
                              training={"note": "random init, made by tests/conftest.py"})
    return save_checkpoint(str(out_dir), model, config)


@pytest.fixture(scope="session")
def tiny_diffusion_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a tiny class-conditional diffusion checkpoint (random weights); do not modify it."""
    out = tmp_path_factory.mktemp("tiny-diffusion")
    make_tiny_diffusion_checkpoint(out)
    return str(out)


@pytest.fixture(scope="session")
def overflowing_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny checkpoint with class 1's label embedding scaled by 1e6: its activations stay finite in fp32 and
    bf16 but pass fp16's 65504, so its class-1 images come out inf/NaN in fp16 only; do not modify it."""
    from synthgen.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("overflowing-checkpoint")
    make_tiny_checkpoint(out)
    ckpt = load_checkpoint(str(out))
    with torch.no_grad():
        ckpt.model.label_embed.weight[1] *= 1e6
    save_checkpoint(str(out), ckpt.model, ckpt.config)
    return str(out)


# --- Ray: one in-process instance per test session, and a real `ray start --head` node (with declared GPUs, so
# GPU scheduling is exercised on a CPU machine) for runs that join a cluster.


@pytest.fixture(scope="session")
def ray_local():
    """This process's Ray (2 CPUs), shared by every engine test; the engine reuses it. Its workers inherit
    the environment of the moment it starts, with this directory on PYTHONPATH."""
    import ray

    if not ray.is_initialized():
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = pythonpath_with_tests(saved)
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """The GCS address of a `ray start --head` node with 2 CPUs and 2 declared GPUs (``processes.ray_head``),
    its workers with this directory on PYTHONPATH."""
    with start_ray_head(tmp_path_factory.mktemp("rayhead"), env_with_tests()) as address:
        yield address
