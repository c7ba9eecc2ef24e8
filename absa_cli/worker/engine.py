"""Per-worker training and evaluation (worker/: torch; never imports ray).

One optimizer step consumes one global batch: ``EpochOrder`` positions ``[samples_seen, samples_seen + B)``, never
fewer (an epoch's tail that does not fill a global batch is dropped, and recorded as dropped in the sample audit).
This worker takes its contiguous share (rank r of W), cuts it into ``grad_accum_steps`` micro-batches, and
back-propagates ``sum(loss) × W / B`` for each. After ``DistContext.all_reduce_mean`` every worker holds the
gradient of the mean loss over the whole global batch, so W workers × b and 1 worker × W accumulation steps × b
are the same computation on the same samples. The all-reduce precedes the optimizer step: a step that fails
half-way was never applied.

BatchNorm running statistics follow the same rule (``worker/norms.py``); dropout draws from the generator seeded
per micro-batch from (seed, epoch, position), whichever worker runs it. So with the same micro-batches, 2 workers × 1
and 1 worker × 2 accumulation steps are bitwise equal (docs/runs.md, "Exactness"). A stop request (SIGINT/SIGTERM)
rides in that all-reduce, so every rank stops after the same step; so do each step's loss and correct counts, which
survivors report for the steps a chunk applied before a peer died. ``worker/timing.py`` times each step's phases.

On a GPU (``worker/accel.py``): bf16 autocast, channels_last, in-memory datasets on the device, file-backed ones
decoded ahead, optionally a compiled forward; the probe and state dicts use the uncompiled module (``self.model``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absa_cli.config import ProbeConfig, RunConfig
from absa_cli.data import ImageDataset, open_split
from absa_cli.data.loader import PrefetchLoader, Request
from absa_cli.data.order import EpochOrder, derive_seed
from absa_cli.decide.geometry import BatchGeometry, samples_in_epoch
from absa_cli.dist import DistContext, LocalContext
from absa_cli.models import build_model
from absa_cli.worker.accel import Accel, pick_device, place_datasets, seed_generators, to_cpu
from absa_cli.worker.adversarial import adversarial_runs, mix_adversarial
from absa_cli.worker.audit import SampleAudit
from absa_cli.worker.evaluation import EvalStats, evaluate
from absa_cli.worker.norms import NormBuffers, NormStep, tracked_norms
from absa_cli.worker.probe import CurvatureProbe, ProbeStats
from absa_cli.worker.timing import StepTimer

_DROPOUT_STREAM = 0xD0D0  # derive_seed's tag for the per-micro-batch generator seed (EpochOrder's is 0x5A17)


@dataclass(frozen=True)
class ChunkStats:
    """What a run of consecutive steps did on all workers (already reduced)."""

    steps: int
    samples: int
    loss_sum: float
    num_correct: int
    seconds: float
    params_finite: bool = True  # every weight on every worker finite after the chunk's last step
    phase_s: tuple[float, ...] = ()  # seconds per phase (decide/throughput.py PHASES), the mean over workers


class Engine:
    """A worker's model, optimizer and data; the same object whether it runs alone or in a Ray actor."""

    def __init__(self, config: RunConfig, ctx: DistContext | None = None, device: torch.device | None = None,
                 datasets: tuple[ImageDataset, ImageDataset] | None = None):
        """``datasets``: (train, test) instead of ``config.data``'s, for benchmarks' sets the catalogue cannot name."""
        self.config = config
        self.ctx = ctx or LocalContext()
        self.device = device or pick_device()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.accel = Accel.resolve(config, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.device.cudnn_benchmark
        data = config.data
        train_set, test_set = datasets or (open_split(data, data.train_split), open_split(data, "test"))
        (self.train_set, self.test_set), self.data_on_device = place_datasets(data.on_device, [train_set, test_set],
                                                                              self.device)
        torch.manual_seed(config.seed)  # identical initial weights on every worker
        spec = self.train_set.spec
        self.model = self.accel.prepare_model(build_model(config.model.name, spec.num_classes, spec.image_size,
                                                          width=config.model.width).to(self.device))
        self._compiled: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (source module, compiled)
        self._loader: PrefetchLoader | None = None
        self._device_order: tuple[EpochOrder, torch.Tensor, torch.Tensor] | None = None  # the order, on the device
        self.optimizer = torch.optim.SGD(self._params, lr=config.optim.lr, momentum=config.optim.momentum,
                                         nesterov=config.optim.nesterov, weight_decay=config.optim.weight_decay)
        self._order: EpochOrder | None = None
        # Where the last *completed* step left this worker: after a peer dies mid-chunk, the driver resumes there.
        self.position: tuple[int, int] = (0, 0)  # (epoch, samples_seen)
        self.chunk_steps_done = 0
        self.chunk_sums: tuple[float, int] = (0.0, 0)  # (loss sum, correct) of those steps, over all ranks
        self.audit: SampleAudit | None = None  # every applied step's samples (logging.sample_log_dir)
        self.curvature = CurvatureProbe(config.probe, self.train_set, self.accel, self.device)
        self.stop_requested = False  # set from another thread (the actor's control lane) or a signal handler

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        """What every step walks is derived here, once per model (not per step): its parameters, its BatchNorms."""
        self._model, self._params, self._norms = model, list(model.parameters()), NormBuffers(tracked_norms(model))

    def set_context(self, ctx: DistContext) -> None:
        """Join a (re-formed) group: collectives go through ``ctx`` from now on (the probe re-cuts its shard)."""
        self.ctx = ctx

    @property
    def num_train_samples(self) -> int:
        return len(self.train_set)

    @property
    def num_parameters(self) -> int:  # an update all-reduces 4 bytes of gradient per parameter
        return sum(p.numel() for p in self._params)

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
            raise ValueError(f"geometry is for {geometry.num_workers} workers but this group has {self.ctx.world_size}")
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)  # a step that failed half-way may have left gradients
        self.chunk_steps_done, self.chunk_sums = 0, (0.0, 0)
        self.position = (epoch, samples_seen)  # so a failure in this chunk's first step reports this epoch
        order = self.epoch_order(epoch)
        spans, position = [], samples_seen
        for _ in lrs:  # the chunk's steps are known up front, so a loader can decode ahead across steps
            spans.append(order.positions(position, geometry.global_batch_size))
            position = spans[-1].stop
        plans = [geometry.micro_batches(self.ctx.rank) for _ in spans]
        batches = self._training_batches(order, spans, plans)
        epoch_end = samples_in_epoch(len(order), geometry.global_batch_size)
        timer = StepTimer(self.device)
        for lr, span, plan in zip(lrs, spans, plans):
            seeds = [derive_seed(self.config.seed, epoch, span.start + micro.start, _DROPOUT_STREAM)
                     for micro in plan]
            (loss_sum, num_correct), stop = self._step(batches, plan, seeds, geometry.global_batch_size, lr,
                                                       adv_ratio, timer)
            self.position = (epoch, span.stop)
            self.chunk_steps_done += 1
            self.chunk_sums = (self.chunk_sums[0] + loss_sum, self.chunk_sums[1] + num_correct)
            if self.audit is not None:
                self.audit.applied(epoch, span.start, self.ctx, order.indices[span])
                if span.stop == epoch_end and epoch_end < len(order):
                    self.audit.dropped(epoch, epoch_end, self.ctx, order.indices[epoch_end:])
            if stop:  # agreed by every rank in the step's all-reduce: all stop after this same step
                break
        # A last step that makes the weights NaN shows in no loss of the chunk (taken before the update): count
        # the workers whose weights are no longer finite, in the same all-reduce.
        with torch.no_grad():  # each tensor's largest |weight|, in one multi-tensor kernel: finite iff all are
            peaks = torch._foreach_norm([p for p in self._params if p.numel()], float("inf"))
            finite = torch.stack(peaks).isfinite().all()
        phases = torch.tensor(timer.totals(), dtype=torch.float64, device=self.device) / self.ctx.world_size
        totals = torch.cat([(~finite).to(phases.dtype).reshape(1), phases])
        self.ctx.all_reduce_sum([totals])  # one sync per chunk, not per step; the phases become means over ranks
        num_nonfinite, *phase_s = totals.tolist()
        loss_sum, num_correct = self.chunk_sums
        return ChunkStats(steps=self.chunk_steps_done, samples=self.position[1] - samples_seen, loss_sum=loss_sum,
                          num_correct=num_correct, seconds=time.perf_counter() - started,
                          params_finite=num_nonfinite == 0, phase_s=tuple(phase_s))

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

    def _step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], plan: list[slice], seeds: list[int],
              batch_size: int, lr: float, adv_ratio: float, timer: StepTimer) -> tuple[tuple[float, int], bool]:
        """One optimizer step on a global batch of ``batch_size`` (this rank's micro-batches: ``plan``, from
        ``batches``, each forward with the generator seeded from ``seeds``); ((loss sum, correct) over the whole
        global batch, stop agreed)."""
        # The stop flag, this rank's loss sum and correct count: float32 like the gradients of absa's models, so one
        control = torch.zeros(3, device=self.device)  # all-reduce carries both (counts exact up to 2^24 per step)
        norms = NormStep(self._norms, micro_batches=len(plan))
        try:
            return self._accumulate_and_apply(batches, plan, seeds, batch_size, lr, adv_ratio, control, norms, timer)
        except BaseException:  # a failed step (a dead peer in the all-reduce) leaves the statistics untouched too
            norms.restore()
            raise

    def _accumulate_and_apply(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], plan: list[slice],
                              seeds: list[int], batch_size: int, lr: float, adv_ratio: float, control: torch.Tensor,
                              norms: NormStep, timer: StepTimer) -> tuple[tuple[float, int], bool]:
        world_size = self.ctx.world_size
        model = self._forward_model()
        timer.start()
        for micro, seed in zip(plan, seeds):
            norms.before_forward()
            inputs, labels = next(batches)
            inputs = self.accel.inputs(inputs.to(self.device, non_blocking=True))
            labels = labels.to(self.device, non_blocking=True)
            timer.lap("data")
            with self.accel.autocast(self.accel.amp_dtype):
                runs = adversarial_runs(micro.start, micro.stop - micro.start, adv_ratio,
                                        self.config.batch.global_batch_size) if adv_ratio > 0 else []
                if runs:
                    spec = self.train_set.spec
                    inputs = mix_adversarial(self.model, inputs, labels, runs, self.config.policy.adv_eps,
                                             spec.mean, spec.std)
                seed_generators(self.device, seed)  # this micro-batch's dropout masks (FGSM above: eval mode, none)
                logits = model(inputs)
                norms.after_forward()
                loss_sum = F.cross_entropy(logits, labels, reduction="sum")
            (loss_sum * (world_size / batch_size)).backward()
            with torch.no_grad():
                control[1] += loss_sum.detach()
                control[2] += (logits.argmax(dim=1) == labels).sum()
            timer.lap("compute")
        for param in self._params:  # a parameter the forward did not use must still join the all-reduce
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        control[:1].fill_(float(self.stop_requested))  # `control[0] = x` would wait for the GPU (a blocking copy)
        self.ctx.all_reduce_mean([p.grad for p in self._params if p.grad is not None]
                                 + norms.sums + [control])
        timer.lap("allreduce")
        norms.apply()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timer.lap("optimizer")
        stop, loss_sum, num_correct = control.tolist()  # the step's one sync, after the update was queued
        return (loss_sum * world_size, round(num_correct * world_size)), stop > 0

    def evaluate(self) -> EvalStats:
        """Loss and accuracy over the whole test set, sharded over workers: ``worker/evaluation.py``."""
        return evaluate(self.model, self.test_set, self.ctx, self.accel, self.device, self.config.eval)

    def probe(self, epoch: int, *, probe: ProbeConfig | None = None, draw: int = 0) -> ProbeStats:
        """λ_max at the end of ``epoch`` (0-based), or its ``draw``-th recheck: ``worker/probe.py``."""
        return self.curvature.measure(self.model, self.ctx, epoch, probe, draw)

    def probe_batches(self, epoch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.curvature.batches(self.ctx, epoch)

    @property
    def probe_start(self) -> torch.Tensor | None:
        """The last probe's top eigenvector: the next warm-started probe's first vector."""
        return self.curvature.start

    @probe_start.setter
    def probe_start(self, vector: torch.Tensor | None) -> None:
        self.curvature.start = vector

    def state_dict(self) -> dict:
        """Model and optimizer state: world-size independent (every worker holds the same copy), on the CPU so
        that a driver without a GPU can hold it and a checkpoint loads anywhere."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return to_cpu({**state, **self.curvature.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.curvature.load_state_dict(state)
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
