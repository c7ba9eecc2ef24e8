"""Micro-batches decoded ahead of the step by DataLoader worker processes (file-backed sets: TinyImageNet, ImageNet).

The engine needs exactly ``get_batch(indices[micro], seeds[micro])`` for every micro-batch of a chunk, in order.
At the start of a chunk it hands the loader that whole list of requests; the loader yields the same batches in the
same order, each made in a worker process by the very same ``get_batch``, so the inputs are bit-identical to a
direct call (tests/test_gpu_path.py checks) while the next batches decode during the current step.

Why requests rather than sample indices: a DataLoader of single samples would collate in the main process and
bypass ``get_batch``, which augments a decoded batch at once (TinyImageNet). Why a mutable sampler: with
``persistent_workers`` the worker processes, and their copy of the dataset (1.28M paths for ImageNet), start once
per engine rather than once per chunk; each chunk only sends new requests. A chunk cut short (a stop request, a
failure) leaves batches in flight; the DataLoader drains and drops them when the next chunk resets it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from absa_cli.data.base import ImageDataset
from absa_cli.errors import UserError

Request = tuple[torch.Tensor, torch.Tensor | None]  # (sample indices, augmentation seeds or None)
_Plain = tuple[list[int], list[int] | None]  # what crosses to a worker: plain ints pickle cheaply


class _Requests(Sampler[_Plain]):
    """The current chunk's requests; replaced before every chunk."""

    def __init__(self) -> None:
        self.requests: list[_Plain] = []

    def __iter__(self) -> Iterator[_Plain]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class _Decode(Dataset):
    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, request: _Plain) -> tuple[torch.Tensor, torch.Tensor]:
        indices, seeds = request
        return self.dataset.get_batch(torch.tensor(indices, dtype=torch.int64),
                                      None if seeds is None else torch.tensor(seeds, dtype=torch.int64))


class PrefetchLoader:
    """``batches(requests)`` = ``(dataset.get_batch(*r) for r in requests)``, computed ahead by worker processes.

    ``prefetch_factor`` batches per worker are in flight at any time; ``pin_memory`` (CUDA) lets the engine's
    host-to-device copy overlap the step.
    """

    def __init__(self, dataset: ImageDataset, num_workers: int, *, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> None:
        if num_workers < 1:
            raise ValueError(f"a prefetching loader needs at least one worker, got {num_workers}")
        self._requests = _Requests()
        self._loader = DataLoader(_Decode(dataset), batch_size=None, sampler=self._requests,
                                  num_workers=num_workers, pin_memory=pin_memory, persistent_workers=True,
                                  prefetch_factor=prefetch_factor)

    def batches(self, requests: Sequence[Request]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._requests.requests = [(indices.tolist(), None if seeds is None else seeds.tolist())
                                   for indices, seeds in requests]
        return _reraised(iter(self._loader))  # a persistent loader resets its iterator and starts prefetching here


def _reraised(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches; a worker process's ``UserError`` (a corrupt image) raised again with its own one-line message.
    The DataLoader re-raises it as its type but with "Caught X in DataLoader worker process N" and the worker's
    traceback as the message; the traceback's last line is the original ``X: message``."""
    try:
        yield from batches
    except UserError as error:
        text = str(error)
        if not text.startswith("Caught "):
            raise
        last = text.strip().splitlines()[-1]
        raise type(error)(last.partition(": ")[2] or last) from None
