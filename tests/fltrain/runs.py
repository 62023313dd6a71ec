"""Helpers shared by the tests that run whole trainings: interrupt a run at a round, read its metrics."""

from __future__ import annotations

import json
from pathlib import Path

from fltrain.run import METRICS, PRIVATE, Progress

TIMING_KEYS = ("seconds", "cpu_seconds", "elapsed")


class StopAt(Progress):
    """A progress reporter that interrupts the run (as Ctrl-C would) when round ``round_index`` starts."""

    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def round_started(self, round_index: int, rounds: int, local_steps: int) -> None:
        if round_index == self.round_index:
            raise KeyboardInterrupt


def metrics(out: Path) -> list[dict]:
    """The rows of ``out/metrics.jsonl``."""
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    """The rows without their wall/CPU time keys (which differ between otherwise identical runs)."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


class StopAtStep(Progress):
    """Interrupts the run (as Ctrl-C would) after local step ``step`` of round ``round_index``: the round's noise
    and sampling have been drawn, its checkpoint has not been written."""

    def __init__(self, round_index: int, step: int = 1) -> None:
        self.round_index = round_index
        self.at = step
        self.current = 0

    def round_started(self, round_index: int, rounds: int, local_steps: int) -> None:
        self.current = round_index

    def step(self, step: int) -> None:
        if self.current == self.round_index and step == self.at:
            raise KeyboardInterrupt


def private_rows(out: Path) -> list[dict]:
    """The rows of ``out/private-diagnostics.jsonl``."""
    return [json.loads(line) for line in (out / PRIVATE).read_text().splitlines()]
