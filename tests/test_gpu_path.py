"""The GPU fast path (absa_cli.worker.accel, the device-resident dataset, the prefetching loader), checked on the CPU.

What is checked against what:
- the switches parse (YAML's on/off included) and a bad value is one line naming key, value and fix;
- ``auto`` resolves to the exact path of before on the CPU: fp32, NCHW, data on the host, no loader workers;
- forced bf16 autocast trains on the CPU, the forward really runs in bf16, and the probe stays fp32 unless
  ``probe.amp=bf16``;
- channels_last training equals NCHW training within fp32 tolerance; state dict keys do not change;
- a compiled forward (dynamo with the eager backend: no C++ build in a test) gives the same training and the
  uncompiled model's state dict keys;
- ``data.on_device=on`` (the device-resident code path, here with CPU tensors) gives bit-identical training;
- the prefetching loader yields exactly ``get_batch(indices, seeds)`` for every request, in order, across
  chunks, including one cut short; an engine using it trains bit-identically.
Tests marked ``gpu`` run the same comparisons against CUDA and are skipped without it.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from absa_cli import config as config_mod
from absa_cli.worker.accel import Accel
from absa_cli.config import ConfigError
from absa_cli.data import build_dataset
from absa_cli.data.loader import PrefetchLoader
from absa_cli.worker.engine import Engine
from absa_cli.decide.geometry import BatchGeometry

from conftest import TINY, load_benchmark
from test_data import write_imagenet, write_tinyimagenet

GEOMETRY = BatchGeometry(64, 1, 32, 2)
CPU = torch.device("cpu")


def _config(*extra: str) -> config_mod.RunConfig:
    return config_mod.load("quickstart", [*TINY, "policy.name=fixed", *extra])


def _train(config: config_mod.RunConfig, steps: int = 2, device: torch.device = CPU) -> Engine:
    engine = Engine(config, device=device)
    engine.train_chunk(0, 0, [0.05] * steps, GEOMETRY)
    return engine


def _state(engine: Engine) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in engine.model.state_dict().items()}


def _assert_same(a: Engine, b: Engine, atol: float = 0.0) -> None:
    first, second = _state(a), _state(b)
    assert first.keys() == second.keys()
    for name in first:
        if atol == 0:
            assert torch.equal(first[name], second[name]), name
        else:
            assert torch.allclose(first[name].float(), second[name].float(), atol=atol, rtol=0), name


class _DtypeRecorder:
    """The dtypes of the first conv's outputs, recorded while armed."""

    def __init__(self, model: nn.Module) -> None:
        self.dtypes: list[torch.dtype] = []
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda module, inputs, output: self.dtypes.append(output.dtype))


# --- config --------------------------------------------------------------------------------------------------------


def test_switches_parse_with_yaml_on_off_and_round_trip():
    config = _config("data.on_device=on", "device.channels_last=off", "device.amp=off", "probe.amp=bf16",
                     "data.loader_workers=3", "device.compile=true", "device.cudnn_benchmark=false")
    assert (config.data.on_device, config.device.channels_last, config.device.amp) == ("on", "off", "off")
    assert (config.probe.amp, config.data.loader_workers, config.device.compile) == ("bf16", 3, True)
    again = config_mod.from_yaml(config_mod.to_yaml(config))
    assert again.data.on_device == "on" and again.device.channels_last == "off" and again.device == config.device
    defaults = _config()
    assert (defaults.device.amp, defaults.device.channels_last, defaults.data.on_device) == ("auto",) * 3
    assert (defaults.probe.amp, defaults.data.loader_workers, defaults.device.compile) == ("off", -1, False)


@pytest.mark.parametrize("override, fragment", [
    ("device.amp=fp16", "device.amp='fp16'; choose one of auto, bf16, off"),
    ("device.channels_last=maybe", "device.channels_last='maybe'; choose one of auto, on, off"),
    ("data.on_device=gpu", "data.on_device='gpu'; choose one of auto, on, off"),
    ("probe.amp=auto", "probe.amp='auto'; choose one of off, bf16"),
    ("data.loader_workers=-2", "data.loader_workers must be >= 0, or -1 for auto, got -2"),
])
def test_bad_switches_are_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as caught:
        _config(override)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_file_backed_sets_cannot_be_forced_onto_the_device():
    with pytest.raises(ConfigError, match="imagenet is decoded from files batch by batch.*data.on_device=auto"):
        config_mod.load("resnet18-imagenet", ["data.on_device=on"])


def test_auto_is_the_exact_path_of_before_on_the_cpu():
    accel = Accel.resolve(_config(), CPU)
    assert (accel.amp_dtype, accel.channels_last, accel.compile, accel.loader_workers) == (None, False, False, 0)
    assert Accel.resolve(config_mod.load("resnet18-imagenet"), CPU).loader_workers == 0
    engine = Engine(_config(), device=CPU)
    assert not engine.data_on_device and engine.train_set.images.device == CPU


# --- precision and memory format -------------------------------------------------------------------------------------


def test_forced_bf16_trains_on_the_cpu_and_the_probe_stays_fp32(one_thread):
    engine = Engine(_config("device.amp=bf16", "probe.batch_size=16", "probe.max_iter=2"), device=CPU)
    recorder = _DtypeRecorder(engine.model)
    before = _state(engine)
    stats = engine.train_chunk(0, 0, [0.05] * 2, GEOMETRY)
    assert set(recorder.dtypes) == {torch.bfloat16} and torch.isfinite(torch.tensor(stats.loss_sum))
    assert any(not torch.equal(before[k], v) for k, v in _state(engine).items())
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # autocast, not a bf16 model
    recorder.dtypes.clear()
    probe = engine.probe(0)
    assert set(recorder.dtypes) == {torch.float32} and probe.eigenvalue > 0
    recorder.dtypes.clear()
    engine.probe(0, probe=config_mod.ProbeConfig(batch_size=16, max_iter=2, amp="bf16"))
    assert set(recorder.dtypes) == {torch.bfloat16}
    assert 0 <= engine.evaluate().accuracy <= 1


def test_channels_last_equals_the_default_layout(one_thread):
    """Tolerance: oneDNN's NHWC kernels sum in another order, and the first conv's weight gradient cancels heavily
    (measured on one batch: NCHW fp32 is 1e-3, NHWC 1e-2 off an fp64 reference, relative to the largest entry)."""
    plain, nhwc = _train(_config()), _train(_config("device.channels_last=on"))
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    _assert_same(plain, nhwc, atol=2e-4)  # weights are O(0.1); two steps at LR 0.05 moved them by O(1e-2)
    assert abs(plain.evaluate().loss - nhwc.evaluate().loss) < 1e-3
    nhwc.model.load_state_dict(plain.model.state_dict())  # the same weights: HVPs through NHWC tensors alone
    assert next(p for p in nhwc.model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    probe = config_mod.ProbeConfig(batch_size=16, max_iter=3)
    assert plain.probe(0, probe=probe).eigenvalue == pytest.approx(nhwc.probe(0, probe=probe).eigenvalue, rel=1e-5)


def test_compiled_forward_trains_alike_and_keeps_state_dict_keys(one_thread, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    plain, compiled = _train(_config()), _train(_config("device.compile=true"))
    assert compiled._compiled is not None and compiled._compiled[0] is compiled.model
    assert not any(key.startswith("_orig_mod") for key in compiled.state_dict()["model"])
    _assert_same(plain, compiled, atol=1e-6)


# --- where the data lives --------------------------------------------------------------------------------------------


def test_device_resident_path_is_bit_identical(one_thread):
    resident = _train(_config("data.on_device=on"))
    assert resident.data_on_device
    _assert_same(_train(_config()), resident)


def _requests(count: int, batch: int, num_samples: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for k in range(count):
        indices = torch.randint(0, num_samples, (batch,), generator=generator)
        seeds = torch.randint(0, 2**62, (batch,), generator=generator) if k != 1 else None  # one unaugmented
        requests.append((indices, seeds))
    return requests


@pytest.mark.parametrize("name, writer", [("tinyimagenet", write_tinyimagenet), ("imagenet", write_imagenet)])
def test_loader_yields_exactly_get_batch_in_order(tmp_path, name, writer):
    writer(tmp_path)
    dataset = build_dataset(name, "train", tmp_path)
    loader = PrefetchLoader(dataset, num_workers=2)
    for chunk in range(3):
        requests = _requests(5, 3, len(dataset), seed=chunk)
        batches = loader.batches(requests)
        if chunk == 1:
            next(batches)  # a chunk cut short: the rest is in flight when the next chunk starts
            continue
        count = 0
        for (inputs, labels), (indices, seeds) in zip(batches, requests, strict=True):
            expected_inputs, expected_labels = dataset.get_batch(indices, seeds)
            assert torch.equal(inputs, expected_inputs) and torch.equal(labels, expected_labels)
            count += 1
        assert count == len(requests)


def test_engine_with_loader_workers_is_bit_identical(one_thread):
    loaded = _train(_config("data.loader_workers=1"), steps=3)
    assert loaded._loader is not None
    _assert_same(_train(_config(), steps=3), loaded)


# --- on a CUDA device (skipped without one) ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_resident_batches_equal_the_cpu_batches():
    """The augmentation (integer hashing and a gather) is bit-identical; the normalisation's multiply-add may be
    fused on the GPU, so the float images may differ in the last bit."""
    dataset = build_dataset("shapes", "train", "", size=512)
    resident = dataset.to("cuda")
    indices = torch.randperm(512)[:200]
    seeds = torch.randint(0, 2**62, (200,))
    cropped = resident.augment(resident.images[indices.cuda()], seeds.cuda())
    assert cropped.is_cuda and torch.equal(cropped.cpu(), dataset.augment(dataset.images[indices], seeds))
    for aug in (seeds.cuda(), None):
        inputs, labels = resident.get_batch(indices.cuda(), aug)
        expected_inputs, expected_labels = dataset.get_batch(indices, None if aug is None else seeds)
        assert inputs.is_cuda and torch.equal(labels.cpu(), expected_labels)
        assert torch.allclose(inputs.cpu(), expected_inputs, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_gpu_defaults_train_in_bf16_with_data_on_device_and_an_fp32_probe():
    engine = Engine(_config("probe.batch_size=32", "probe.max_iter=3"), device=torch.device("cuda"))
    assert engine.data_on_device and engine.train_set.images.is_cuda
    assert engine.accel.channels_last and engine.accel.amp_dtype == torch.bfloat16
    recorder = _DtypeRecorder(engine.model)
    stats = engine.train_chunk(0, 0, [0.05] * 2, GEOMETRY)
    assert set(recorder.dtypes) == {torch.bfloat16} and stats.samples == 128
    assert torch.isfinite(torch.tensor(stats.loss_sum))
    recorder.dtypes.clear()
    assert engine.probe(0).eigenvalue > 0 and set(recorder.dtypes) == {torch.float32}
    assert all(v.device.type == "cpu" for v in engine.state_dict()["model"].values())


@pytest.mark.gpu
def test_gpu_loader_with_pinned_memory_equals_get_batch(tmp_path):
    write_tinyimagenet(tmp_path)
    dataset = build_dataset("tinyimagenet", "train", tmp_path)
    loader = PrefetchLoader(dataset, num_workers=2, pin_memory=True)
    requests = _requests(4, 3, len(dataset), seed=7)
    for (inputs, labels), (indices, seeds) in zip(loader.batches(requests), requests, strict=True):
        assert inputs.is_pinned()
        assert torch.equal(inputs, dataset.get_batch(indices, seeds)[0])


@pytest.mark.gpu
def test_a_gpu_training_step_waits_for_the_device_once():
    """A step's one synchronisation is reading its stop flag and statistics back (`control.tolist()`); writing a
    Python number into one element of a CUDA tensor (`t[0] = x`) is a blocking copy each, and made 3.2 per step on
    an H200. Counted with CUDA's sync debug mode (benchmarks/throughput.py's ``sync_sources``, by line) over a chunk
    of 3 steps, after a warm-up step: at most one per step and three per chunk (the step timer's event, the chunk's
    statistics)."""
    engine = Engine(_config(), device=torch.device("cuda"))
    engine.train_chunk(0, 0, [0.05], GEOMETRY)  # the epoch's order moves to the device once
    chunks = []
    sources = load_benchmark("throughput").sync_sources(
        lambda: chunks.append(engine.train_chunk(0, 64, [0.05] * 3, GEOMETRY)))
    assert chunks[0].steps == 3
    assert 3 <= sum(sources.values()) <= 3 + 3, sources  # at least the one a step: the mode was on and counted
