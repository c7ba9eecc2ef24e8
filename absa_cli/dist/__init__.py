"""The engine's only view of distribution (dist/: torch building blocks, layer 2).

The engine and the curvature code call these methods and nothing else, so a local run and a distributed run are
the same algorithm. ``LocalContext`` is world size 1 (single process, tests, ``--local``); ``TorchDistContext`` is
the torch.distributed implementation (one per worker of a process group).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Protocol, Sequence

import torch
import torch.distributed as dist


class DistContext(Protocol):
    rank: int
    world_size: int

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over all ranks."""

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its sum over all ranks."""

    def all_reduce_sum_autograd(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all ranks as a new tensor that autograd differentiates, to any order: the
        gradient of a sum over ranks is the sum over ranks of the gradients, itself differentiable again. Every rank
        must call it, and back-propagate through it, in the same order."""

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite each tensor, in place, with rank ``src``'s copy."""

    def barrier(self) -> None:
        """Wait until every rank arrives."""

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of ``items`` along the first dimension (the shares of all ranks, in rank
        order, are ``items``; they differ in size by at most one)."""


class _Sharding:
    rank: int
    world_size: int

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        return torch.tensor_split(items, self.world_size)[self.rank]


class LocalContext(_Sharding):
    """World size 1: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        pass

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        pass

    def all_reduce_sum_autograd(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        pass

    def barrier(self) -> None:
        pass


class TorchDistContext(_Sharding):
    """A ``DistContext`` over torch.distributed: the default process group (already initialised) or ``group``.

    Collectives are coalesced: the tensors of one call are packed into one flat buffer per (dtype, device), so a
    model's hundred-odd gradient or buffer tensors cost one all-reduce, not a hundred (each collective has a fixed
    latency that dominates for small tensors). Means are a SUM followed by a division, which every backend supports
    (``ReduceOp.AVG`` is NCCL-only).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; call init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        for tensor in tensors:
            if not (tensor.is_floating_point() or tensor.is_complex()):
                raise TypeError(f"all_reduce_mean needs floating-point tensors, got {tensor.dtype}")
        self._coalesced(tensors, lambda flat: self._all_reduce(flat).div_(self.world_size))

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        self._coalesced(tensors, self._all_reduce)

    def all_reduce_sum_autograd(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return _AllReduceSum.apply(tensor, self.group)

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        global_src = src if self.group is None else dist.get_global_rank(self.group, src)

        def send(flat: torch.Tensor) -> torch.Tensor:
            dist.broadcast(flat, src=global_src, group=self.group)
            return flat

        self._coalesced(tensors, send)

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def _all_reduce(self, flat: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        return flat

    def _coalesced(self, tensors: Sequence[torch.Tensor],
                   collective: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``collective`` (in place on a flat tensor) to ``tensors`` with one call per (dtype, device)."""
        if self.world_size == 1 or not tensors:
            return
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for tensor in tensors:
            buckets.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        with torch.no_grad():  # parameters and buffers may be passed; the collectives are not differentiable
            for bucket in buckets.values():
                if len(bucket) == 1 and bucket[0].is_contiguous():
                    collective(bucket[0].view(-1))  # in place, no copy
                    continue
                flat = collective(torch.cat([t.reshape(-1) for t in bucket]))
                for tensor, piece in zip(bucket, torch.split(flat, [t.numel() for t in bucket])):
                    tensor.copy_(piece.view_as(tensor))


class _AllReduceSum(torch.autograd.Function):
    """A SUM all-reduce in the autograd graph. Its backward is the same all-reduce applied as this Function again, so
    a graph built with ``create_graph=True`` can be differentiated once more: the curvature probe's Hessian-vector
    products back-propagate twice through BatchNorm statistics summed over ranks. (``torch.distributed.nn``'s
    equivalent is deprecated in PyTorch 2.14.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def init_process_group(backend: str, rank: int, world_size: int, init_method: str,
                       timeout_s: float = 300.0) -> TorchDistContext:
    """Join the default process group and return its context; a dead peer fails a collective after ``timeout_s``."""
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    return TorchDistContext()
