"""Exactly-once sample order (data/: torch).

Each epoch has one seeded global permutation of the training set and one augmentation seed per position. Step k
of an epoch consumes positions ``[samples_seen, samples_seen + B)``, split over workers and micro-batches by the
engine. Both tensors are functions of (seed, epoch) only, so the inputs of a step do not depend on how many workers
run it, on how the epoch was chunked, or on whether the run was resumed in between.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SplitMix64 finaliser over a running hash)."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state ^= state >> 31
        state = state * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


class EpochOrder:
    """The permutation and per-position augmentation seeds of one epoch."""

    def __init__(self, seed: int, epoch: int, num_samples: int) -> None:
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x5A17))
        self.epoch = epoch
        self.indices = torch.randperm(num_samples, generator=generator)
        self.aug_seeds = torch.randint(0, 2**62, (num_samples,), generator=generator, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def positions(self, start: int, size: int) -> slice:
        """Positions of the global batch of ``size`` that starts at ``start``; a step never runs on fewer samples
        (the epoch's tail that does not fill a global batch is dropped: ``geometry.samples_in_epoch``)."""
        if start + size > len(self.indices):
            raise ValueError(f"epoch {self.epoch} has {len(self.indices) - start} samples left at position {start}, "
                             f"fewer than a global batch of {size}: an epoch's tail is dropped, never a short step")
        return slice(start, start + size)


def probe_indices(num_samples: int, batch_size: int, num_batches: int, seed: int,
                  epoch: int | None = None, draw: int = 0) -> list[torch.Tensor]:
    """Curvature-probe samples: ``num_batches`` batches of training-set indices drawn from ``seed``.

    ``epoch=None`` gives the fixed set: successive probes (and ``absa hessian`` with the same seed) measure the loss
    on the very same samples. An epoch number gives that epoch's fresh draw (``probe.data=fresh``, as the reference
    takes a new random batch at every probe), still a function of (seed, epoch) only, so a resumed run draws what
    the uninterrupted one would have. ``draw`` k > 0 (with an epoch) is that epoch's k-th further draw, the samples
    of a recheck (``policy.recheck``). Each worker then takes its contiguous shard of every batch."""
    parts = (seed, 0xB10B) if epoch is None else (seed, 0xB10B, epoch) + ((draw,) if draw else ())
    generator = torch.Generator().manual_seed(derive_seed(*parts))
    count = min(batch_size * num_batches, num_samples)
    return list(torch.split(torch.randperm(num_samples, generator=generator)[:count], batch_size))
