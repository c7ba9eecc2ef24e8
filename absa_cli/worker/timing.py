"""Where a training step's time goes, always on: data wait, compute, gradient all-reduce, optimizer step.

A step is a sequence of laps: each ``lap(phase)`` charges the time since the previous lap to ``phase``. On the CPU
the work is synchronous and a lap reads ``time.perf_counter`` (about 0.1 µs). On CUDA a lap records an event on the
stream — no synchronisation on the hot path — and the events are read once per chunk, after the chunk's statistics
have synchronised the stream anyway; there, "data" is the time the GPU waited for the next batch, and compute is
GPU time, so the split describes the GPU's timeline. benchmarks/step_timing_overhead.py measures the cost.
"""

from __future__ import annotations

import time

import torch

from absa_cli.decide.throughput import PHASES


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._mark: float | torch.cuda.Event | None = None

    def _now(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        """The first lap of a step begins now."""
        self._mark = self._now()

    def lap(self, phase: str) -> None:
        now = self._now()
        if self.cuda:
            self._events.append((phase, self._mark, now))
        else:
            self.seconds[phase] += now - self._mark
        self._mark = now

    def totals(self) -> list[float]:
        """Seconds per phase (``PHASES`` order) since this timer was made. On CUDA this waits for the last event:
        call it where the stream is about to be synchronised anyway."""
        if self._events:
            self._events[-1][2].synchronize()
            for phase, begin, end in self._events:
                self.seconds[phase] += begin.elapsed_time(end) / 1000.0
            self._events.clear()
        return [self.seconds[phase] for phase in PHASES]
