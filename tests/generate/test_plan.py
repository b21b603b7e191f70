"""Plan properties: coverage, no overlap, seeds and labels independent of how indices are split."""

import numpy as np
import pytest

from synthgen.errors import SynthgenError
from synthgen.generate.plan import image_seeds, num_shards, parse_label_plan, plan_shards, shard_of, shard_spec

CLASSES = ["malignant", "normal"]


@pytest.mark.parametrize("count,size", [(1, 1), (10, 3), (1000, 1000), (1001, 1000), (12345, 97)])
def test_shards_cover_every_index_exactly_once(count, size):
    shards = list(plan_shards(count, size))
    covered = np.concatenate([s.indices() for s in shards])
    np.testing.assert_array_equal(covered, np.arange(count))
    assert [s.shard_id for s in shards] == list(range(len(shards)))
    assert all(0 < s.count <= size for s in shards)


@pytest.mark.parametrize("count,size", [(1, 1), (10, 3), (1001, 1000), (12345, 97)])
def test_one_shard_and_an_index_shard_agree_with_the_plan(count, size):
    shards = list(plan_shards(count, size))
    assert num_shards(count, size) == len(shards)
    assert [shard_spec(s.shard_id, count, size) for s in shards] == shards
    for i in (0, count // 2, count - 1):
        assert shards[shard_of(i, size)].start <= i < shards[shard_of(i, size)].stop


def test_an_unconditional_plan_gives_the_label_the_format_and_readers_mean_by_unlabeled():
    from synthgen.dataset.format import UNLABELED

    assert parse_label_plan(None, []).labels(np.arange(3)).tolist() == [UNLABELED] * 3


def test_seeds_do_not_depend_on_shard_size():
    whole = image_seeds(7, np.arange(5000))
    for size in (1, 64, 999):
        parts = np.concatenate([image_seeds(7, s.indices()) for s in plan_shards(5000, size)])
        np.testing.assert_array_equal(parts, whole)


def test_seeds_are_distinct_and_stored_values_hold():
    seeds = image_seeds(2026, np.arange(200_000))
    assert len(np.unique(seeds)) == len(seeds)
    assert len(set(image_seeds(0, np.arange(100))) & set(image_seeds(1, np.arange(100)))) == 0
    # A format, not an implementation detail: these must never change.
    assert image_seeds(2026, np.array([0, 1, 999999])).tolist() == [
        9635379227685234915, 6435377145698055438, 8627612773954571279]


def test_balanced_plan_alternates_classes():
    plan = parse_label_plan(None, CLASSES)
    assert plan.labels(np.arange(6)).tolist() == [0, 1, 0, 1, 0, 1]
    assert parse_label_plan("balanced", CLASSES) == plan


def test_weighted_plan_holds_its_ratio_in_any_stretch():
    plan = parse_label_plan("malignant=0.7,normal=0.3", CLASSES)
    labels = plan.labels(np.arange(100_000))
    assert abs(np.mean(labels == 0) - 0.7) < 1e-3
    stretch = plan.labels(np.arange(50_000, 51_000))
    assert abs(np.mean(stretch == 0) - 0.7) < 0.01
    np.testing.assert_array_equal(stretch, labels[50_000:51_000])


def test_single_class_and_index_names():
    assert set(parse_label_plan("normal", CLASSES).labels(np.arange(50)).tolist()) == {1}
    assert set(parse_label_plan("0", CLASSES).labels(np.arange(50)).tolist()) == {0}
    by_index = parse_label_plan("0=1,1=3", CLASSES).labels(np.arange(4000))
    assert abs(np.mean(by_index == 1) - 0.75) < 0.01


@pytest.mark.parametrize("text,classes,message", [
    ("benign=1", CLASSES, "unknown class 'benign'"),
    ("malignant=x", CLASSES, "not name=weight"),
    ("malignant=-1", CLASSES, ">= 0"),
    ("malignant=0,normal=0", CLASSES, "add up to 0"),
    ("malignant", [], "unconditional"),
])
def test_bad_label_plans(text, classes, message):
    with pytest.raises(SynthgenError, match=message):
        parse_label_plan(text, classes)


@pytest.mark.parametrize("count,size,flag", [(0, 10, "--count"), (-5, 10, "--count"), (10, 0, "--shard-size")])
def test_impossible_counts(count, size, flag):
    with pytest.raises(SynthgenError, match=flag):
        list(plan_shards(count, size))


def test_unconditional_plan():
    plan = parse_label_plan(None, [])
    assert plan.kind == "none" and plan.labels(np.arange(3)).tolist() == [-1, -1, -1]
