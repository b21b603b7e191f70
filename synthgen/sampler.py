"""Epoch orders for reading a synthgen dataset at sequential speed: row groups shuffled, rows shuffled within a
window of groups (block or local shuffling), split exactly once across DDP ranks and DataLoader workers.

:class:`WindowShuffleSampler` is a batch sampler: each item it yields is a :class:`BatchPlan` (the positions of
one batch plus the row groups its worker will need next), which :class:`synthgen.loading.SyntheticBatches`
reads in one go. How an epoch is cut:

1. the row groups are permuted (seeded by ``seed`` and the epoch: the same on every rank);
2. their rows, in that order, form one stream, which is cut into ``world_size`` contiguous slices whose sizes
   differ by at most one row: rank ``r`` reads slice ``r``;
3. the rank's slice is cut into spans of about ``window`` row groups (a multiple of the batch size) and each
   span is shuffled: a row moves at most one span from where its group put it;
4. spans are dealt to the DataLoader's workers round-robin, so each worker reads the row groups of its own
   spans (whole), and batches come out round-robin across workers, as the DataLoader expects.

``window=None`` shuffles all rows of the dataset uniformly (what the decoded cache is for: without it every
batch touches up to ``batch_size`` row groups). Only the final batch of a rank can be short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

DEFAULT_WINDOW = 16  # row groups shuffled together: 16,384 rows of synthgen's 1,024-row groups


@dataclass(frozen=True)
class BatchPlan:
    """One batch: row positions in the order the batch holds them, and the row groups to fetch ahead."""

    positions: np.ndarray  # (B,) int64
    ahead: tuple[int, ...] = ()  # row groups this batch's worker reads next: fetched in the background
    sizes: tuple[int, ...] = ()  # a transfer unit: the rows of each batch it holds, in order (empty: one batch)

    def __len__(self) -> int:
        return len(self.positions)


class WindowShuffleSampler(Sampler[BatchPlan]):
    """Batches of a dataset laid out in row groups, each row exactly once per epoch across ranks and workers.

    Args:
        part_rows: rows of each row group, in position order (``DatasetInfo.parts``' third field).
        batch_size: rows per batch.
        shuffle: permute groups and shuffle rows within windows; False reads positions in order.
        window: row groups shuffled together; None shuffles every row uniformly.
        seed: the shuffle's seed; epoch ``e`` uses ``(seed, e)`` on every rank.
        rank, world_size: this process's share, as torch's DistributedSampler takes them.
        num_workers: the DataLoader's workers (decides which spans each worker reads; any value is correct).
        drop_last: drop the final short batch, and on a rank with one row more than another, a full batch
            too if that rank would otherwise take one more step (every rank then has the same ``len()``).
        blocks: a block id per row group: consecutive groups that are read together (one request on an object
            store) and so move together when groups are permuted; default: each group alone.
        group: batches per item yielded: ``group`` consecutive batches of one worker travel as one
            :class:`BatchPlan` (with ``sizes``), so a DataLoader worker ships one tensor for them, not
            ``group``; :class:`synthgen.loading.SyntheticLoader` splits them again. ``len()`` counts batches.

    Each ``iter()`` is one epoch and the next one reshuffles (``set_epoch`` chooses the epoch explicitly).
    """

    def __init__(self, part_rows: Sequence[int], batch_size: int, shuffle: bool = True,
                 window: int | None = DEFAULT_WINDOW, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, drop_last: bool = False, group: int = 1,
                 blocks: Sequence[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 row group or None, got {window}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.part_rows = np.asarray(part_rows, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.part_rows)])  # first position of each group
        self.batch_size, self.shuffle, self.window, self.seed = batch_size, shuffle, window, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.drop_last, self.epoch = drop_last, 0
        if group < 1:
            raise ValueError(f"group must be >= 1 batch, got {group}")
        self.group = group
        self.blocks = np.arange(len(self.part_rows)) if blocks is None else np.asarray(blocks, dtype=np.int64)
        if len(self.blocks) != len(self.part_rows):
            raise ValueError(f"blocks: {len(self.blocks)} ids for {len(self.part_rows)} row groups")

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def rank_rows(self) -> int:
        """Rows this rank reads per epoch (ranks differ by at most one)."""
        n, w = self.rows, self.world_size
        return (self.rank + 1) * n // w - self.rank * n // w

    def __len__(self) -> int:
        if self.drop_last:  # the smallest rank's full batches: the same count on every rank (DDP steps agree)
            return self.rows // self.world_size // self.batch_size
        return math.ceil(self.rank_rows() / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch`` (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[BatchPlan]:
        spans = self.spans(self.epoch)
        self.epoch += 1
        yield from self._deal(spans)

    def spans(self, epoch: int) -> list[np.ndarray]:
        """This rank's rows for ``epoch``, as the spans dealt to workers (each a multiple of the batch size
        except the last)."""
        rng = np.random.default_rng([self.seed, epoch])
        n, w, r = self.rows, self.world_size, self.rank
        if self.shuffle and self.window is None:
            stream = rng.permutation(n)[r * n // w:(r + 1) * n // w]
            return _cut(stream, self.batch_size)  # uniform: any worker may read any batch
        order = _block_order(rng, self.blocks) if self.shuffle else np.arange(len(self.part_rows))
        stream = _positions(self.starts, order)[r * n // w:(r + 1) * n // w]
        if not self.shuffle:
            return _cut(stream, self.batch_size)  # in order: batch k is rows [kB, (k+1)B) of the slice
        mean_rows = max(1.0, float(self.part_rows.mean()))
        span = self.batch_size * max(1, round(self.window * mean_rows / self.batch_size))
        spans = _cut(stream, span)
        span_rng = np.random.default_rng([self.seed, epoch, r])
        for part in spans:
            span_rng.shuffle(part)  # in place: a view of stream
        return spans

    def _deal(self, spans: list[np.ndarray]) -> Iterator[BatchPlan]:
        # worker k of the DataLoader gets batches k, k + W, ...: deal spans to workers the same way
        queues, uniform = [], self.shuffle and self.window is None
        # read-ahead: about a window of the worker's next rows (none when uniform: a batch may touch every group)
        span_rows = len(spans[0]) if spans else 1
        ahead_rows = (self.window or DEFAULT_WINDOW) * self.part_rows.mean() / self.workers  # per worker
        depth = 0 if uniform else max(1, round(ahead_rows / span_rows))
        for w in range(self.workers):
            mine = spans[w::self.workers]
            groups = [set(self._groups(span)) for span in mine] if depth else []
            batches = []
            for i, span in enumerate(mine):
                ahead = tuple(sorted(set().union(*groups[i + 1:i + 1 + depth]))) if depth else ()
                batches += [BatchPlan(b, ahead) for b in _cut(span, self.batch_size)]
            queues.append(batches)
        if self.drop_last and self.rank_rows() % self.batch_size:  # the one short batch: the last span's last
            last = (len(spans) - 1) % self.workers
            queues[last] = queues[last][:-1]
        dealt = list(_round_robin(queues))
        if self.drop_last:
            dealt = dealt[:len(self)]
        if self.group == 1:
            yield from (plan for _, plan in dealt)
            return
        # the same batches, k at a time: in order (or uniform), consecutive ones; with windows, k of one worker's
        # (the DataLoader hands items to workers round-robin, so each keeps reading its own spans' row groups)
        if not self.shuffle or self.window is None:
            units = [_unit([plan for _, plan in dealt[i:i + self.group]]) for i in range(0, len(dealt), self.group)]
            yield from units
            return
        mine = [[plan for w, plan in dealt if w == k] for k in range(self.workers)]
        units = [[_unit(q[i:i + self.group]) for i in range(0, len(q), self.group)] for q in mine]
        yield from (unit for _, unit in _round_robin(units))

    def _groups(self, positions: np.ndarray) -> tuple[int, ...]:
        return tuple(np.unique(np.searchsorted(self.starts, positions, side="right") - 1).tolist())


def _round_robin(queues: list[list]) -> Iterator[tuple[int, Any]]:
    """(queue, item) pairs: the first item of every queue, then the second, ..."""
    for k in range(max((len(q) for q in queues), default=0)):
        yield from ((w, q[k]) for w, q in enumerate(queues) if k < len(q))


def _unit(plans: list[BatchPlan]) -> BatchPlan:
    """Consecutive batches of one worker as one transfer unit, fetching ahead what any of them would."""
    ahead = tuple(sorted(set().union(*(plan.ahead for plan in plans))))
    return BatchPlan(np.concatenate([plan.positions for plan in plans]), ahead, tuple(len(p) for p in plans))


def _block_order(rng: np.random.Generator, blocks: np.ndarray) -> np.ndarray:
    """The row groups, block by block in a random order of blocks (with one group per block, a permutation)."""
    edges = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1], True])  # (blocks + 1,) group boundaries
    return np.concatenate([np.arange(edges[b], edges[b + 1]) for b in rng.permutation(len(edges) - 1)])


def _positions(starts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Positions of the rows of groups ``order``, group after group: (rows,) int64."""
    sizes = starts[1:][order] - starts[:-1][order]
    offsets = np.repeat(starts[:-1][order] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(int(sizes.sum()), dtype=np.int64) + offsets


def _cut(stream: np.ndarray, size: int) -> list[np.ndarray]:
    return [stream[i:i + size] for i in range(0, len(stream), size)]
