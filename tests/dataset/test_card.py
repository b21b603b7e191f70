"""The dataset card: license and citation from what the training data declared, the intended use, and the
evaluation and memorization results of synthgen eval on this very dataset."""

from __future__ import annotations

import json
import shutil

import pytest

from synthgen import storage
from synthgen.checkpoint import (
    bundled_root,
    data_terms,
    inspect_checkpoint,
    read_config,
)
from synthgen.dataset import card
from synthgen.dataset import manifest as mf
from synthgen.generate.config import RunConfig
from synthgen.generate.plan import parse_label_plan


def complete(checkpoint: str, out, **settings) -> mf.Manifest:
    ckpt, fingerprint = inspect_checkpoint(checkpoint)
    config = RunConfig(count=10, model=checkpoint, **settings)
    manifest = mf.new_manifest(config, ckpt, fingerprint, checkpoint, parse_label_plan(None, ckpt.class_names))
    manifest.status = "complete"
    mf.save(storage.locate(str(out)), manifest)
    return manifest


def report(near_copies=3) -> dict:
    space = {"fid_kid": {"fid": 14.61, "baseline_real_test": {"fid": 1.6}},
             "precision_recall": {"precision": 0.63, "recall": 0.79}}
    return {"real": {"path": "data/breastmnist.npz"}, "settings": {"seed": 0}, "synthetic": {"images_used": 10},
            "feature_spaces": {"classifier": space, "inception": {"skipped": "no weights"}},
            "memorization": {"near_copies": near_copies, "near_copy_fraction_either": near_copies / 10,
                             "copy_ratio": 0.5, "pixel": {"baseline_real_test_near_copy_fraction": 0.276},
                             "feature": {"baseline_real_test_near_copy_fraction": 0.05}},
            "downstream": {"arms": {"real": {"auc": 0.891, "low": 0.85, "high": 0.93}},
                           "verdicts": {"all": "no measurable gain"}}}


def test_nobody_declared_the_terms_so_the_card_says_unknown(tmp_path, tiny_checkpoint):
    manifest = complete(tiny_checkpoint, tmp_path)
    card.write_card(storage.locate(str(tmp_path)), manifest)
    text = (tmp_path / "README.md").read_text()
    assert "license: unknown" in text and "cc-by-4.0" not in text and "nobody declared them" in text
    assert "Not for diagnosis" in text and "Not evaluated yet" in text


def test_the_bundled_model_declares_breastmnist_terms_beside_an_unchanged_fingerprint():
    config, fingerprint = inspect_checkpoint(None)
    assert fingerprint.startswith("b438603d8daf")  # datasets made with it stay resumable
    terms = data_terms(None, config)
    assert terms["license"] == "CC-BY-4.0" and "MedMNIST v2" in terms["citation"]
    assert terms["declared_in"] == "data_terms.json"


def test_terms_in_config_json_win_and_odd_licenses_are_other_in_the_front_matter(tmp_path, tiny_checkpoint):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (model / "data_terms.json").write_text(json.dumps({"license": "CC BY-NC 4.0 (custom)", "citation": "Me"}))
    manifest = complete(str(model), tmp_path / "ds")
    assert manifest.model["data_terms"]["citation"] == "Me"
    card.write_card(storage.locate(str(tmp_path / "ds")), manifest)
    text = (tmp_path / "ds" / "README.md").read_text()
    assert "license: other" in text and "**CC BY-NC 4.0 (custom)**" in text
    config = read_config(str(model))
    config.training.update(data_license="MIT", data_citation="Them")
    assert data_terms(str(model), config) == {"license": "MIT", "citation": "Them", "declared_in": "config.json"}
    config.training.pop("data_citation")  # a license in config.json, the citation beside it
    assert data_terms(str(model), config) == {"license": "MIT", "citation": "Me",
                                              "declared_in": "config.json + data_terms.json"}


def test_eval_leaves_a_summary_the_card_quotes_for_this_dataset_only(tmp_path, tiny_checkpoint):
    complete(tiny_checkpoint, tmp_path)
    assert card.record_eval(str(tmp_path), report()) is None
    text = (tmp_path / "README.md").read_text()
    assert "FID 14.61 (real test split 1.60)" in text and "test AUC 0.891 [0.850, 0.930]" in text
    assert "**Memorization**: 3 of 10 synthetic images (30.0%)" in text and "27.6% (pixel)" in text
    assert "inception" not in text.split("## Evaluation")[1].split("##")[0]  # a skipped space is not quoted
    replaced = complete(tiny_checkpoint, tmp_path, seed=1)  # another dataset in the same place
    card.write_card(storage.locate(str(tmp_path)), replaced)
    assert "Not evaluated yet" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("status", ["in_progress", None])
def test_eval_of_an_unfinished_or_foreign_dataset_writes_nothing(tmp_path, tiny_checkpoint, status):
    if status:
        manifest = complete(tiny_checkpoint, tmp_path)
        manifest.status = status
        mf.save(storage.locate(str(tmp_path)), manifest)
    assert card.record_eval(str(tmp_path), report()) is None
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "README.md").exists()


@pytest.mark.parametrize("name", ["breastmnist-dcgan", "retinamnist-dcgan"])
def test_the_bundled_terms_file_ships_with_the_package(name):
    assert (bundled_root() / name / "data_terms.json").is_file()
    terms = data_terms(name, read_config(name))
    assert terms["license"] == "CC-BY-4.0" and "MedMNIST v2" in terms["citation"]
