"""The autoencoder feature space sees a collapsed generator that the real test split is not, and is cached."""

from __future__ import annotations

import numpy as np

from synthgen.evaluate import encoder as enc
from synthgen.evaluate import metrics
from synthgen.splits import stratified_part
from synthgen.readers import load_images

QUICK = enc.EncoderConfig(steps=300)  # half the default: enough to see the collapse, quicker on CPU


def _standardised(model, train, *others):
    ref = enc.encode(model, train)  # (N, D)
    mean, std = ref.mean(0), ref.std(0) + 1e-8
    return [(ref - mean) / std] + [(enc.encode(model, x) - mean) / std for x in others]


def test_repeating_five_percent_of_the_training_images_scores_worse_than_the_test_split(breast_npz, tmp_path):
    train, test = load_images(breast_npz, "train"), load_images(breast_npz, "test")
    kept = stratified_part(train.labels, 0.05, seed=0)  # 5% of each class: 7 malignant, 20 normal
    repeats = np.resize(kept, len(train.labels))  # the "generator": those images over and over
    fake_x, fake_y = train.images[repeats], train.labels[repeats]
    model, cache = enc.cached_autoencoder(train.images, 0, QUICK, str(tmp_path))
    real, held, fake = _standardised(model, train.images, test.images, fake_x)
    groups = [("all", slice(None), slice(None), slice(None))] + [
        (c, train.labels == c, test.labels == c, fake_y == c) for c in (0, 1)]
    for name, r, t, f in groups:
        fid_fake, fid_test = metrics.frechet_distance(real[r], fake[f]), metrics.frechet_distance(real[r], held[t])
        recall_fake = metrics.precision_recall(real[r], fake[f])[1]
        recall_test = metrics.precision_recall(real[r], held[t])[1]
        assert fid_fake > 2 * fid_test, (name, fid_fake, fid_test)
        assert recall_fake < recall_test - 0.3, (name, recall_fake, recall_test)
    again, hit = enc.cached_autoencoder(train.images, 0, QUICK, str(tmp_path))
    assert not cache["cached"] and hit["cached"] and hit["cache"].startswith(str(tmp_path))
    np.testing.assert_array_equal(enc.encode(again, test.images), enc.encode(model, test.images))
    other, miss = enc.cached_autoencoder(train.images[1:], 0, QUICK, str(tmp_path))  # other data: other key
    assert not miss["cached"] and miss["key"] != cache["key"]
