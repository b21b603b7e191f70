"""synthgen.loading / synthgen.sampler / synthgen.decoded_cache: the fast loader reads every row exactly once per
epoch across DataLoader workers and DDP ranks (real DataLoader workers, a real 2-process gloo group), windows
bound how far a row moves, the decoded cache is built once beside nothing of the user's, transforms apply.

Datasets are written by synthgen's own writers from the real BreastMNIST images (test_data.write_dataset), so
each row is identified by its pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data import digest, write_dataset

from synthgen.data import RowGroupReader, SyntheticImageDataset, loader
from synthgen.decoded_cache import cache_key
from synthgen.errors import SynthgenError
from synthgen.imaging import PARQUET_PNG_SETTINGS
from synthgen.loading import read_blocks
from synthgen.sampler import WindowShuffleSampler


@pytest.fixture(scope="module")
def breast_ds(tmp_path_factory, breast) -> Path:
    """546 rows in 11 shards of 50: eleven row groups."""
    return write_dataset(tmp_path_factory.mktemp("breast") / "ds", breast.images, breast.labels,
                         ["malignant", "normal"], 50)


@pytest.fixture(scope="module")
def expected(breast) -> list[str]:
    return sorted(digest(torch.from_numpy(im.transpose(2, 0, 1)) / 255) for im in breast.images)


def digests(batches) -> list[str]:
    return [digest(x) for images, _ in batches for x in images]


@pytest.mark.parametrize("world_size", [2, 3])
def test_two_workers_and_ranks_read_every_row_once(breast_ds, expected, world_size, tmp_path):
    for options in ({"window": 2}, {"cache": tmp_path / "cache"}, {"shuffle": False}):
        seen = []
        for rank in range(world_size):
            dl = loader(breast_ds, batch_size=32, num_workers=2, rank=rank, world_size=world_size, seed=5,
                        **options)
            batches = [images for images, _ in dl]
            mine = [digest(x) for images in batches for x in images]
            assert len(mine) == dl.batch_sampler.rank_rows() and len(batches) == len(dl)  # len() holds
            seen += mine
        assert sorted(seen) == expected, options  # all ranks together: every row exactly once


@pytest.mark.parametrize("kind", ["stored", "raw", "png-tree"])
def test_every_layout_gives_the_items_of_the_map_style_dataset(tmp_path, breast, kind):
    """Stored-block PNGs (as synthgen run writes Parquet: decoded a batch at a time), raw pixels, a PNG tree."""
    options = {"stored": {"png_settings": PARQUET_PNG_SETTINGS}, "raw": {"encoding": "raw"},
               "png-tree": {"fmt": "png"}}[kind]
    ds = write_dataset(tmp_path / kind, breast.images, breast.labels, ["malignant", "normal"], 200, **options)
    plain = SyntheticImageDataset(ds)
    read = RowGroupReader(plain.info, None).read(0, png_rows=True)
    assert ("png_rows" in read) == (kind == "stored")  # one PNG length: rows of one array, no object per row
    images, labels = zip(*loader(ds, batch_size=100, shuffle=False, num_workers=0))
    assert torch.equal(torch.cat(images), torch.stack([plain[i][0] for i in range(len(plain))]))
    assert torch.cat(labels).tolist() == breast.labels.tolist()
    shuffled = digests(loader(ds, batch_size=64, num_workers=2, window=1))
    assert sorted(shuffled) == sorted(digests(zip(images, labels)))


def test_epochs_reshuffle_and_are_seeded(breast_ds, expected):
    dl = loader(breast_ds, batch_size=64, num_workers=2, window=3, seed=1)
    first, second = digests(dl), digests(dl)  # each pass is the next epoch
    assert sorted(first) == sorted(second) == expected and first != second
    dl.batch_sampler.set_epoch(0)
    assert digests(dl) == first

    def batches(dl) -> list[tuple[str, ...]]:
        return sorted(tuple(digest(x) for x in images) for images, _ in dl)

    # other worker counts deal the same batches to workers differently: same batches, other order
    dl.batch_sampler.set_epoch(0)
    assert batches(loader(breast_ds, batch_size=64, num_workers=0, window=3, seed=1)) == batches(dl)
    plain = SyntheticImageDataset(breast_ds)
    in_order = digests(loader(breast_ds, batch_size=100, shuffle=False, num_workers=2))
    assert in_order == [digest(plain[i][0]) for i in range(len(plain))]


def test_window_bounds_how_far_a_row_moves():
    rows = [1024] * 40 + [500]
    sampler = WindowShuffleSampler(rows, batch_size=256, window=4, seed=0, num_workers=1)
    spans = sampler.spans(0)
    assert all(len(s) == 4096 for s in spans[:-1])  # 4 groups, a multiple of the batch
    starts = np.concatenate([[0], np.cumsum(rows)])
    for span in spans:
        groups = np.unique(np.searchsorted(starts, span, side="right") - 1)
        assert len(groups) <= 5  # a span holds at most window + 1 groups (one cut at each end)
    order = np.concatenate(spans)
    assert sorted(order.tolist()) == list(range(sum(rows))) and not np.array_equal(order, np.sort(order))
    batches = list(WindowShuffleSampler(rows, 256, window=4, num_workers=2))
    assert sum(len(b) for b in batches) == sum(rows) and all(len(b) == 256 for b in batches[:-1])
    dropped = WindowShuffleSampler(rows, 256, window=4, num_workers=2, drop_last=True)
    assert len(list(dropped)) == len(dropped) == sum(rows) // 256
    # 1025 rows on 2 ranks: 512 and 513, so 2 and 3 batches; drop_last gives both 2 full ones (DDP steps agree)
    ranks = [WindowShuffleSampler([1025], 256, rank=r, world_size=2, num_workers=2, drop_last=True) for r in (0, 1)]
    assert [[len(b) for b in s] for s in ranks] == [[256, 256]] * 2 and [len(s) for s in ranks] == [2, 2]


def _ddp_rank(rank: int, world_size: int, init_file: str, dataset: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dl = loader(dataset, batch_size=32, num_workers=2, window=2, seed=7)  # rank and world from the group
        Path(out, f"rank{rank}.txt").write_text("\n".join(digests(dl)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_two_process_ddp_reads_every_row_once(breast_ds, expected, tmp_path):
    args = (2, str(tmp_path / "init"), str(breast_ds), str(tmp_path))
    mp.start_processes(_ddp_rank, args=args, nprocs=2, start_method="fork")  # fork: no second torch import
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split("\n") for r in range(2)]
    assert abs(len(ranks[0]) - len(ranks[1])) <= 1 and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == expected


def test_decoded_cache_is_built_once_outside_the_dataset(breast_ds, breast, tmp_path):
    before = sorted(p.name for p in breast_ds.rglob("*"))
    cached = SyntheticImageDataset(breast_ds, cache=tmp_path / "c")
    plain = SyntheticImageDataset(breast_ds)
    folder = tmp_path / "c" / cache_key(plain.info)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [folder.name]  # no .tmp- left
    assert sorted(p.name for p in breast_ds.rglob("*")) == before  # the user's dataset is untouched
    for i in (0, 49, 50, 545, 300):
        assert torch.equal(cached[i][0], plain[i][0]) and cached[i][1] == plain[i][1]
    made = (folder / "pixels.u8").stat().st_mtime_ns
    SyntheticImageDataset(breast_ds, cache=tmp_path / "c")
    assert (folder / "pixels.u8").stat().st_mtime_ns == made  # opened, not rebuilt
    other = write_dataset(tmp_path / "other", breast.images[::-1].copy(), breast.labels[::-1].copy(),
                          ["malignant", "normal"], 50)
    assert cache_key(SyntheticImageDataset(other).info) != folder.name  # other bytes, other key


def test_cache_and_window_bad_input(breast_ds, tmp_path):
    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    for f in (breast_ds / "data").iterdir():
        (copy / "data" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SynthgenError, match="needs the dataset's manifest.json"):
        loader(copy, cache=tmp_path / "c")
    assert len(loader(copy, batch_size=100)) == 6  # without the cache a copy without manifest still reads
    with pytest.raises(SynthgenError, match="window must be >= 0"):
        loader(breast_ds, window=-1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SynthgenError, match="cannot create the decoded cache"):
        loader(breast_ds, cache=blocker)


def test_transforms_per_item_per_batch_and_as_dicts(breast_ds):
    base = next(iter(loader(breast_ds, batch_size=8, shuffle=False, num_workers=0)))[0]  # (8, 1, 28, 28)
    flip = next(iter(loader(breast_ds, batch_size=8, shuffle=False, num_workers=0,
                            transform=lambda x: torch.flip(x, dims=[-1]))))[0]
    assert torch.equal(flip, torch.flip(base, dims=[-1]))
    doubled, labels = next(iter(loader(breast_ds, batch_size=8, shuffle=False, num_workers=0,
                                       batch_transform=lambda x: x * 2)))
    assert torch.equal(doubled, base * 2) and labels.dtype == torch.int64
    raw = next(iter(loader(breast_ds, batch_size=8, shuffle=False, num_workers=0, dtype=torch.uint8)))[0]
    assert raw.dtype == torch.uint8 and torch.equal(raw.float() / 255, base)
    monai = pytest.importorskip("monai.transforms")
    flipd = monai.Compose([monai.RandFlipd(keys="image", prob=1.0, spatial_axis=1)])  # MONAI: (C, H, W) items
    items, _ = next(iter(loader(breast_ds, batch_size=8, shuffle=False, num_workers=2, transform=flipd,
                                dict_transforms=True)))
    assert type(items) is torch.Tensor and torch.equal(items, torch.flip(base, dims=[-1]))


def test_s3_reads_the_same_rows_as_local_disk(breast, breast_ds, tmp_path, monkeypatch):
    import boto3
    from processes import S3_CREDENTIALS, s3_server

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with s3_server(tmp_path / "moto.log") as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="loading")
        uri = f"s3://loading/ds?endpoint_override={endpoint.removeprefix('http://')}&scheme=http"
        write_dataset(uri, breast.images, breast.labels, ["malignant", "normal"], 50)
        dl = loader(uri, batch_size=32, num_workers=2, window=2, seed=3)  # reads the 11 footers once, here

        def shard_reads() -> int:
            return sum("GET /loading/ds/data/shard-" in line for line in (tmp_path / "moto.log").open())

        before = shard_reads()
        remote = digests(dl)
        # a request per row group: its columns in one range, the footers handed to the workers (moto's log); a
        # group cut between two workers' spans is read by both
        assert shard_reads() - before < 2 * len(dl.dataset.info.parts)
        in_process = loader(uri, batch_size=32, num_workers=0, window=2, seed=3)
        before = shard_reads()
        digests(in_process)
        assert shard_reads() - before == len(dl.dataset.info.parts) == 11  # one process: exactly one each
    assert remote == digests(loader(breast_ds, batch_size=32, num_workers=2, window=2, seed=3))


def test_blocks_of_consecutive_row_groups_are_read_and_shuffled_together(tmp_path, breast):
    ds = write_dataset(tmp_path / "ds", breast.images, breast.labels, ["malignant", "normal"], 300)
    info = loader(ds, batch_size=32, num_workers=0).dataset.info
    info.parts = [(f"f{k // 10}", k % 10, 100) for k in range(25)]  # 3 files of 10, 10 and 5 groups
    info.part_bytes = [1 << 20] * 25
    assert read_blocks(info, 8).tolist() == [0] * 4 + [1] * 4 + [2] * 2 + [3] * 4 + [4] * 4 + [5] * 2 + [6] * 4 \
        + [7]  # at most half a window, never across files
    assert read_blocks(info, None).tolist() == list(range(25))  # uniform: one group at a time
    sampler = WindowShuffleSampler([100] * 25, 50, window=8, seed=1, blocks=read_blocks(info, 8))
    order = np.concatenate(sampler.spans(0))
    groups = [np.unique(np.searchsorted(sampler.starts, span, side="right") - 1) for span in sampler.spans(0)]
    assert sorted(order.tolist()) == list(range(2500))
    assert all(any(set(g) >= set(range(a, b)) for g in groups) for a, b in [(0, 4), (10, 14), (20, 24)])


@pytest.mark.parametrize("shuffle, window", [(True, 4), (True, None), (False, 4)])
def test_transfer_units_hold_the_same_batches(shuffle, window):
    rows = [1024] * 10 + [300]
    plain = WindowShuffleSampler(rows, 256, shuffle, window, seed=3, num_workers=2, drop_last=True)
    units = list(WindowShuffleSampler(rows, 256, shuffle, window, seed=3, num_workers=2, drop_last=True, group=3))
    split = [tuple(b.tolist()) for u in units for b in np.split(u.positions, np.cumsum(u.sizes)[:-1])]
    assert len(units) == -(-len(plain) // 3) and all(sum(u.sizes) == len(u) for u in units)
    assert sorted(split) == sorted(tuple(b.positions.tolist()) for b in plain)  # same batches, none lost
    if not shuffle:
        assert np.array_equal(np.concatenate([u.positions for u in units]), np.arange(len(plain) * 256))


def test_workers_ship_several_batches_yet_transforms_see_one(breast_ds, expected):
    dl = loader(breast_ds, batch_size=16, num_workers=2, window=2, seed=2, batch_transform=lambda x: x * 0 + len(x))
    assert dl.batch_sampler.group > 1  # small images: many batches per hand-over
    sizes = [len(images) for images, _ in dl]
    assert len(sizes) == len(dl) and sum(sizes) == len(expected)
    assert all(int(images.max()) == len(images) for images, _ in dl)  # each batch transformed on its own
