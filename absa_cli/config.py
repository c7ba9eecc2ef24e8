"""Run configuration: schema, presets, overrides, validation (the base, layer 0: omegaconf + stdlib only).

Precedence, lowest first: the schema defaults below < the preset's YAML (a delta: it names only what it
changes) < ``KEY=VALUE`` overrides from the command line. The merged config is in struct mode, so an unknown key
is an error; each section validates itself in ``__post_init__`` and raises ``ValueError`` naming the field.
``load`` turns every such problem into one ``ConfigError`` line (exit code 2 at the CLI).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from absa_cli import catalog
from absa_cli.errors import UserError, first_line

LR_SCALING_RULES = ("linear", "sqrt", "none")
POLICIES = ("absa", "abs", "fixed", "fixed-large")
PROBE_METHODS = ("power", "lanczos")
PROBE_DATA = ("fixed", "fresh")
BN_MODES = ("eval", "train")
AUTO_ON_OFF = ("auto", "on", "off")
AMP_MODES = ("auto", "bf16", "off")
PROBE_AMP_MODES = ("off", "bf16")


class ConfigError(UserError):
    """A config key, type or value that cannot be used."""


class OtherVersionConfig(ConfigError):
    """A saved config (a run's config.yaml) with a key this version of absa does not have: written by a newer one,
    or by an older one before a key was renamed. Not damage: the file is as that version wrote it."""


def _require_finite(section: Any, prefix: str) -> None:
    """Every float of every section a finite number: YAML reads ``inf`` and ``.nan``, which the range checks let
    through (``optim.lr=inf`` is > 0) and training would turn into a diverged run."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            _require_finite(value, f"{prefix}{item.name}.")
        elif isinstance(value, float):
            _require(math.isfinite(value), f"{prefix}{item.name} must be a finite number, got {value}")


class _Invalid(ValueError):
    """A value check that failed, and the keys whose values it compared: the layer that set any of them is the one
    the message names (``from_layers``)."""

    def __init__(self, message: str, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


def _require(condition: bool, message: str, *keys: str) -> None:
    """``message`` as a ``ValueError`` unless ``condition``; ``keys``: every key the check compares, where it compares
    more than the one ``message`` opens with."""
    if not condition:
        raise _Invalid(message, keys)


def _switch(value: str) -> str:
    """YAML 1.1 reads on/off (and yes/no) as booleans, which reach a ``str`` field as "True"/"False"."""
    return {"True": "on", "False": "off"}.get(value, value)


SUBSETS = ("spread", "first")


@dataclass
class DataConfig:
    name: str = "shapes"
    # Base directory holding the datasets' folders; "" means $ABSA_DATA, else ~/.cache/absa/data.
    root: str = ""
    download: bool = False  # let torchvision fetch CIFAR/SVHN into `root` when they are missing
    train_split: str = "train"  # svhn also takes "extra" and "train+extra"
    train_size: int = 0  # 0: the whole split (procedural sets: the catalogue's default size)
    test_size: int = 0
    # How train_size/test_size choose from tinyimagenet's and imagenet's files, listed class by class: spread (every
    # k-th file) or first (the first N: a class or two; what runs made before 2026-12-01 trained on).
    subset: str = "spread"
    seed: int = 0  # content of procedural datasets; independent of the training seed on purpose
    augment: bool = True  # the dataset's standard augmentation on training batches
    # In-memory sets (all but tinyimagenet/imagenet) held on the GPU, batches gathered and augmented there.
    # auto: on CUDA when the pixels take at most a quarter of the card's memory; off on the CPU.
    on_device: str = "auto"
    # Processes decoding file-backed sets (tinyimagenet, imagenet) ahead of the step; -1: 4 on CUDA, 0 on the CPU.
    loader_workers: int = -1

    def __post_init__(self) -> None:
        self.on_device = _switch(self.on_device)
        _require(self.name in catalog.DATASETS,
                 f"data.name={self.name!r} is not a dataset; choose one of {', '.join(catalog.DATASETS)}")
        for name in ("train_size", "test_size"):
            _require(getattr(self, name) >= 0, f"data.{name} must be >= 0 (0 keeps the whole split), got "
                                               f"{getattr(self, name)}")
        _require(self.subset in SUBSETS, f"data.subset={self.subset!r}; choose one of {', '.join(SUBSETS)}")
        splits = ("train", "extra", "train+extra") if self.name == "svhn" else ("train",)
        _require(self.train_split in splits,
                 f"data.train_split={self.train_split!r} is not valid for {self.name}; use one of {splits}",
                 "data.train_split", "data.name")
        _require(self.on_device in AUTO_ON_OFF,
                 f"data.on_device={self.on_device!r}; choose one of {', '.join(AUTO_ON_OFF)}")
        _require(self.on_device != "on" or not catalog.DATASETS[self.name].streamed,
                 f"data.on_device=on: {self.name} is decoded from files batch by batch and cannot live on the "
                 f"device; use data.on_device=auto (and data.loader_workers to decode ahead)", "data.on_device",
                 "data.name")
        _require(self.loader_workers >= -1,
                 f"data.loader_workers must be >= 0, or -1 for auto, got {self.loader_workers}")

    def resolved_root(self) -> Path:
        """The data directory: ``data.root``, else ``$ABSA_DATA``, else ``~/.cache/absa/data``."""
        root = self.root or os.environ.get("ABSA_DATA") or "~/.cache/absa/data"
        return Path(root).expanduser()


@dataclass
class ModelConfig:
    name: str = "resnet20"
    width: float = 1.0  # channel multiplier (SqueezeNext 1.0 / 2.0 in the paper)

    def __post_init__(self) -> None:
        _require(self.name in catalog.MODEL_NAMES,
                 f"model.name={self.name!r} is not a model; choose one of {', '.join(catalog.MODEL_NAMES)}")
        _require(self.width > 0, f"model.width must be > 0, got {self.width}")
        _require(self.width == 1.0 or self.name not in catalog.FIXED_WIDTH_MODELS,  # else every worker dies starting
                 f"model.width={self.width:g}: {self.name} has fixed widths (torchvision's); use model.width=1.0",
                 "model.width", "model.name")


@dataclass
class OptimConfig:
    """SGD with momentum. ``lr`` is stated at ``ref_batch_size`` and scaled to the global batch."""

    lr: float = 0.1
    ref_batch_size: int = 128
    lr_scaling: str = "linear"  # linear | sqrt | none
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_epochs: list[int] = field(default_factory=lambda: [30, 60, 80])
    decay_factor: float = 0.2
    warmup_epochs: float = 0.0  # linear ramp of the LR over this many epochs at the start
    warmup_start_factor: float = 0.1  # the ramp starts at this fraction of the LR

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _require(self.ref_batch_size > 0, f"optim.ref_batch_size must be > 0, got {self.ref_batch_size}")
        _require(self.lr_scaling in LR_SCALING_RULES,
                 f"optim.lr_scaling={self.lr_scaling!r}; choose one of {', '.join(LR_SCALING_RULES)}")
        _require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _require(0 < self.decay_factor <= 1, f"optim.decay_factor must be in (0, 1], got {self.decay_factor}")
        decays = list(self.decay_epochs)
        _require(all(a < b for a, b in zip(decays, decays[1:])) and all(e > 0 for e in decays),
                 f"optim.decay_epochs must be increasing positive epochs, each once, got {decays}")
        _require(self.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _require(0 < self.warmup_start_factor <= 1,
                 f"optim.warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}")


@dataclass
class BatchConfig:
    global_batch_size: int = 128  # samples per optimizer update, summed over workers and accumulation
    per_worker_max: int = 128  # the largest micro-batch one worker runs in one forward/backward

    def __post_init__(self) -> None:
        _require(self.global_batch_size > 0, f"batch.global_batch_size must be > 0, got {self.global_batch_size}")
        _require(self.per_worker_max > 0, f"batch.per_worker_max must be > 0, got {self.per_worker_max}")


@dataclass
class PolicyConfig:
    """How the global batch, the LR and the adversarial fraction evolve (docs/policy.md)."""

    name: str = "absa"  # absa | abs (no adversarial) | fixed (small-batch SGD) | fixed-large (Goyal et al.)
    growth: int = 2  # the batch is multiplied by this at each increase
    eig_ratio: float = 2.0  # grow when λ ≤ λ_ref / eig_ratio
    duration: int = 10  # grow anyway after this many epochs without an increase
    confirm: int = 1  # consecutive probes that must show the drop (1 = the paper)
    recheck: int = 0  # a drop must show again on this many more probes of new samples, taken at once (0 = the paper)
    max_global_batch: int = 16384  # the cap (the paper's 128 × 128); fixed-large trains at this batch
    lr_ramp_epochs: float = 0.0  # after a growth, ramp the LR linearly to its new value over this many epochs
    adv_ratio: float = 0.2  # initial fraction of each base batch replaced by FGSM examples (absa only)
    adv_eps: float = 0.005  # FGSM step in [0, 1] pixel units
    adv_stop_frac: float = 0.5  # adversarial training in the first floor(adv_stop_frac × epochs) epochs only
    # end the run, as a divergence, when an epoch's loss blows up or its accuracy falls back to chance
    # (decide/collapse.py); false: train on regardless
    stop_on_collapse: bool = True

    def __post_init__(self) -> None:
        _require(self.name in POLICIES, f"policy.name={self.name!r}; choose one of {', '.join(POLICIES)}")
        _require(self.growth >= 2, f"policy.growth must be an integer >= 2, got {self.growth}")
        _require(self.eig_ratio > 1, f"policy.eig_ratio must be > 1, got {self.eig_ratio}")
        _require(self.duration >= 1, f"policy.duration must be >= 1, got {self.duration}")
        _require(self.confirm >= 1, f"policy.confirm must be >= 1, got {self.confirm}")
        _require(self.recheck >= 0, f"policy.recheck must be >= 0, got {self.recheck}")
        _require(self.max_global_batch > 0, f"policy.max_global_batch must be > 0, got {self.max_global_batch}")
        _require(self.lr_ramp_epochs >= 0, f"policy.lr_ramp_epochs must be >= 0, got {self.lr_ramp_epochs}")
        _require(0 <= self.adv_ratio < 1, f"policy.adv_ratio must be in [0, 1), got {self.adv_ratio}")
        _require(not math.isfinite(self.adv_eps) or 0 <= self.adv_eps <= 1,  # inf: the finite check names it
                 f"policy.adv_eps is in [0, 1] pixel units (the paper's 0.005), got {self.adv_eps}")
        _require(0 <= self.adv_stop_frac <= 1, f"policy.adv_stop_frac must be in [0, 1], got {self.adv_stop_frac}")


@dataclass
class ProbeConfig:
    """The curvature probe at each epoch boundary: top Hessian eigenvalue on unaugmented training samples."""

    batch_size: int = 128  # the paper: one batch of 128
    num_batches: int = 1
    # fresh: new samples at every probe, drawn from (`seed`, epoch), as the reference draws a fresh random batch
    # each epoch | fixed: the same samples at every probe, drawn once from `seed` (the quickstart's: measured to
    # grow its batch earlier there; docs/policy.md)
    data: str = "fresh"
    method: str = "power"  # power (the paper) | lanczos
    max_iter: int = 10  # the paper: at most 10 power iterations
    tol: float = 1e-2  # relative tolerance (the paper: 1e-2)
    bn_mode: str = "eval"  # BatchNorm in eval mode during the probe, as PyHessian and the paper do
    seed: int = 0  # the probe samples and the starting vectors (a cold start draws a new one from seed and epoch)
    # false: a new random start vector at every probe, as the reference | true: start from the previous probe's top
    # eigenvector (fewer HVPs; the quickstart's; docs/policy.md)
    warm_start: bool = False
    amp: str = "off"  # off: fp32 HVPs whatever device.amp says (λ_max steers the batch size) | bf16

    def __post_init__(self) -> None:
        self.amp = _switch(self.amp)
        _require(self.batch_size > 0, f"probe.batch_size must be > 0, got {self.batch_size}")
        _require(self.num_batches > 0, f"probe.num_batches must be > 0, got {self.num_batches}")
        _require(self.method in PROBE_METHODS, f"probe.method={self.method!r}; choose one of {PROBE_METHODS}")
        _require(self.data in PROBE_DATA, f"probe.data={self.data!r}; choose one of {', '.join(PROBE_DATA)}")
        _require(self.max_iter > 0, f"probe.max_iter must be > 0, got {self.max_iter}")
        _require(self.tol > 0, f"probe.tol must be > 0, got {self.tol}")
        _require(self.bn_mode in BN_MODES, f"probe.bn_mode={self.bn_mode!r}; choose one of {BN_MODES}")
        _require(self.amp in PROBE_AMP_MODES,
                 f"probe.amp={self.amp!r}; choose one of {', '.join(PROBE_AMP_MODES)}")


@dataclass
class DeviceConfig:
    """How a worker uses its accelerator. ``auto`` means the fast choice on CUDA and today's exact path on the CPU,
    so CPU runs (and their tests) do not change; every switch can be forced either way."""

    amp: str = "auto"  # autocast of forward passes: auto (bf16 on CUDA when supported, else off) | bf16 | off
    channels_last: str = "auto"  # NHWC model and inputs: auto (on with CUDA) | on | off
    cudnn_benchmark: bool = True  # let cuDNN time its kernels per input shape (CUDA only)
    compile: bool = False  # torch.compile the training forward (first steps of each new shape pay the compile)

    def __post_init__(self) -> None:
        self.amp, self.channels_last = _switch(self.amp), _switch(self.channels_last)
        _require(self.amp in AMP_MODES, f"device.amp={self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        _require(self.channels_last in AUTO_ON_OFF,
                 f"device.channels_last={self.channels_last!r}; choose one of {', '.join(AUTO_ON_OFF)}")


@dataclass
class EvalConfig:
    batch_size: int = 200  # the paper's test batch
    adversarial_eps: float = 0.0  # > 0: also report FGSM robust accuracy (test_acc_fgsm) at this ε (pixel units)

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, f"eval.batch_size must be > 0, got {self.batch_size}")
        _require(self.adversarial_eps >= 0, f"eval.adversarial_eps must be >= 0, got {self.adversarial_eps}")


@dataclass
class CheckpointConfig:
    every_epochs: int = 1
    keep_last: int = 3

    def __post_init__(self) -> None:
        _require(self.every_epochs > 0, f"checkpoint.every_epochs must be > 0, got {self.every_epochs}")
        _require(self.keep_last > 0, f"checkpoint.keep_last must be > 0, got {self.keep_last}")


@dataclass
class LoggingConfig:
    chunk_steps: int = 10  # steps between progress reports (one driver round trip each)
    sample_log_dir: str = ""  # non-empty: each worker appends the sample ids of every applied step here (audit)
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard extra; docs/metrics.md)

    def __post_init__(self) -> None:
        _require(self.chunk_steps > 0, f"logging.chunk_steps must be > 0, got {self.chunk_steps}")


@dataclass
class ClusterConfig:
    max_workers: int = 1  # most workers the group may grow to (`--max-gpus` overrides it)
    collective_timeout_s: float = 60.0  # a collective with a dead peer fails after this long: never a hang
    start_timeout_s: float = 300.0  # a worker not placed and started within this long counts as unavailable
    placement: str = "pack"  # pack: fill the nodes this run uses first; spread: fewest of this run per node
    profile: str = ""  # a step-time profile (absa calibrate): the group grows only where it predicts a faster step

    def __post_init__(self) -> None:
        _require(self.max_workers >= 1, f"cluster.max_workers must be >= 1, got {self.max_workers}")
        _require(self.start_timeout_s > 0, f"cluster.start_timeout_s must be > 0, got {self.start_timeout_s}")
        _require(self.collective_timeout_s > 0,
                 f"cluster.collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        _require(self.placement in ("pack", "spread"),
                 f"cluster.placement must be pack or spread, got {self.placement!r}")


SEED_LIMIT = 2 ** 63


def seed_problem(name: str, value: int) -> str | None:
    """The line for a seed torch cannot take (past 64 bits it raised an overflow, or the seed wrapped); None if
    it can. The config's seeds and `absa hessian --seed` say it alike."""
    if -SEED_LIMIT <= value < SEED_LIMIT:
        return None
    return f"{name} must be a 64-bit integer (between -2**63 and 2**63 - 1), got {value}"
MAX_EPOCHS = 100_000  # `absa plan` replays the rule epoch by epoch: 1e8 epochs took minutes and 12 GB


@dataclass
class RunConfig:
    preset: str = ""  # the preset this config came from (set by `load`)
    description: str = ""
    seed: int = 0  # model init, sample order and augmentation
    epochs: int = 90
    threads: int = 0  # torch intra-op threads per worker; 0 = torch's default
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        _require_finite(self, "")
        _require(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        _require(self.epochs <= MAX_EPOCHS, f"epochs must be at most {MAX_EPOCHS:,}, got {self.epochs:,}")
        _require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        for name, value in (("seed", self.seed), ("data.seed", self.data.seed), ("probe.seed", self.probe.seed)):
            problem = seed_problem(name, value)
            _require(problem is None, problem or "")
        _require(self.policy.max_global_batch >= self.batch.global_batch_size,
                 f"policy.max_global_batch={self.policy.max_global_batch} is below batch.global_batch_size="
                 f"{self.batch.global_batch_size}; raise the cap or lower the starting batch",
                 "policy.max_global_batch", "batch.global_batch_size")


# ---------------------------------------------------------------------------------------------- presets

def presets_dir() -> Path:
    """Where the preset YAML files are: inside the installed wheel, else the source tree's ``presets/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "presets", package.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no presets directory next to {package}")


def preset_names() -> list[str]:
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def preset_summary(name: str) -> str:
    """The one-line description of a preset: its ``description`` field."""
    return str(OmegaConf.load(_preset_path(name)).get("description", ""))


def _preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}{_did_you_mean(name, names)}; "
                          f"list them with `absa presets list`")
    return presets_dir() / f"{name}.yaml"


# ---------------------------------------------------------------------------------------------- loading

def load(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Schema defaults < preset YAML < ``KEY=VALUE`` overrides, validated; ``ConfigError`` on any problem."""
    layers = [(OmegaConf.load(_preset_path(preset)), f"preset {preset}"),
              (_parse_overrides(overrides), "the command line")]
    config = from_layers(layers, _typed(overrides))
    config.preset = preset
    return config


def from_yaml(text: str) -> RunConfig:
    """Rebuild a saved (resolved) config, e.g. a run directory's ``config.yaml``."""
    try:
        layer = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"not valid YAML: {_yaml_problem(exc, text)}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError("not a mapping of config keys")
    missing = [section for section in ("data", "model", "optim", "batch", "policy") if section not in layer]
    if missing:  # absa saves every section: an empty or cut file must not read as the schema's defaults
        raise ConfigError(f"no {', '.join(missing)} section (an empty or cut file)")
    if isinstance(layer.data, DictConfig) and "subset" not in layer.data:  # saved before data.subset existed:
        layer.data.subset = "first"  # its subsets were the first N files, and a resume must train on the same
    return from_layers([(layer, "the saved config")])


def _typed(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Each override's value as the user typed it, by key: what an error quotes (YAML's reading may differ)."""
    return {key.strip(): value.strip() for key, _, value in (item.partition("=") for item in overrides)}


def from_layers(layers: list[tuple[Any, str]], typed: dict[str, str] | None = None) -> RunConfig:
    """Merge ``(layer, origin)`` pairs over the schema, lowest precedence first, and validate; ``typed``: the
    command line's values as typed, by key, for the messages."""
    merged: DictConfig = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(merged, True)
    for layer, origin in layers:
        layer = _renamed_keys(layer, origin)
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as exc:
            message = _unknown_key_message(exc, origin)  # in a saved config, a key close to one of ours is a typo
            other = origin == "the saved config" and "did you mean" not in message  # of a hand edit: damage
            raise (OtherVersionConfig if other else ConfigError)(message) from None
        except ValidationError as exc:
            raise ConfigError(_type_message(exc, origin, typed or {}, layer)) from None
        except OmegaConfBaseException as exc:
            raise ConfigError(f"invalid config (from {origin}): {first_line(exc)}") from None
        except TypeError:  # OmegaConf merging a list into a mapping or the reverse: optim.decay_epochs[0]=5
            raise ConfigError(f"invalid config (from {origin}): a list or a section was given where the other is "
                              f"expected; set a list whole, e.g. optim.decay_epochs=[30,60], and the keys of a "
                              f"section one by one, e.g. optim.lr=0.1") from None
    try:
        return OmegaConf.to_object(merged)  # runs every section's __post_init__ validation
    except ValueError as exc:
        origin = _set_by(str(exc), getattr(exc, "keys", ()), layers)
        raise ConfigError(f"invalid config{f' (from {origin})' if origin else ''}: {exc}") from None
    except OmegaConfBaseException as exc:  # a value OmegaConf took at merge but cannot build, e.g. [[1]] for list[int]
        raise ConfigError(f"invalid config: {first_line(exc)}; write lists of plain values, e.g. "
                          f"optim.decay_epochs=[30,60]") from None


_NAMED_KEY = re.compile(r"([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:=| must | is )")


def _set_by(message: str, keys: tuple[str, ...], layers: list[tuple[Any, str]]) -> str:
    """Where a value that failed its check came from: the origin of the last layer that sets one of ``keys`` (the
    values a check compares), else the key the message opens with (``epochs must be > 0``, ``policy.name='x'``), so
    the line says which file or command line to fix ('' when no layer sets them: schema defaults)."""
    match = _NAMED_KEY.match(message)
    keys = keys or ((match.group(1),) if match else ())
    for layer, origin in reversed(layers):
        node = layer if isinstance(layer, DictConfig) else OmegaConf.create(layer)
        if any(OmegaConf.select(node, key, default=_UNSET, throw_on_missing=False) is not _UNSET for key in keys):
            return origin
    return ""


_UNSET = object()


def _renamed_keys(layer: Any, origin: str) -> Any:
    """``policy.lr_ramp_steps`` (a ramp in updates) became ``policy.lr_ramp_epochs`` (in epochs): not the same
    number, so never carried over. A saved config with no ramp (0) reads as before; anything else is one line."""
    layer = OmegaConf.create(layer) if not isinstance(layer, DictConfig) else layer
    try:
        steps = OmegaConf.select(layer, "policy.lr_ramp_steps", default=None)
    except OmegaConfBaseException:  # policy is not a section here (policy=[1]): the merge says so in one line
        return layer
    if steps is None:
        return layer
    if origin == "the saved config" and steps == 0:
        layer = layer.copy()
        del layer.policy["lr_ramp_steps"]
        return layer
    if origin == "the saved config":
        raise OtherVersionConfig("this run was saved by an earlier version of absa with policy.lr_ramp_steps (a "
                                 "ramp in updates), now policy.lr_ramp_epochs (in epochs); it cannot continue exactly: "
                                 "start a new run with policy.lr_ramp_epochs")
    raise ConfigError(f"policy.lr_ramp_steps (from {origin}) was replaced by policy.lr_ramp_epochs: the ramp after a "
                      f"growth is now given in epochs, e.g. policy.lr_ramp_epochs=1")


# What a checkpoint's numbers mean: the keys that fix the model, the data and the training trajectory. Not in it:
# where the run happens and how it reports (cluster, device, logging, checkpoint, eval), its length (epochs) and
# where the data lives (data.root), all of which a resume may meet changed.
IDENTITY_KEYS = ("seed", "data.name", "data.train_split", "data.train_size", "data.subset", "data.seed",
                 "data.augment", "model", "optim", "batch", "policy", "probe")
NOT_IDENTITY = ("policy.stop_on_collapse",)  # whether to stop, not how to train: a run stopped by it may turn it off


def resumed_with(config: RunConfig, overrides: list[str] | tuple[str, ...], run_id: str) -> RunConfig:
    """A run's saved ``config`` with the ``KEY=VALUE`` overrides a resume may make: any key outside its recipe
    (``IDENTITY_KEYS``, whose values its checkpoints carry) and its length; e.g. ``policy.stop_on_collapse=false``,
    ``cluster.collective_timeout_s=120``, ``logging.tensorboard=true``, ``data.root=/elsewhere``. Anything else is
    one ``ConfigError`` line: a resume continues the run as it was trained. An unknown key or a wrong value is
    refused as ``train`` refuses it (a misspelt key is not a recipe change)."""
    changed = with_overrides(config, overrides, "the run's config")
    layer = _parse_overrides(overrides)
    for key in _leaf_keys(OmegaConf.to_container(layer)):
        if key == "epochs":
            raise ConfigError("epochs cannot change on resume: the run's schedule follows its length (the adversarial "
                              "phase ends after ⌊policy.adv_stop_frac · epochs⌋ epochs); start a new run for "
                              "another length")
        if key == "data.test_size":
            raise ConfigError("data.test_size cannot change on resume: the run's test accuracies, and its best, are "
                              "measured on one test set; start a new run for another")
        recipe = key not in NOT_IDENTITY and any(key == k or key.startswith(f"{k}.") for k in IDENTITY_KEYS)
        if recipe:
            raise ConfigError(f"{key} is part of run {run_id}'s recipe (its checkpoints carry it), so a resume cannot "
                              f"change it; start a new run with `absa train {config.preset or 'PRESET'} {key}=...`")
    return changed


def with_overrides(config: RunConfig, overrides: list[str] | tuple[str, ...], origin: str) -> RunConfig:
    """``config`` (from ``origin``, e.g. a run's config.yaml) with the command line's ``KEY=VALUE`` overrides,
    validated as ``load`` validates them; a new config either way."""
    changed = from_layers([(OmegaConf.structured(config), origin), (_parse_overrides(overrides), "the command line")],
                          _typed(overrides))
    changed.preset = config.preset
    return changed


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested mapping's values (a list is a value)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")] if prefix else []
    return [key for name, value in tree.items() for key in _leaf_keys(value, f"{prefix}{name}.")]


def identity(config: RunConfig) -> dict[str, str]:
    """The ``IDENTITY_KEYS`` of ``config``, flattened to ``{"model.width": "1.0", ...}`` (plain strings: a
    checkpoint stores them and still loads with ``weights_only=True``)."""
    tree = OmegaConf.to_container(OmegaConf.structured(config))
    flat: dict[str, str] = {}
    for key in IDENTITY_KEYS:
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        items = node.items() if isinstance(node, dict) else [("", node)]
        for leaf, value in items:
            flat[f"{key}.{leaf}" if leaf else key] = str(value)
    return {key: value for key, value in flat.items() if key not in NOT_IDENTITY}


def fingerprint(keys: dict[str, str]) -> str:
    """A short hash of an ``identity``: equal fingerprints, same run recipe."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def identity_differences(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """``key=saved (now current)`` for each key both name with different values. A key only one side has is no
    difference: a newer absa may add keys, and the saved config holds every value it resolved."""
    return [f"{key}={saved[key]} (this run: {current[key]})" for key in sorted(saved.keys() & current.keys())
            if saved[key] != current[key]]


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# Numbers YAML 1.1 reads in a form the user may not mean: octal 010 = 8, sexagesimal 1:30 = 90, hex 0x10 = 16,
# binary 0b11 = 3, and digits grouped by underscores (1_000 = 1000; 1_0.5 = 10.5).
_LEADING_ZERO = re.compile(r"[+-]?0\d+")
_YAML_NUMBER_FORMS = (  # checked for numeric keys only, and only where YAML does read a number
    (re.compile(r"[+-]?\d[\d_]*(:[0-5]?\d)+(\.\d*)?"), "a number with colons"),
    (re.compile(r"[+-]?0x_*[0-9a-fA-F][0-9a-fA-F_]*"), "a hexadecimal number"),
    (re.compile(r"[+-]?0b_*[01][01_]*"), "a binary number"),
    (re.compile(r"[+-]?[\d.]*\d_[\d_.]*([eE][+-]?\d+)?"), "a number with underscores"),
)
_NUMERIC = ("int", "float", "list[int]", "list[float]")


def _yaml_number(token: str) -> int | float | None:
    """The number YAML 1.1 reads ``token`` as, or None (not a number, or not YAML at all)."""
    try:
        read = yaml.safe_load(token)
    except (yaml.YAMLError, ValueError):
        return None
    return read if isinstance(read, (int, float)) and not isinstance(read, bool) else None


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """The command line's ``KEY=VALUE`` overrides as a config layer. A value for a text field is the text as typed
    (YAML would read ``2024_01`` as 202401, ``10:30`` as 630, ``off`` as False; quotes still work); a number in one
    of YAML 1.1's surprising forms is refused with its plain form."""
    items = []
    for item in overrides:
        key, _, value = item.partition("=")
        if "=" not in item or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. optim.lr=0.05")
        if key.strip() == "preset":  # set by `load` from the command's argument: an override would be overwritten
            raise ConfigError(f"override {item!r}: the preset is the command's first argument, not a key; write "
                              f"e.g. absa train {value or 'quickstart'}")
        expected, text = _expected_type(key.strip()), value.strip()
        if expected == "str" and not text.startswith(("'", '"')):  # a quoted value is YAML's (an unclosed quote too)
            items.append(f"{key}='{text.replace(chr(39), chr(39) * 2)}'")  # YAML's quoting of the text as typed
            continue
        for token in re.split(r"[\[\]{},\s]+", value):
            if expected != "str" and _LEADING_ZERO.fullmatch(token):
                raise ConfigError(f"override {item!r}: a number with a leading zero ({token}) is ambiguous in YAML, "
                                  f"which reads 010 as octal 8; write {key}={_plain_number(value)}")
            for form, what in _YAML_NUMBER_FORMS if expected in _NUMERIC else ():
                if form.fullmatch(token) and _yaml_number(token) is not None:
                    raise ConfigError(f"override {item!r}: {what} ({token}) is ambiguous in YAML, which reads it "
                                      f"as {_yaml_number(token)}; write {key}={_plain_number(value)}")
        items.append(item)
    for item in items:  # one at a time first, so an error names the override it comes from
        try:
            OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
            problem = _yaml_problem(exc, item.partition("=")[2])
            raise ConfigError(f"cannot parse override {item!r}: {problem}; {_override_hint(item)}") from None
    try:
        return OmegaConf.from_dotlist(items)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {first_line(exc)}") from None


def _plain_number(value: str) -> str:
    """``value`` with each number in YAML 1.1's plain reading written out (0x10 → 16, 1:30 → 90, 010 → 10, as the
    user most likely meant a leading zero)."""
    def plain(match: re.Match) -> str:
        token = match.group(0)
        if _LEADING_ZERO.fullmatch(token):
            return re.sub(r"^([+-]?)0+(\d)", r"\1\2", token)
        read = _yaml_number(token)
        return token if read is None else str(read)
    return re.sub(r"[^\[\]{},\s]+", plain, value)


def _yaml_problem(exc: BaseException, value: str) -> str:
    """What a YAML error says, in one line: its problem (``found unexpected end of stream``) without the
    ``in "<unicode string>", line 1`` marks, which point into absa's own buffer, not the user's input."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if isinstance(exc, yaml.constructor.ConstructorError):  # a tag: only plain values are read, nothing is built
        return "this YAML tag is not allowed (only plain values are read)" if "!" in value else \
            f"{value!r} is not a value"
    return str(problem).strip() if problem else first_line(exc)


def _override_hint(item: str) -> str:
    key, _, value = item.partition("=")
    if value.count("[") != value.count("]"):
        return f"close the list, e.g. {key}=[30,60]"
    if value.count("'") % 2 or value.count('"') % 2:
        return f"close the quote, or drop it: {key}={value.strip(chr(39) + chr(34))}"
    return f"write the value as plain YAML, e.g. {key}=3, {key}=0.1, {key}=name or {key}=[30,60]"


def _unknown_key_message(exc: ConfigKeyError, origin: str) -> str:
    full_key = str(exc.full_key or exc.key or "")
    parent, _, leaf = full_key.rpartition(".")
    candidates = _keys_under(parent)
    hint = _did_you_mean(leaf, candidates, prefix=f"{parent}." if parent else "")
    if not hint:
        hint = f"; valid keys here: {', '.join(candidates)}"
    return f"unknown config key {full_key!r} (from {origin}){hint}"


def _keys_under(parent: str) -> list[str]:
    node = OmegaConf.structured(RunConfig)
    for part in filter(None, parent.split(".")):
        node = node.get(part)
        if not isinstance(node, DictConfig):
            return []
    return [str(key) for key in node.keys()]


def _type_message(exc: ValidationError, origin: str, typed: dict[str, str], layer: Any) -> str:
    schema = OmegaConf.structured(RunConfig)
    if not (exc.full_key or exc.key):  # a whole section given a scalar, e.g. optim=3 (OmegaConf names no key)
        sections = [str(name) for name, value in layer.items_ex(resolve=False)
                    if isinstance(schema.get(name), DictConfig) and not isinstance(value, DictConfig)]
        name = sections[0] if sections else "optim"
        first = next(iter(schema[name]))
        return (f"invalid config (from {origin}): {name} is a section of keys, not a value; set the keys inside it "
                f"one by one, e.g. {name}.{first}={_yaml(schema[name][first])}")
    key = str(exc.full_key or exc.key)
    expected = _expected_type(key)
    value = typed.get(key.split("[")[0], getattr(exc, "value", None))  # the text typed, not YAML's reading of it
    shown = f"{value!r}" + (", which YAML reads as nothing (null)" if value in ("null", "~", "", "Null", "NULL")
                            else "")
    default = OmegaConf.select(schema, key.split("[")[0], default=None)
    example = {"int": "3", "float": "0.1", "bool": "true", "str": "name", "list[int]": "[30,60]"}.get(expected)
    if expected in ("int", "float", "bool") and isinstance(default, (int, float)):  # a value the key accepts
        example = _yaml(default)
    hint_key = key
    if "[" in key:  # a list element: show how to write the whole list
        hint_key, example = key.split("[")[0], "[30,60]"
    hint = f"; write e.g. {hint_key}={example}" if example else ""
    return f"config key {key!r} expects {expected}, got {shown} (from {origin}){hint}"


def _yaml(value: Any) -> str:
    """A scalar as one writes it in an override: ``true``, ``0.1``, ``3``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _expected_type(full_key: str) -> str:
    """The schema's declared type for a dotted key, as written in this file (``int``, ``list[int]``, ...)."""
    schema: Any = RunConfig
    declared: Any = None
    for part in full_key.split("."):
        name = part.split("[")[0]
        hints = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
        declared = hints.get(name)
        schema = declared
    if declared is None:
        return "a value of the schema's type"
    if "[" in full_key.rsplit(".", 1)[-1]:
        declared = typing.get_args(declared)[0]  # an element of a list
    return declared.__name__ if isinstance(declared, type) and not typing.get_args(declared) else \
        str(declared).replace("typing.", "")


def _did_you_mean(word: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""

