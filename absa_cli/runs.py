"""Run directories: ids, layout, status (layer 3).

``runs/<run-id>/`` holds ``config.yaml`` (the resolved config), ``run.json`` (status and timestamps),
``metrics.jsonl`` (one JSON record per line) and ``checkpoints/epoch-NNNN.pt``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from absa_cli import config as config_mod
from absa_cli.errors import UserError

STATUSES = ("running", "finished", "failed", "interrupted")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def runs_root(runs_dir: str | os.PathLike | None) -> Path:
    """``--runs-dir``, else ``$ABSA_RUNS_DIR``, else ``./runs``."""
    return Path(runs_dir or os.environ.get("ABSA_RUNS_DIR") or "runs").expanduser()


def check_run_id(run_id: str) -> str:
    """Refuse anything that is not a plain name, so a run id can never leave the runs directory."""
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise UserError(f"run id {run_id!r} is not a plain name (letters, digits, '.', '_', '-'); "
                        f"list run ids with `absa runs list`")
    return run_id


def new_run_id(preset: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{preset}-{stamp}-{secrets.token_hex(2)}"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.id = self.path.name

    @classmethod
    def create(cls, runs_dir: Path, config: config_mod.RunConfig) -> "RunDir":
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = runs_dir / check_run_id(new_run_id(config.preset or "run"))
            try:
                path.mkdir()
                break
            except FileExistsError:  # same second, same suffix: draw again
                continue
        run = cls(path)
        run.checkpoints_dir.mkdir()
        run.config_path.write_text(config_mod.to_yaml(config))
        run.write_info(status="running", preset=config.preset, host=socket.gethostname(), pid=os.getpid(),
                       started_at=_now(), last_epoch=0)
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoints_dir / f"epoch-{epoch:04d}.pt"

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoints_dir.glob("epoch-*.pt"))

    def load_config(self) -> config_mod.RunConfig:
        return config_mod.from_yaml(self.config_path.read_text())

    def info(self) -> dict[str, Any]:
        return json.loads(self.info_path.read_text()) if self.info_path.exists() else {}

    def write_info(self, **fields: Any) -> None:
        """Update ``run.json`` atomically with ``fields``."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        info = {**self.info(), **fields, "updated_at": _now()}
        tmp = self.info_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.info_path)

    def finish(self, status: str, **fields: Any) -> None:
        self.write_info(status=status, ended_at=_now(), **fields)


def _now() -> str:
    return datetime.fromtimestamp(time.time(), tz=timezone.utc).isoformat(timespec="seconds")
