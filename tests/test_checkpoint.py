"""Checkpoints: exact round trips, fingerprints, and refusing pickles, truncation and bad configs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from synthgen.checkpoint import CheckpointConfig, fingerprint, load_checkpoint, read_config, save_checkpoint
from synthgen.errors import SynthgenError
from synthgen.models import DCGANConfig, DCGANGenerator, config_to_dict

TESTS = str(Path(__file__).resolve().parent)


def _model_and_config(seed: int = 0) -> tuple[DCGANGenerator, CheckpointConfig]:
    torch.manual_seed(seed)
    arch = DCGANConfig(latent_dim=8, image_size=28, channels=1, num_classes=2, width=32)
    model = DCGANGenerator(arch).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    config = CheckpointConfig("dcgan", config_to_dict(arch), [1, 28, 28], 8, ["malignant", "normal"])
    return model, config


@pytest.fixture()
def ckpt_copy(tiny_checkpoint: str, tmp_path: Path) -> Path:
    """A private copy of the session's tiny checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def _refused(path: Path | str, *needles: str) -> str:
    with pytest.raises(SynthgenError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model, config = _model_and_config()
    fp = save_checkpoint(str(tmp_path), model, config)
    loaded = load_checkpoint(str(tmp_path))
    z, labels = torch.randn(16, 8), torch.arange(16) % 2
    with torch.no_grad():
        assert torch.equal(model(z, labels), loaded.model(z, labels))
    assert loaded.fingerprint == fp
    assert loaded.config.class_names == ["malignant", "normal"] and not loaded.model.training


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    model, config = _model_and_config()
    fp1 = save_checkpoint(str(tmp_path / "a"), model, config)
    fp2 = save_checkpoint(str(tmp_path / "b"), model, config)
    assert fp1 == fp2 == load_checkpoint(str(tmp_path / "b")).fingerprint
    assert len(fp1) == 64
    with torch.no_grad():
        first = next(model.parameters())
        first.view(-1)[0] += 1e-6
    assert save_checkpoint(str(tmp_path / "c"), model, config) != fp1
    config.class_names = ["benign", "normal"]  # the config is part of the identity too
    assert save_checkpoint(str(tmp_path / "d"), model, config) != fp1
    weights = (tmp_path / "d" / "model.safetensors").read_bytes()
    assert fingerprint(config, weights) == load_checkpoint(str(tmp_path / "d")).fingerprint


def test_tiny_checkpoint_fixture_loads(tiny_checkpoint: str) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.config.class_names == ["malignant", "normal"]
    assert loaded.config.image_shape == [1, 28, 28] and loaded.config.arch == "dcgan"


class _Payload:
    """Unpickling this creates the marker file: proof that the pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_pickle_weights_refused_without_executing(ckpt_copy: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    weights = ckpt_copy / "model.safetensors"
    if kind == "torch.save":
        torch.save({"project.0.weight": _Payload(str(marker))}, weights)
    else:
        weights.write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    _refused(ckpt_copy, "model.safetensors", "pickle")
    assert not marker.exists()
    # the payload is live: unpickling it really would have created the file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe))))
    assert probe.exists()


def test_truncated_weights(ckpt_copy: Path) -> None:
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _refused(ckpt_copy, "model.safetensors", "corrupt or truncated")


def test_corrupt_config_json(ckpt_copy: Path) -> None:
    (ckpt_copy / "config.json").write_text('{"format": "synthgen-checkpoint", ')
    _refused(ckpt_copy, "config.json", "not valid JSON")
    (ckpt_copy / "config.json").write_text('{"hello": 1}')
    _refused(ckpt_copy, "config.json", "not a synthgen checkpoint")


def test_config_that_does_not_match_the_weights(ckpt_copy: Path) -> None:
    raw = json.loads((ckpt_copy / "config.json").read_text())
    raw["model_config"]["width"] = 64
    (ckpt_copy / "config.json").write_text(json.dumps(raw))
    _refused(ckpt_copy, "model.safetensors", "do not match config.json")


def test_config_with_wrong_image_shape(ckpt_copy: Path) -> None:
    raw = json.loads((ckpt_copy / "config.json").read_text())
    raw["image_shape"] = [1, 32, 32]
    (ckpt_copy / "config.json").write_text(json.dumps(raw))
    _refused(ckpt_copy, "[1, 28, 28]", "[1, 32, 32]")


def test_missing_files(ckpt_copy: Path, tmp_path: Path) -> None:
    (ckpt_copy / "config.json").unlink()
    _refused(ckpt_copy, "config.json", "no such file")
    _refused(tmp_path / "nowhere", "nowhere", "no such checkpoint directory")
    (tmp_path / "weights.safetensors").write_bytes(b"x")  # a file where a directory belongs
    _refused(tmp_path / "weights.safetensors", "weights.safetensors: is a file", "checkpoint directory")


def test_custom_arch_checkpoint_needs_allow_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.delitem(sys.modules, "custom_arch", raising=False)
    from custom_arch import tiny_factory

    model = tiny_factory({"latent_dim": 4, "size": 8, "channels": 1}).eval()
    config = CheckpointConfig("custom_arch:tiny_factory", {"latent_dim": 4, "size": 8, "channels": 1},
                              [1, 8, 8], 4)
    save_checkpoint(str(tmp_path), model, config)
    monkeypatch.delitem(sys.modules, "custom_arch")
    _refused(tmp_path, "config.json", "allow-custom-arch")
    assert "custom_arch" not in sys.modules
    loaded = load_checkpoint(str(tmp_path), allow_import=True)
    assert torch.equal(loaded.model(torch.ones(1, 4)), model(torch.ones(1, 4)))


def test_read_config_reads_no_weights(ckpt_copy: Path) -> None:
    os.remove(ckpt_copy / "model.safetensors")
    assert read_config(str(ckpt_copy)).latent_dim == 16
