"""The console a human watches: a live view in a real (pseudo-)terminal, plain lines without escape codes elsewhere.

`absa train` runs as a real process; under a pty, rich sees a terminal exactly as it would in a user's shell.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from conftest import TINY

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
COMMAND = [sys.executable, "-m", "absa_cli", "train", "quickstart", *TINY, "--local"]
PANEL_FIELDS = ("epoch", "geometry", "global batch 64 = 1 worker × 32 per worker × 2 accumulation steps",
                "updates", "LR", "λ_max", "adversarial", "train", "loss", "acc", "test acc", "samples/s", "policy",
                "ETA")


def _run_in_terminal(tmp_path, columns: int = 140) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([*COMMAND, "--runs-dir", str(tmp_path)], stdin=slave, stdout=slave, stderr=slave,
                               env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=120) == 0
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_a_terminal_gets_the_live_view_with_every_status_field(tmp_path):
    raw = _run_in_terminal(tmp_path)
    assert "\x1b[" in raw  # rich drew with cursor control: it saw a terminal
    screen = ANSI.sub("", raw)
    panel = screen[screen.index("╭─ absa"):]
    for field in PANEL_FIELDS:
        assert field in panel, f"{field!r} missing from the live view"
    assert re.search(r"λ_max\s+\d[\d.]*( [↑↓→])?\s+[▁▂▃▄▅▆▇█]+", panel), "λ_max with its trend sparkline"
    assert "epoch 2/2" in panel and "━" in panel  # the progress bar
    assert "summary: 2 epochs" in screen


def test_a_pipe_gets_plain_timestamped_lines_without_escape_codes(tmp_path):
    result = subprocess.run([*COMMAND, "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TERM": "xterm-256color"})
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run: ") and lines[-1].startswith("summary: ")
    body = lines[1:-1]
    assert body and all(re.match(r"\d\d:\d\d:\d\d ", line) for line in body), body
    assert sum(" step " in line for line in body) >= 2 and sum(re.match(r"\S+ epoch \d+:", line) is not None
                                                               for line in body) == 2


def test_a_plain_epoch_line_says_where_a_resumed_epoch_starts():
    """Resumed from a mid-epoch checkpoint, the epoch's line says which steps are left, not only the epoch's length
    (it read "epoch 2/4: 16 steps" after 9 of them had been trained; review)."""
    import io

    from absa_cli.run.metrics import Console

    out = io.StringIO()
    console = Console(stream=out, force_plain=True)
    console.epoch_started(2, 4, 16, "global batch 64 = 1 worker × 64 per worker × 1 accumulation step", steps_done=9)
    console.epoch_started(3, 4, 16, "global batch 64 = 1 worker × 64 per worker × 1 accumulation step")
    first, second = (line.split(" ", 1)[1] for line in out.getvalue().splitlines())
    assert first == "epoch 2/4: 16 steps (resumed after step 9), global batch 64 = 1 worker × 64 per worker × 1 " \
                    "accumulation step"
    assert second.startswith("epoch 3/4: 16 steps, global batch 64")


def test_a_loss_that_blows_up_prints_in_four_significant_digits_in_the_lines_and_the_panel():
    """A loss of 1.056e10 printed as `10560000000.000` in the step lines and `10560000000.0000` in the epoch line
    and the panel; a loss of a loss's size keeps its fixed places."""
    import io

    from rich.console import Console as RichConsole

    from absa_cli.run.metrics import Console

    out = io.StringIO()
    console = Console(stream=out, force_plain=True)
    console.chunk_done(10, 64, 1834.0, 2.3456)
    console.chunk_done(20, 64, 1834.0, 1.056e10)
    console.epoch_done({"epoch": 1, "train_loss": 1.056e10, "train_acc": 0.1, "test_acc": 0.1, "lr": 8.0,
                        "global_batch_size": 128, "updates": 64, "epoch_s": 6.0})
    small, large, epoch = (line.split(" ", 1)[1] for line in out.getvalue().splitlines())
    assert small.endswith("1,834 samples/s  loss 2.346") and large.endswith("samples/s  loss 1.056e+10"), large
    assert epoch.startswith("epoch 1: train loss 1.056e+10 acc 0.100 |"), epoch
    panel = RichConsole(file=io.StringIO(), width=120, record=True)
    panel.print(console.panel())
    assert "loss 1.056e+10  acc 0.100" in panel.export_text()
