"""A stand-in for a GPU, so the actor's pipelining is checked on a CPU machine (tests, bench/simulated_device.py).

:meth:`SimulatedDevice.attach` keeps everything of a :class:`~synthgen.generate.actor.ShardGenerator` (its lanes,
their resources, the host stage, the writer) but gives it one device slot, as on a GPU, and swaps the model's
forward for a sleep of a chosen length: a sleep releases the GIL and uses no core, as a CUDA kernel does while
the host waits for it. The copy back is a second sleep, waited for outside the slot like the real one.
``host_in_slot=True`` runs the host stage inside the slot instead: the actor's order before its stages were
pipelined, kept only as the baseline the benchmark compares with.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from synthgen.generate.sampling import HostBatch, Lane


class SimulatedDevice:
    """One exclusive device whose forward takes ``forward_s_per_row`` seconds per row of a pass.

    Args:
        forward_s_per_row: the stand-in forward's length per row (the slot is held this long).
        copy_s_per_row: the stand-in copy back's length per row (outside the slot).
        host_in_slot: run the host stage inside the slot (the old order), for comparison.
    """

    def __init__(self, forward_s_per_row: float, copy_s_per_row: float = 0.0, host_in_slot: bool = False):
        self.forward_s_per_row, self.copy_s_per_row = forward_s_per_row, copy_s_per_row
        self.host_in_slot = host_in_slot
        self.busy_seconds = 0.0  # the stand-in forward's total time: the device's busy time
        self.passes = 0
        self.holders = 0  # lanes inside the stand-in forward now; more than 1 would break exclusivity
        self.most_holders = 0
        self.host_stages = 0
        self.host_stages_beside_slot = 0  # host stages begun while another lane held the device
        self._holder: str | None = None
        self._lock = threading.Lock()
        self._image_shape: tuple[int, int, int] = (1, 1, 1)

    def attach(self, generator) -> None:
        """Make ``generator`` (a ShardGenerator) run on this device: one slot, the stand-in forward."""
        real_host_stage = generator.host_stage
        height, width, channels = generator.config.layout.image_shape
        self._image_shape = (height, width, channels)
        generator.device_slots = threading.BoundedSemaphore(1)
        if self.host_in_slot:
            generator.host_stage = lambda seeds, labels, lane: (seeds, labels)  # deferred into the slot
            generator.device_stage = lambda inputs, lane: self.device_stage(real_host_stage(*inputs, lane), lane)
        else:
            generator.host_stage = lambda *args: self.host_stage(real_host_stage, *args)
            generator.device_stage = self.device_stage

    def host_stage(self, real_host_stage, seeds: np.ndarray, labels: np.ndarray | None, lane: Lane) -> HostBatch:
        me = threading.current_thread().name
        with self._lock:
            self.host_stages += 1
            self.host_stages_beside_slot += self._holder not in (None, me)
        return real_host_stage(seeds, labels, lane)

    def device_stage(self, batch: HostBatch, lane: Lane) -> _SimulatedCopy:
        with self._lock:
            self.holders += 1
            self.most_holders = max(self.most_holders, self.holders)
            self._holder = threading.current_thread().name
        seconds = self.forward_s_per_row * batch.count
        time.sleep(seconds)
        with self._lock:
            self.holders -= 1
            self._holder = None
            self.busy_seconds += seconds
            self.passes += 1
        return _SimulatedCopy(np.zeros((batch.count, *self._image_shape), np.uint8),  # (B, H, W, C)
                              self.copy_s_per_row * batch.count)


class _SimulatedCopy:
    """The stand-in of sampling.PendingImages: the copy back is a sleep, waited for outside the slot."""

    def __init__(self, pixels: np.ndarray, seconds: float):
        self.pixels, self.seconds = pixels, seconds

    def result(self) -> np.ndarray:
        time.sleep(self.seconds)
        return self.pixels
