"""Per-worker training and evaluation (layer 1: torch; never imports ray).

One optimizer step consumes one global batch: ``EpochOrder`` positions ``[samples_seen, samples_seen + B)``, never
fewer (an epoch's tail that does not fill a global batch is dropped, and recorded as dropped in the sample audit).
This worker takes its contiguous share (rank r of W), cuts it into ``grad_accum_steps`` micro-batches, and
back-propagates ``sum(loss) × W / B`` for each. After ``DistContext.all_reduce_mean`` every worker holds the gradient of the mean loss over the whole
global batch, so W workers × b and 1 worker × W accumulation steps × b are the same computation on the same
samples. The all-reduce precedes the optimizer step: a step that fails half-way was never applied.

BatchNorm running statistics follow the same rule, so they too are independent of the worker count: each
micro-batch's update starts from the step's starting statistics, the updated values are averaged over every
micro-batch of the global batch (in the same all-reduce as the gradients), and the step moves the statistics once.
With one worker and no accumulation that is exactly PyTorch's own update. Every worker therefore holds the same
statistics after every step, and a checkpoint taken mid-epoch is the same whoever wrote it.

A stop request (the driver got SIGINT/SIGTERM) rides in that all-reduce too: every rank learns of it after the same
step and stops there, so a graceful stop never leaves ranks one step apart.

On a GPU (``absa_cli.accel``): forward passes under bf16 autocast, model and inputs in channels_last, in-memory
datasets on the device, file-backed ones decoded ahead by worker processes, optionally a compiled forward. The
curvature probe always runs the uncompiled module (``self.model``), in fp32 unless ``probe.amp`` says otherwise:
λ_max steers the batch size. ``self.model`` is also what state dicts hold, so their keys never change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from absa_cli.accel import Accel, place_datasets
from absa_cli.adversarial import adversarial_runs, mix_adversarial, robust_accuracy
from absa_cli.config import ProbeConfig, RunConfig
from absa_cli.curvature import HessianOperator, lanczos, power_iteration
from absa_cli.data import ImageDataset, build_dataset
from absa_cli.data.loader import PrefetchLoader, Request
from absa_cli.data.order import EpochOrder, derive_seed, probe_indices
from absa_cli.dist import DistContext, LocalContext
from absa_cli.geometry import BatchGeometry, samples_in_epoch
from absa_cli.models import build_model


@dataclass(frozen=True)
class ChunkStats:
    """What a run of consecutive steps did on all workers (already reduced)."""

    steps: int
    samples: int
    loss_sum: float
    num_correct: int
    seconds: float
    params_finite: bool = True  # every weight on every worker finite after the chunk's last step


@dataclass(frozen=True)
class EvalStats:
    samples: int
    loss: float
    accuracy: float
    fgsm_accuracy: float | None = None  # robust accuracy at eval.adversarial_eps, when that is > 0


@dataclass(frozen=True)
class ProbeStats:
    eigenvalue: float
    hvp_count: int
    converged: bool
    seconds: float


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class Engine:
    """A worker's model, optimizer and data; the same object whether it runs alone or in a Ray actor."""

    def __init__(self, config: RunConfig, ctx: DistContext | None = None, device: torch.device | None = None,
                 datasets: tuple[ImageDataset, ImageDataset] | None = None):
        """``datasets``: (train, test) to use instead of building them from ``config.data``: benchmarks need sets
        the catalogue cannot name (224-px synthetic images; random CIFAR-shaped pixels with CIFAR's augmentation)."""
        self.config = config
        self.ctx = ctx or LocalContext()
        self.device = device or pick_device()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.accel = Accel.resolve(config, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.device.cudnn_benchmark
        data = config.data
        root = data.resolved_root()
        train_set, test_set = datasets or (
            build_dataset(data.name, data.train_split, root, seed=data.seed, size=data.train_size,
                          download=data.download),
            build_dataset(data.name, "test", root, seed=data.seed, size=data.test_size, download=data.download))
        (self.train_set, self.test_set), self.data_on_device = place_datasets(data.on_device, [train_set, test_set],
                                                                              self.device)
        torch.manual_seed(config.seed)  # identical initial weights on every worker
        spec = self.train_set.spec
        self.model = self.accel.prepare_model(build_model(config.model.name, spec.num_classes, spec.image_size,
                                                          width=config.model.width).to(self.device))
        self._compiled: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (source module, compiled)
        self._loader: PrefetchLoader | None = None
        self._device_order: tuple[EpochOrder, torch.Tensor, torch.Tensor] | None = None  # the order, on the device
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
            nesterov=config.optim.nesterov, weight_decay=config.optim.weight_decay)
        self._order: EpochOrder | None = None
        # Where the last *completed* step left this worker: after a peer dies mid-chunk, the driver reads it
        # from a survivor and resumes at exactly that sample.
        self.position: tuple[int, int] = (0, 0)  # (epoch, samples_seen)
        self.chunk_steps_done = 0
        self.sample_log = None  # open file: the global sample indices of every applied step (exactly-once audit)
        self._probe_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.probe_start: torch.Tensor | None = None  # the last probe's top eigenvector: the next one's first vector
        self._norms = [m for m in self.model.modules()
                       if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]
        self.stop_requested = False  # set from another thread (the actor's control lane) or a signal handler

    def set_context(self, ctx: DistContext) -> None:
        """Join a (re-formed) group: collectives go through ``ctx`` from now on; the probe shard is re-cut."""
        self.ctx = ctx
        self._probe_batches = None

    @property
    def num_train_samples(self) -> int:
        return len(self.train_set)

    def epoch_order(self, epoch: int) -> EpochOrder:
        if self._order is None or self._order.epoch != epoch:
            self._order = EpochOrder(self.config.seed, epoch, len(self.train_set))
        return self._order

    # ------------------------------------------------------------------------------------------ training

    def train_chunk(self, epoch: int, samples_seen: int, lrs: list[float], geometry: BatchGeometry,
                    adv_ratio: float = 0.0) -> ChunkStats:
        """Run ``len(lrs)`` optimizer steps from position ``samples_seen`` of ``epoch``, one LR per step.

        ``adv_ratio`` > 0 replaces the first ``num_adversarial(adv_ratio, B₀)`` samples of every block of B₀ =
        ``batch.global_batch_size`` positions of the global batch by FGSM examples at ``policy.adv_eps`` (ABSA's
        adversarial regulariser, counted as the reference counts it in each base batch).
        """
        if geometry.num_workers != self.ctx.world_size:
            raise ValueError(f"geometry is for {geometry.num_workers} workers but this group has "
                             f"{self.ctx.world_size}")
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)  # a step that failed half-way may have left gradients
        self.chunk_steps_done = 0
        self.position = (epoch, samples_seen)  # so a failure in this chunk's first step reports this epoch
        order = self.epoch_order(epoch)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, samples
        spans, position = [], samples_seen
        for _ in lrs:  # the chunk's steps are known up front, so a loader can decode ahead across steps
            spans.append(order.positions(position, geometry.global_batch_size))
            position = spans[-1].stop
        plans = [self._micro_batches(geometry) for _ in spans]
        batches = self._training_batches(order, spans, plans)
        epoch_end = samples_in_epoch(len(order), geometry.global_batch_size)
        for lr, span, plan in zip(lrs, spans, plans):
            step_totals, stop = self._step(batches, plan, geometry.global_batch_size, lr, adv_ratio)
            totals += step_totals
            self.position = (epoch, span.stop)
            self.chunk_steps_done += 1
            if self.sample_log is not None:
                self._log_samples(epoch, span.start, order.indices[span])
                if span.stop == epoch_end and epoch_end < len(order):
                    self._log_dropped(epoch, epoch_end, order.indices[epoch_end:])
            if stop:  # agreed by every rank in the step's all-reduce: all stop after this same step
                break
        # A step's loss is taken before its update, so a last step that makes the weights NaN or infinite shows in
        # no loss of this chunk: count the workers whose weights are no longer finite, in the same all-reduce.
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        totals = torch.cat([totals, (~finite).to(totals.dtype).reshape(1)])
        self.ctx.all_reduce_sum([totals])  # one sync per chunk, not per step
        loss_sum, num_correct, num_samples, num_nonfinite = totals.tolist()
        return ChunkStats(steps=self.chunk_steps_done, samples=int(num_samples), loss_sum=loss_sum,
                          num_correct=int(num_correct), seconds=time.perf_counter() - started,
                          params_finite=num_nonfinite == 0)

    def _micro_batches(self, geometry: BatchGeometry) -> list[slice]:
        """This rank's micro-batches of a global batch, as ranges of positions within it: rank r's contiguous share,
        cut into ``grad_accum_steps`` equal parts (the geometry multiplies out, so nothing is left over)."""
        share, micro = geometry.global_batch_size // geometry.num_workers, geometry.per_worker_batch_size
        first = self.ctx.rank * share
        return [slice(first + a * micro, first + (a + 1) * micro) for a in range(geometry.grad_accum_steps)]

    def _training_batches(self, order: EpochOrder, spans: list[slice],
                          plans: list[list[slice]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The chunk's micro-batches in order: from the prefetching loader when one is configured, else made
        one at a time just before their step."""
        all_indices, all_seeds = order.indices, order.aug_seeds
        if self.data_on_device:  # slices of device tensors: no blocking host-to-device copy per micro-batch
            if self._device_order is None or self._device_order[0] is not order:
                self._device_order = (order, order.indices.to(self.device), order.aug_seeds.to(self.device))
            _, all_indices, all_seeds = self._device_order
        if not self.config.data.augment:
            all_seeds = None
        requests: list[Request] = []
        for span, plan in zip(spans, plans):
            indices, seeds = all_indices[span], None if all_seeds is None else all_seeds[span]
            requests += [(indices[micro], None if seeds is None else seeds[micro]) for micro in plan]
        if self.accel.loader_workers > 0 and not self.data_on_device:
            if self._loader is None:
                self._loader = PrefetchLoader(self.train_set, self.accel.loader_workers,
                                              pin_memory=self.device.type == "cuda")
            return self._loader.batches(requests)
        return (self.train_set.get_batch(indices, seeds) for indices, seeds in requests)

    def _forward_model(self) -> torch.nn.Module:
        """The module training calls: ``self.model``, or its compiled wrapper (sharing its parameters)."""
        if not self.accel.compile:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, torch.compile(self.model))
        return self._compiled[1]

    def _step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], plan: list[slice],
              batch_size: int, lr: float, adv_ratio: float) -> tuple[torch.Tensor, bool]:
        """One optimizer step on a global batch of ``batch_size``: this rank's micro-batches (``plan``: their
        positions in the global batch), taken from ``batches``; (this rank's loss/correct/samples, stop agreed)."""
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        norms = _NormStats(self._norms)
        try:
            return self._accumulate_and_apply(batches, plan, batch_size, lr, adv_ratio, totals, norms)
        except BaseException:  # a failed step (a dead peer in the all-reduce) leaves the statistics untouched too
            norms.restore()
            raise

    def _accumulate_and_apply(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], plan: list[slice],
                              batch_size: int, lr: float, adv_ratio: float, totals: torch.Tensor,
                              norms: "_NormStats") -> tuple[torch.Tensor, bool]:
        world_size = self.ctx.world_size
        model = self._forward_model()
        for micro in plan:
            norms.before_forward()
            inputs, labels = next(batches)
            inputs = self.accel.inputs(inputs.to(self.device, non_blocking=True))
            labels = labels.to(self.device, non_blocking=True)
            with self.accel.autocast(self.accel.amp_dtype):
                runs = adversarial_runs(micro.start, micro.stop - micro.start, adv_ratio,
                                        self.config.batch.global_batch_size) if adv_ratio > 0 else []
                if runs:
                    spec = self.train_set.spec
                    inputs = mix_adversarial(self.model, inputs, labels, runs, self.config.policy.adv_eps,
                                             spec.mean, spec.std)
                logits = model(inputs)
                norms.after_forward()
                loss_sum = F.cross_entropy(logits, labels, reduction="sum")
            (loss_sum * (world_size / batch_size)).backward()
            with torch.no_grad():
                totals[0] += loss_sum.detach()
                totals[1] += (logits.argmax(dim=1) == labels).sum()
                totals[2] += len(labels)
        for param in self.model.parameters():  # a parameter the forward did not use must still join the all-reduce
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        control = torch.zeros(2, device=self.device)  # filled from scalars: torch.tensor(list) on a GPU would sync
        control[0], control[1] = float(self.stop_requested), float(norms.count)
        self.ctx.all_reduce_mean([p.grad for p in self.model.parameters() if p.grad is not None]
                                 + norms.sums + [control])
        norms.apply(control[1])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return totals, bool(control[0] > 0)

    def _log_samples(self, epoch: int, start: int, indices: torch.Tensor) -> None:
        """Record an applied step: this worker's share and the whole global batch. A peer killed after the
        all-reduce but before its own write still contributed to the step; the survivors' lines cover it."""
        mine = torch.tensor_split(indices, self.ctx.world_size)[self.ctx.rank]
        record = {"epoch": epoch, "start": start, "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                  "samples": mine.tolist(), "batch": indices.tolist()}
        self.sample_log.write(json.dumps(record) + "\n")
        self.sample_log.flush()

    def _log_dropped(self, epoch: int, start: int, indices: torch.Tensor) -> None:
        """Record the epoch's dropped tail (positions ``start`` to the end), once the step before it is applied.
        Every rank writes the same line, so it survives the loss of any of them."""
        record = {"epoch": epoch, "start": start, "rank": self.ctx.rank, "dropped": indices.tolist()}
        self.sample_log.write(json.dumps(record) + "\n")
        self.sample_log.flush()

    # ---------------------------------------------------------------------------------------- evaluation

    def evaluate(self) -> EvalStats:
        """Loss and accuracy over the whole test set, sharded over workers (each sample counted once).

        With ``eval.adversarial_eps`` > 0 also the accuracy on FGSM examples of the test set (robust accuracy).
        """
        self.model.eval()
        eps = self.config.eval.adversarial_eps
        spec = self.test_set.spec
        shard = torch.tensor_split(torch.arange(len(self.test_set)), self.ctx.world_size)[self.ctx.rank]
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, correct, samples, fgsm correct
        for batch in torch.split(shard, self.config.eval.batch_size):
            inputs, labels = self.test_set.get_batch(batch, None)
            inputs, labels = self.accel.inputs(inputs.to(self.device)), labels.to(self.device)
            with torch.no_grad(), self.accel.autocast(self.accel.amp_dtype):
                logits = self.model(inputs)
                totals[0] += F.cross_entropy(logits, labels, reduction="sum")
                totals[1] += (logits.argmax(dim=1) == labels).sum()
                totals[2] += len(batch)
            if eps > 0:  # needs input gradients: outside no_grad
                with self.accel.autocast(self.accel.amp_dtype):
                    accuracy = robust_accuracy(self.model, [(inputs, labels)], eps, spec.mean, spec.std)
                totals[3] += accuracy * len(batch)
        self.ctx.all_reduce_sum([totals])
        loss_sum, num_correct, num_samples, fgsm_correct = totals.tolist()
        count = max(num_samples, 1)
        return EvalStats(samples=int(num_samples), loss=loss_sum / count, accuracy=num_correct / count,
                         fgsm_accuracy=fgsm_correct / count if eps > 0 else None)

    # ------------------------------------------------------------------------------------------- probing

    def probe_batches(self, epoch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This worker's shard of the probe samples, unaugmented: ``probe.num_batches`` × ``probe.batch_size``
        training samples. ``probe.data=fixed``: drawn once from ``probe.seed`` (kept), so successive probes measure
        the same loss; ``fresh``: drawn anew for ``epoch`` from (``probe.seed``, epoch), as the reference does."""
        probe = self.config.probe
        fresh = probe.data == "fresh" and epoch is not None
        if fresh or self._probe_batches is None:
            batches = []
            for batch in probe_indices(len(self.train_set), probe.batch_size, probe.num_batches, probe.seed,
                                       epoch if fresh else None):
                mine = torch.tensor_split(batch, self.ctx.world_size)[self.ctx.rank]
                inputs, labels = self.train_set.get_batch(mine, None)
                batches.append((self.accel.inputs(inputs.to(self.device)), labels.to(self.device)))
            if fresh:
                return batches
            self._probe_batches = batches
        return self._probe_batches

    def probe(self, epoch: int, probe: ProbeConfig | None = None) -> ProbeStats:
        """Top Hessian eigenvalue of the mean training loss on the probe samples (averaged over workers), at the
        end of ``epoch`` (0-based: the epoch just trained).

        With ``probe.warm_start`` the solver starts from the previous probe's eigenvector (rank 0's, broadcast)
        instead of a Gaussian. ``benchmarks/probe_warm.py`` measured it on the quickstart: 16% fewer HVPs, and
        Lanczos no longer settles on the second eigenvalue (cold starts were 10% low on 2 of 9 epochs; warm starts
        within 1e-4 on all). A cold start (and the first probe) draws a new Gaussian from (``probe.seed``, epoch),
        as the reference draws a fresh random vector at every probe. The vector and the draws are part of the state
        or functions of the epoch, so a resumed or re-formed group probes exactly as the uninterrupted one would."""
        probe = probe or self.config.probe
        started = time.perf_counter()
        operator = HessianOperator(self.model, F.cross_entropy, self.probe_batches(epoch), self.ctx,
                                   bn_mode=probe.bn_mode, amp_dtype=torch.bfloat16 if probe.amp == "bf16" else None)
        start = self._agreed_probe_start(operator) if probe.warm_start else None
        seed = derive_seed(probe.seed, epoch, 0x57A27)
        if probe.method == "lanczos":
            result = lanczos(operator, k=1, max_iter=probe.max_iter, tol=probe.tol, seed=seed,
                             return_eigenvectors=probe.warm_start, start=start)
        else:
            result = power_iteration(operator, max_iter=probe.max_iter, tol=probe.tol, seed=seed, start=start)
        if probe.warm_start:
            vector = result.eigenvectors[0].detach()
            self.probe_start = vector.clone() if bool(torch.isfinite(vector).all()) else None
        operator.release()
        self.model.zero_grad(set_to_none=True)
        return ProbeStats(eigenvalue=result.eigenvalues[0], hvp_count=result.hvp_count,
                          converged=result.converged, seconds=time.perf_counter() - started)

    def _agreed_probe_start(self, operator: HessianOperator) -> torch.Tensor | None:
        """Rank 0's warm-start vector, on every rank. Ranks hold the same one in normal operation, but a peer lost
        during a probe's last all-reduce can leave some survivors with the new vector and some with the old, and
        ranks that started from different vectors would take different numbers of products (a collective each)."""
        if self.ctx.world_size == 1:
            return self.probe_start
        have = torch.zeros(1, device=self.device)
        have[0] = float(self.probe_start is not None)
        self.ctx.broadcast([have])
        if not bool(have[0] > 0):
            self.probe_start = None
            return None
        if self.probe_start is None:
            self.probe_start = operator.zeros()
        self.ctx.broadcast([self.probe_start])
        return self.probe_start

    # --------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """Model and optimizer state: world-size independent (every worker holds the same copy), on the CPU so
        that a driver without a GPU can hold it and a checkpoint loads anywhere."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.probe_start is not None:
            state["probe_start"] = self.probe_start
        return _to_cpu(state)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state.get("probe_start")  # absent in checkpoints written before warm starts, or before a probe
        self.probe_start = None if start is None else start.to(self.device)
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


class _NormStats:
    """One step's BatchNorm running-statistics rule (see the module docstring): every micro-batch updates from
    the step's starting values; ``sums`` collects the updated values for the all-reduce; ``apply`` sets the mean."""

    def __init__(self, norms: list[_BatchNorm]) -> None:
        self.norms = norms
        self.start = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        self.sums = [torch.zeros_like(t) for m in norms for t in (m.running_mean, m.running_var)]
        self.count = 0

    @torch.no_grad()
    def before_forward(self) -> None:
        if self.count:  # the first micro-batch starts from the starting values already
            self.restore()

    @torch.no_grad()
    def after_forward(self) -> None:
        for total, value in zip(self.sums, (t for m in self.norms for t in (m.running_mean, m.running_var))):
            total += value
        self.count += 1

    @torch.no_grad()
    def apply(self, mean_count: torch.Tensor) -> None:
        """``sums`` and the count were both averaged over ranks: their ratio is the mean over micro-batches."""
        if not self.norms:
            return
        self.restore()
        buffers = (t for m in self.norms for t in (m.running_mean, m.running_var))
        for buffer, total in zip(buffers, self.sums):
            buffer.copy_(total / mean_count)
        for module in self.norms:
            module.num_batches_tracked += 1

    @torch.no_grad()
    def restore(self) -> None:
        for module, (mean, var, tracked) in zip(self.norms, self.start):
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(tracked)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
