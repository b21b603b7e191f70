"""Philox4x32-10, vectorised in numpy: the counter-based generator behind every per-image seed and noise.

Why our own few lines instead of numpy's ``Generator``: numpy makes no promise that ``standard_normal``'s
stream stays the same across releases, and building one ``Philox`` object per image costs ~13 us. Philox is
a fixed, published function (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
Random123 reference), so its output here is the same on any machine, for every numpy release, and on a GPU
that runs the same rounds. ``tests/generate/test_rng.py`` checks it against Random123's known-answer vectors.
"""

from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
ROUNDS = 10


def philox4x32(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10 on many blocks at once.

    Args:
        counter: (..., 4) integers < 2**32, the counter words c0..c3.
        key: (..., 2) integers < 2**32, broadcastable against ``counter[..., :2]``.

    Returns:
        (..., 4) uint64 array holding the four 32-bit output words of each block.
    """
    c = [np.asarray(counter[..., w], dtype=np.uint64) for w in range(4)]
    k0 = np.asarray(key[..., 0], dtype=np.uint64)
    k1 = np.asarray(key[..., 1], dtype=np.uint64)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c[0]  # 32x32 -> 64-bit product, exact in uint64
        p1 = _M1 * c[2]
        c = [(p1 >> _SHIFT32) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ c[3] ^ k1, p0 & _MASK32]
    return np.stack(c, axis=-1)


def split64(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint64 -> (low 32 bits, high 32 bits), both uint64."""
    v = np.asarray(values, dtype=np.uint64)
    return v & _MASK32, v >> _SHIFT32


def uniform_open01(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Two 32-bit words -> float64 uniform in (0, 1): the top 53 bits of (hi:lo), centred in their cell."""
    bits53 = ((hi << _SHIFT32) | lo) >> np.uint64(11)
    return (bits53.astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def normal_from_seeds(seeds: np.ndarray, dim: int) -> np.ndarray:
    """``dim`` standard-normal draws for each 64-bit seed: the noise rule of synthgen.

    For seed s, block j (j = 0, 1, ...) is Philox4x32-10 with key (lo32(s), hi32(s)) and counter (j, 0, 0, 0).
    Its words (w0, w1, w2, w3) give u1 = uniform(w1:w0), u2 = uniform(w3:w2) and, by Box-Muller,
    the draws 2j and 2j+1: sqrt(-2 ln u1) * cos(2 pi u2) and sqrt(-2 ln u1) * sin(2 pi u2).

    Args:
        seeds: (B,) uint64 per-image seeds.
        dim: draws per seed (the latent size).

    Returns:
        (B, dim) float32.
    """
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    blocks = (dim + 1) // 2
    lo, hi = split64(seeds)
    key = np.stack([lo, hi], axis=-1)[:, None, :]  # (B, 1, 2)
    counter = np.zeros((1, blocks, 4), dtype=np.uint64)
    counter[0, :, 0] = np.arange(blocks, dtype=np.uint64)
    words = philox4x32(counter, key)  # (B, blocks, 4)
    u1 = uniform_open01(words[..., 1], words[..., 0])
    u2 = uniform_open01(words[..., 3], words[..., 2])
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    pairs = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)  # (B, blocks, 2)
    return pairs.reshape(len(seeds), 2 * blocks)[:, :dim].astype(np.float32)
