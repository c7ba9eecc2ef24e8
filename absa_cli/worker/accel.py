"""The GPU fast path's switches, resolved for one worker's device (worker/: torch).

``config.DeviceConfig`` (and ``data.on_device``, ``data.loader_workers``, ``probe.amp``) say what the user asked,
``auto`` included; ``Accel.resolve`` decides what this worker does on the device it got. ``auto`` is the fast
choice on CUDA (bf16 autocast, channels_last, data on the GPU or decoded ahead) and on the CPU the exact fp32 NCHW
path of before, so CPU runs, and the tests that check them bit for bit, do not change. Every switch can be forced
either way, which is how the CPU tests reach the CUDA code paths.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch
from torch import nn

from absa_cli import catalog
from absa_cli.config import RunConfig
from absa_cli.data import ImageDataset, TensorImageDataset

AUTO_LOADER_WORKERS_CUDA = 4  # per GPU: 8 GPUs × 4 decoders fit a 32–64-core node without oversubscribing it
DEVICE_DATA_SHARE = 0.25  # auto keeps in-memory sets on the GPU while they take at most this share of its memory


@dataclass(frozen=True)
class Accel:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype of training and evaluation forward passes; None: fp32
    channels_last: bool  # model and inputs in NHWC (tensor-core convolutions want it)
    compile: bool  # torch.compile the training forward
    loader_workers: int  # > 0: CPU-resident training batches are decoded ahead by this many processes

    @classmethod
    def resolve(cls, config: RunConfig, device: torch.device) -> Accel:
        cuda = device.type == "cuda"
        amp = config.device.amp
        if amp == "auto":
            amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "off"
        channels_last = config.device.channels_last == "on" or (config.device.channels_last == "auto" and cuda)
        workers = config.data.loader_workers
        if workers < 0:
            workers = AUTO_LOADER_WORKERS_CUDA if cuda and catalog.DATASETS[config.data.name].streamed else 0
        return cls(device=device, amp_dtype=torch.bfloat16 if amp == "bf16" else None,
                   channels_last=channels_last, compile=config.device.compile, loader_workers=workers)

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` on this device, or nothing (fp32) for None."""
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """In place: the memory format every later forward, backward and HVP of this model runs in."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def describe(self) -> str:
        amp = "bf16" if self.amp_dtype is not None else "fp32"
        return (f"{self.device} | forward {amp} | channels_last {self.channels_last} | compile {self.compile} | "
                f"loader workers {self.loader_workers}")


def place_datasets(setting: str, datasets: list[ImageDataset],
                   device: torch.device) -> tuple[list[ImageDataset], bool]:
    """``(datasets moved to device, True)`` when ``data.on_device`` (``setting``) says so, else unchanged and False.

    Only in-memory sets can move; ``auto`` moves them on CUDA when together they take at most
    ``DEVICE_DATA_SHARE`` of the card's memory (CIFAR's 50,000 + 10,000 images: 184 MB), so the batch gather
    and augmentation run on the GPU and nothing but indices crosses the bus. ``on`` moves them whatever the
    device: on the CPU that is the same tensors, which is how tests run this path.
    """
    if setting == "off" or not all(isinstance(d, TensorImageDataset) for d in datasets):
        return datasets, False
    if setting == "auto":
        if device.type != "cuda":
            return datasets, False
        budget = torch.cuda.get_device_properties(device).total_memory * DEVICE_DATA_SHARE
        if sum(d.num_bytes for d in datasets) > budget:
            return datasets, False
    return [d.to(device) for d in datasets], True


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The kind of device a worker trains on, as step-time profiles and epoch records name it: the GPU's model, or
    the CPU's architecture and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def to_cpu(value):
    """Tensors in (nested dicts, lists, tuples of) ``value`` detached and on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def seed_generators(device: torch.device, seed: int) -> None:
    """Seed the generators a training forward draws from (dropout): the CPU's, and the GPU's on a GPU.
    (``torch.manual_seed`` seeds every backend torch knows of: ~80 µs per call here, against ~1 µs.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.default_generators[index].manual_seed(seed)
