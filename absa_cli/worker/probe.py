"""The curvature probe: λ_max of the training loss at an epoch boundary (one worker's part of it).

Each worker holds its shard of the probe samples (``probe.batch_size`` × ``probe.num_batches`` unaugmented training
samples); every Hessian-vector product is averaged over the workers through the ``DistContext``, so the group
computes the eigenvalue of the mean loss over all the probe samples, whatever the number of workers.

- ``probe.data=fixed``: the samples are drawn once from ``probe.seed`` and kept, so successive probes measure the
  same loss; ``fresh``: drawn anew for each epoch from (``probe.seed``, epoch), as the reference draws a new batch.
- ``probe.warm_start``: the solver starts from the previous probe's top eigenvector (rank 0's, broadcast).
  ``benchmarks/probe_warm.py`` measured it on the quickstart: 16% fewer HVPs, and Lanczos no longer settles on the
  second eigenvalue. A cold start (and the first probe) draws a new Gaussian from (``probe.seed``, epoch), as the
  reference draws a new random vector at every probe.

The vector is part of the worker's state and the draws are functions of the epoch, so a resumed or re-formed group
probes exactly as the uninterrupted one would. The probe runs the uncompiled model, in fp32 unless ``probe.amp``
says otherwise: λ_max steers the batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absa_cli.config import ProbeConfig
from absa_cli.curvature import HessianOperator, lanczos, power_iteration
from absa_cli.data import ImageDataset
from absa_cli.data.order import derive_seed, probe_indices
from absa_cli.dist import DistContext
from absa_cli.worker.accel import Accel

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ProbeStats:
    eigenvalue: float
    hvp_count: int
    converged: bool
    seconds: float


class CurvatureProbe:
    def __init__(self, config: ProbeConfig, train_set: ImageDataset, accel: Accel, device: torch.device) -> None:
        self.config = config
        self.train_set = train_set
        self.accel = accel
        self.device = device
        self.start: torch.Tensor | None = None  # the last probe's top eigenvector: the next one's first vector
        self._fixed: tuple[tuple[int, int], Batches] | None = None  # ((rank, world size), the fixed set's shard)

    def batches(self, ctx: DistContext, epoch: int | None = None, draw: int = 0) -> Batches:
        """This rank's shard of the probe samples for ``epoch`` (the fixed set whatever the epoch, unless
        ``probe.data=fresh``; a recheck's ``draw`` > 0 is always new samples), unaugmented, on the device."""
        probe = self.config
        fresh = (probe.data == "fresh" or draw > 0) and epoch is not None
        if not fresh and self._fixed is not None and self._fixed[0] == (ctx.rank, ctx.world_size):
            return self._fixed[1]
        batches = []
        for batch in probe_indices(len(self.train_set), probe.batch_size, probe.num_batches, probe.seed,
                                   epoch if fresh else None, draw):
            inputs, labels = self.train_set.get_batch(ctx.shard(batch), None)
            batches.append((self.accel.inputs(inputs.to(self.device)), labels.to(self.device)))
        if not fresh:
            self._fixed = ((ctx.rank, ctx.world_size), batches)
        return batches

    def measure(self, model: torch.nn.Module, ctx: DistContext, epoch: int,
                probe: ProbeConfig | None = None, draw: int = 0) -> ProbeStats:
        """Top Hessian eigenvalue of the mean training loss on the probe samples, at the end of ``epoch`` (0-based:
        the epoch just trained); ``probe`` overrides the run's probe settings (tests, benchmarks). ``draw`` k > 0
        is the epoch's k-th recheck (``policy.recheck``): new samples and a new random start, drawn from
        (``probe.seed``, epoch, k), whatever ``probe.data`` and ``probe.warm_start`` say; it leaves the warm start
        as the epoch's probe set it, so a run with rechecks probes as one without them would."""
        probe = probe or self.config
        started = time.perf_counter()
        operator = HessianOperator(model, F.cross_entropy, self.batches(ctx, epoch, draw), ctx, bn_mode=probe.bn_mode,
                                   amp_dtype=torch.bfloat16 if probe.amp == "bf16" else None)
        warm = probe.warm_start and draw == 0
        start = self._agreed_start(operator, ctx) if warm else None
        seed = derive_seed(probe.seed, epoch, 0x57A27, *((draw,) if draw else ()))
        if probe.method == "lanczos":
            result = lanczos(operator, k=1, max_iter=probe.max_iter, tol=probe.tol, seed=seed,
                             return_eigenvectors=warm, start=start)
        else:
            result = power_iteration(operator, max_iter=probe.max_iter, tol=probe.tol, seed=seed, start=start)
        if warm:
            vector = result.eigenvectors[0].detach()
            self.start = vector.clone() if bool(torch.isfinite(vector).all()) else None
        operator.release()
        model.zero_grad(set_to_none=True)
        return ProbeStats(eigenvalue=result.eigenvalues[0], hvp_count=result.hvp_count,
                          converged=result.converged, seconds=time.perf_counter() - started)

    def _agreed_start(self, operator: HessianOperator, ctx: DistContext) -> torch.Tensor | None:
        """Rank 0's warm-start vector, on every rank. Ranks hold the same one in normal operation, but a peer lost
        during a probe's last all-reduce can leave some survivors with the new vector and some with the old, and
        ranks that started from different vectors would take different numbers of products (a collective each)."""
        if ctx.world_size == 1:
            return self.start
        have = torch.zeros(1, device=self.device)
        have[0] = float(self.start is not None)
        ctx.broadcast([have])
        if not bool(have[0] > 0):
            self.start = None
            return None
        if self.start is None:
            self.start = operator.zeros()
        ctx.broadcast([self.start])
        return self.start

    def state_dict(self) -> dict:
        return {} if self.start is None else {"probe_start": self.start}

    def load_state_dict(self, state: dict) -> None:
        start = state.get("probe_start")  # absent before the first warm-started probe
        self.start = None if start is None else start.to(self.device)
