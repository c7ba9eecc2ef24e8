"""Step-time profiles on disk (the model is ``decide/throughput.py``'s): JSON, one object, written by
``absa calibrate`` and read by ``absa plan --profile`` and ``cluster.profile``."""

from __future__ import annotations

import json
from pathlib import Path

from absa_cli.config import ConfigError, RunConfig
from absa_cli.decide.throughput import StepModel


def save(model: StepModel, path: Path) -> None:
    Path(path).write_text(json.dumps(model.to_dict(), indent=2) + "\n")


def load(path: Path | str) -> StepModel:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the profile {path} ({exc}); make one with `absa calibrate PRESET` or "
                          f"`absa calibrate --from-run RUN`") from None
    return StepModel.from_dict(data, str(path))


def timed_model(config: RunConfig) -> str:
    """What a profile of ``config`` times, as its ``model`` field says it (``absa calibrate``'s ``_model_name``):
    the model, its width and the dataset, which set a step's compute and the all-reduced gradient."""
    return f"{config.model.name} (width {config.model.width:g}) on {config.data.name}"


def mismatch(model: StepModel, config: RunConfig) -> str | None:
    """Why ``model``'s seconds are not those of ``config``'s steps (another model, width or dataset), or None.

    Only a note, not a refusal: a user may knowingly reuse a profile of a similar model, or a projection; what is
    wrong is applying one silently."""
    planned = timed_model(config)
    if model.model == planned:
        return None
    return f"the profile times {model.model}, but this config trains {planned}"


def untimed_communication(model: StepModel, max_workers: int, preset: str) -> str | None:
    """A note where ``model`` timed no all-reduce (a profile made on one worker: bandwidth infinite) but is used for
    more than one worker: its times there leave the communication out, so more workers always look faster."""
    if max_workers < 2 or model.allreduce_bandwidth != float("inf"):
        return None
    return (f"note: the profile timed no all-reduce (it was made on one worker): its times for 2 to {max_workers} "
            f"workers leave the communication out; for them make one with `absa calibrate {preset or 'PRESET'} "
            f"--max-gpus {max_workers}`")
