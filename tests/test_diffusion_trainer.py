"""synthgen train --arch diffusion on real data subsets: files, the EMA in the checkpoint, exact resume, 3-channel
images at another size, and its flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.checkpoint import load_checkpoint, load_training_state, read_config
from synthgen.errors import SynthgenError
from synthgen.train import TrainConfig, default_epochs, train

SMALL = {"arch": "diffusion", "width": 8, "batch_size": 16, "device": "cpu"}


def subset(npz: str, out: Path, count: int) -> str:
    with np.load(npz) as d:
        np.savez(out, train_images=d["train_images"][:count], train_labels=d["train_labels"][:count])
    return str(out)


@pytest.fixture(scope="module")
def breast32(tmp_path_factory, breast_npz) -> str:
    return subset(breast_npz, tmp_path_factory.mktemp("data") / "breast32.npz", 32)


def test_trains_saves_the_ema_and_resumes_exactly(breast32: str, tmp_path: Path) -> None:
    straight = train(TrainConfig(data=breast32, out=str(tmp_path / "a"), epochs=2, **SMALL), progress=False)
    assert len(straight.losses) == 2 and all(np.isfinite(e["loss"]) for e in straight.losses)
    config = read_config(str(tmp_path / "a"))
    assert config.arch == "diffusion" and config.latent_dim == 784 and config.class_names == ["0", "1"]
    assert config.model_config["scheduler"]["prediction_type"] == "v_prediction"
    assert (tmp_path / "a" / "samples" / "epoch-002.png").is_file()
    # the checkpoint holds the average, the training state the trained weights: they differ
    tensors, meta = load_training_state(str(tmp_path / "a"))
    ema = load_checkpoint(str(tmp_path / "a")).model.state_dict()
    key = "unet.conv_in.weight"
    assert not torch.equal(ema[f"denoiser.{key}"], tensors[f"trained.{key}"]) and meta["arch"] == "diffusion"

    out = tmp_path / "b"
    train(TrainConfig(data=breast32, out=str(out), epochs=1, **SMALL), progress=False)
    resumed = train(TrainConfig(data=breast32, out=str(out), epochs=2, resume=True, **SMALL), progress=False)
    assert resumed.fingerprint == straight.fingerprint
    assert [e["loss"] for e in resumed.losses] == [e["loss"] for e in straight.losses]


def test_three_channel_images_at_32_px(tmp_path: Path, retina_npz: str) -> None:
    data = subset(retina_npz, tmp_path / "retina16.npz", 16)
    result = train(TrainConfig(data=data, out=str(tmp_path / "r"), epochs=1, image_size=32, **SMALL),
                   progress=False)
    ckpt = load_checkpoint(str(tmp_path / "r"))
    assert ckpt.config.image_shape == [3, 32, 32] and ckpt.fingerprint == result.fingerprint


def test_latent_dim_is_refused_and_epochs_follow_a_step_budget(breast32: str, tmp_path: Path) -> None:
    with pytest.raises(SynthgenError, match="--latent-dim"):
        train(TrainConfig(data=breast32, out=str(tmp_path / "x"), latent_dim=10, **SMALL), progress=False)
    assert default_epochs("diffusion", 546, 32) == 1177  # 17 steps an epoch, 20,000 steps
    assert default_epochs("diffusion", 32, 32) == 2000  # capped
