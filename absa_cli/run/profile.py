"""Step-time profiles on disk (the model is ``decide/throughput.py``'s): JSON, one object, written by
``absa calibrate`` and read by ``absa plan --profile`` and ``cluster.profile``."""

from __future__ import annotations

import json
from pathlib import Path

from absa_cli.config import ConfigError
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
