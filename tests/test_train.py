"""synthgen.train on real BreastMNIST subsets: losses, files, exact resume, and refusing to clobber."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen import train as train_module
from synthgen.checkpoint import load_checkpoint, load_training_state, read_config
from synthgen.errors import Stopped, SynthgenError, restore_handlers, stop_on_signals, stops_held
from synthgen.splits import real_share_rows, validation_split
from synthgen.train import TrainConfig, default_epochs, train

SMALL = {"width": 32, "latent_dim": 16, "batch_size": 32, "device": "cpu"}


@pytest.fixture(scope="module")
def breast_small(tmp_path_factory: pytest.TempPathFactory, breast_npz: str) -> str:
    """The first 128 real BreastMNIST training images (both classes), as an .npz."""
    with np.load(breast_npz) as d:
        images, labels = d["train_images"][:128], d["train_labels"][:128]
    assert set(np.unique(labels)) == {0, 1}
    path = tmp_path_factory.mktemp("data") / "breast128.npz"
    np.savez(path, train_images=images, train_labels=labels)
    return str(path)


def _config(data: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=data, out=str(out), **{**SMALL, **kw})


def test_gan_trains_and_writes_everything(breast_small: str, tmp_path: Path) -> None:
    out = tmp_path / "gan"
    result = train(_config(breast_small, out, epochs=2, class_names=["malignant", "normal"]), progress=False)
    assert len(result.losses) == 2
    for epoch in result.losses:
        assert set(epoch) == {"loss_d", "loss_g"}
        assert all(np.isfinite(v) and v > 0 for v in epoch.values())
    for name in ("config.json", "model.safetensors", "training_state.safetensors", "training_state.json",
                 "samples/epoch-002.png"):
        assert (out / name).is_file(), name
    config = read_config(str(out))
    assert config.class_names == ["malignant", "normal"] and config.image_shape == [1, 28, 28]
    assert config.training["epochs"] == 2 and config.training["data"] == breast_small
    assert config.training["torch"] == torch.__version__ and config.training["device"] == "cpu"
    assert config.training["torch_threads"] == torch.get_num_threads()  # the weights depend on it
    assert config.training["data_sha256"] == __import__("hashlib").sha256(Path(breast_small).read_bytes()).hexdigest()
    assert load_checkpoint(str(out)).fingerprint == result.fingerprint
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporaries behind


def test_vae_loss_decreases(breast_small: str, tmp_path: Path) -> None:
    result = train(_config(breast_small, tmp_path / "vae", arch="vae", epochs=4, batch_size=16), progress=False)
    losses = [e["loss"] for e in result.losses]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert read_config(str(tmp_path / "vae")).arch == "vae"


def test_same_seed_same_model_other_seed_differs(breast_small: str, tmp_path: Path) -> None:
    a = train(_config(breast_small, tmp_path / "a", arch="vae", epochs=1), progress=False)
    b = train(_config(breast_small, tmp_path / "b", arch="vae", epochs=1), progress=False)
    c = train(_config(breast_small, tmp_path / "c", arch="vae", epochs=1, seed=1), progress=False)
    assert a.fingerprint != c.fingerprint
    # the config records the data path, which differs between a and b; compare the weights instead
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a.losses == b.losses


@pytest.mark.parametrize("arch", ["dcgan", "diffusion"])
def test_saving_less_often_gives_the_same_weights(breast_small: str, tmp_path: Path, arch: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"width": 8, "latent_dim": None} if arch == "diffusion" else {}
    every = train(_config(breast_small, tmp_path / "every", arch=arch, epochs=3, save_every=1, **small),
                  progress=False)
    second = train(_config(breast_small, tmp_path / "second", arch=arch, epochs=3, save_every=2, **small),
                   progress=False)
    monkeypatch.setattr("synthgen.train.SAVE_INTERVAL_S", 3600.0)  # the default: by time, here never before the end
    by_time = train(_config(breast_small, tmp_path / "by_time", arch=arch, epochs=3, **small), progress=False)
    assert every.fingerprint == second.fingerprint == by_time.fingerprint
    assert every.losses == second.losses == by_time.losses
    grids = {run: sorted(p.name for p in (tmp_path / run / "samples").iterdir())
             for run in ("every", "second", "by_time")}
    assert grids == {"every": ["epoch-001.png", "epoch-002.png", "epoch-003.png"],
                     "second": ["epoch-002.png", "epoch-003.png"], "by_time": ["epoch-003.png"]}
    monkeypatch.setattr("synthgen.train.SAVE_INTERVAL_S", 0.0)  # every epoch ends past the interval
    train(_config(breast_small, tmp_path / "zero", arch=arch, epochs=2, **small), progress=False)
    assert sorted(p.name for p in (tmp_path / "zero" / "samples").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    with pytest.raises(SynthgenError, match="--save-every must be a positive"):
        train(_config(breast_small, tmp_path / "bad", save_every=0), progress=False)


@pytest.mark.parametrize("arch", ["dcgan", "vae"])
def test_resume_continues_exactly(breast_small: str, tmp_path: Path, arch: str) -> None:
    straight = train(_config(breast_small, tmp_path / "run", arch=arch, epochs=3), progress=False)
    (tmp_path / "run").rename(tmp_path / "straight")
    train(_config(breast_small, tmp_path / "run", arch=arch, epochs=1), progress=False)
    resumed = train(_config(breast_small, tmp_path / "run", arch=arch, epochs=3, resume=True), progress=False)
    assert resumed.losses == straight.losses
    assert resumed.fingerprint == straight.fingerprint
    state, _ = load_training_state(str(tmp_path / "run"))
    state_straight, _ = load_training_state(str(tmp_path / "straight"))
    assert all(bool((state[k] == state_straight[k]).all()) for k in state)


@pytest.mark.parametrize("arch, images, batch, epochs", [
    ("dcgan", 546, 16, 589),  # BreastMNIST: 34 steps an epoch, 20,026 steps (the bundled model ran 600 epochs)
    ("dcgan", 128, 16, 1000),  # 8 steps an epoch would need 2,500 epochs: capped
    ("dcgan", 100_000, 16, 4), ("dcgan", 10, 16, 1000), ("dcgan", 1_000_000, 64, 2), ("vae", 546, 64, 50),
])
def test_default_epochs_follow_a_step_budget(arch: str, images: int, batch: int, epochs: int) -> None:
    assert default_epochs(arch, images, batch) == epochs


def test_unset_epochs_and_batch_size_take_the_defaults(breast_small: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "GAN_STEPS", 20)  # 128 images at batch 16: 8 steps an epoch -> 3 epochs
    out = tmp_path / "defaults"
    result = train(_config(breast_small, out, epochs=None, batch_size=None), progress=False)
    assert len(result.losses) == 3
    assert read_config(str(out)).training["batch_size"] == 16
    # a resumed run keeps the batch size it was started with, not the default
    train(_config(breast_small, tmp_path / "b32", epochs=1, batch_size=32), progress=False)
    train(_config(breast_small, tmp_path / "b32", epochs=2, batch_size=None, resume=True), progress=False)
    assert read_config(str(tmp_path / "b32")).training["batch_size"] == 32


def test_resume_keeps_the_saved_learning_rate_or_takes_a_new_one(breast_small: str, tmp_path: Path) -> None:
    out = tmp_path / "lr"

    def rates() -> tuple[float, set[float]]:
        state = json.loads((out / "training_state.json").read_text())
        optimiser = {opt["param_groups"][0]["lr"] for opt in state["optimizers"].values()}
        return read_config(str(out)).training["lr"], optimiser

    train(_config(breast_small, out, epochs=1, lr=1e-3), progress=False)
    train(_config(breast_small, out, epochs=2, resume=True), progress=False)
    assert rates() == (1e-3, {1e-3})  # not the default 2e-4
    train(_config(breast_small, out, epochs=3, lr=5e-5, resume=True), progress=False)
    assert rates() == (5e-5, {5e-5})  # the optimisers' saved state no longer overrides --lr


def test_refuses_existing_checkpoint_without_flag(breast_small: str, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    train(_config(breast_small, out, arch="vae", epochs=1), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(SynthgenError, match="--resume.*--overwrite"):
        train(_config(breast_small, out, arch="vae", epochs=1, seed=5), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    replaced = train(_config(breast_small, out, arch="vae", epochs=1, seed=5, overwrite=True), progress=False)
    assert replaced.fingerprint != load_checkpoint(str(out)).fingerprint or \
        (out / "model.safetensors").read_bytes() != before["model.safetensors"]


def test_resume_refuses_other_arch_or_data(breast_small: str, breast_npz: str, tmp_path: Path) -> None:
    out = tmp_path / "r"
    train(_config(breast_small, out, arch="vae", epochs=1), progress=False)
    with pytest.raises(SynthgenError, match="--arch"):
        train(_config(breast_small, out, arch="dcgan", epochs=2, resume=True), progress=False)
    with pytest.raises(SynthgenError, match="--data"):
        train(_config(breast_npz, out, arch="vae", epochs=2, resume=True), progress=False)
    with pytest.raises(SynthgenError, match="nothing to resume"):
        train(_config(breast_small, tmp_path / "fresh", epochs=1, resume=True), progress=False)


def test_a_real_share_trains_on_the_images_eval_gives_its_classifiers_at_that_share(
        breast_small: str, tmp_path: Path) -> None:
    out = tmp_path / "share"
    train(_config(breast_small, out, arch="vae", epochs=1, real_share=0.25), progress=False)
    with np.load(breast_small) as d:
        labels = d["train_labels"].reshape(-1)
    fit, val = validation_split(labels)
    rows = real_share_rows(labels, 0.25)
    assert set(rows) <= set(fit) and not set(rows) & set(val)  # a share of the fit part, never validation
    for c in (0, 1):  # stratified: a quarter of each class's fit rows
        assert (labels[rows] == c).sum() == max(1, round((labels[fit] == c).sum() * 0.25))
    config = read_config(str(out))
    assert config.training["real_share"] == 0.25 and config.training["num_images"] == len(rows) < len(fit) // 3
    assert "real_share" not in read_config(_trained_whole(breast_small, tmp_path)).training  # fingerprints kept
    with pytest.raises(SynthgenError, match="--real-share is 0.5 but the run was trained with 0.25"):
        train(_config(breast_small, out, arch="vae", epochs=2, real_share=0.5, resume=True), progress=False)


def _trained_whole(data: str, tmp_path: Path) -> str:
    train(_config(data, tmp_path / "whole", arch="vae", epochs=1), progress=False)
    return str(tmp_path / "whole")


def test_one_image_is_too_few_to_train_on(breast_small: str, tmp_path: Path) -> None:
    with np.load(breast_small) as d:
        np.savez(tmp_path / "one.npz", train_images=d["train_images"][:1], train_labels=d["train_labels"][:1])
    with pytest.raises(SynthgenError, match=r"one\.npz: 1 image\(s\) in split 'train'; training needs at least 2"):
        train(_config(str(tmp_path / "one.npz"), tmp_path / "x", epochs=1), progress=False)


@pytest.mark.parametrize("changes, flag", [
    ({"epochs": 0}, "--epochs"), ({"epochs": -3}, "--epochs"), ({"batch_size": 0}, "--batch-size"),
    ({"batch_size": 1}, "--batch-size must be at least 2"),
    ({"arch": "gan"}, "--arch"), ({"image_size": 30}, "--image-size"), ({"lr": 0.0}, "--lr"),
    ({"class_names": ["only-one"]}, "--class-names"), ({"width": 2}, "--width"),
    ({"real_share": 0.0}, "--real-share"), ({"real_share": 1.5}, "--real-share"),
])
def test_bad_settings_name_the_flag(breast_small: str, tmp_path: Path, changes: dict, flag: str) -> None:
    with pytest.raises(SynthgenError, match=flag):
        train(_config(breast_small, tmp_path / "x", **{**{"epochs": 1}, **changes}), progress=False)
    assert not (tmp_path / "x" / "config.json").exists()


def test_resize_and_unconditional(breast_small: str, tmp_path: Path) -> None:
    out = tmp_path / "u32"
    train(_config(breast_small, out, arch="vae", epochs=1, image_size=32, conditional=False), progress=False)
    config = read_config(str(out))
    assert config.image_shape == [1, 32, 32] and config.class_names == []
    meta = json.loads((out / "training_state.json").read_text())
    assert meta["epoch"] == 1 and len(meta["history"]) == 1


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_training_says_how_to_resume_and_resumes(stop, breast_npz: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = [sys.executable, "-m", "synthgen", "train", "--data", breast_npz, "--out", str(out), "--epochs", "12",
            "--width", "16", "--batch-size", "64", "--save-every", "1", "--quiet"]
    trainer = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and trainer.poll() is None and not (out / "training_state.json").exists():
        time.sleep(0.05)
    assert trainer.poll() is None, f"training ended before it could be stopped: {trainer.communicate()}"
    trainer.send_signal(stop)
    _, err = trainer.communicate(timeout=60)
    assert trainer.returncode == 128 + stop
    assert err.strip().splitlines()[-1] == (f"interrupted; {out} keeps the last saved epoch, if one was saved: "
                                            "run the same command with --resume to continue")
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert read_config(str(out)).training["epochs"] == 12


def test_a_stop_while_an_epoch_is_saved_waits_for_the_save() -> None:
    previous = stop_on_signals((signal.SIGTERM,))
    try:
        saved = []
        with pytest.raises(Stopped) as stop:
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler runs here: held, not raised
                saved.append("checkpoint and training state")
        assert saved and stop.value.signum == signal.SIGTERM
        with pytest.raises(OSError, match="disk full"):  # an error in the block goes out as it is
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                raise OSError("disk full")
        with stops_held():
            pass  # and the stop held during it is not raised by a later block
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # outside a held block a stop is raised at once
    finally:
        restore_handlers(previous)
