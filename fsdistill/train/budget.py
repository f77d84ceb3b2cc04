"""When training stops without ``--steps``: a budget decided by the data, not a constant.

Training runs until every class has been shown in ``queries_per_class`` training queries, ``min_steps`` are done
and the training loss has stopped falling, or until ``max_steps`` or ``max_seconds``. A run that continues a
trained one (``distill --init``, ``plateau=False``) stops as soon as the floors are met: its kept classes start
converged, and training them on over-fits the supports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["PlateauStop"]


@dataclass
class PlateauStop:
    """Stop rule of a training loop; call :meth:`update` once per optimiser step.

    Attributes:
        min_steps: never stop before. max_steps: always stop at. max_seconds: wall-time cap (None = none).
        window: steps per loss window. patience: windows without improvement before a plateau is declared.
        tolerance: relative improvement of a window mean over the best earlier one that counts as progress.
        queries_per_class: training queries that must show each class before stopping (0 = no such floor).
        plateau: wait for the training loss to stop falling (False: stop once the step and query floors are met).
        reason: why the loop stopped (set by :meth:`update` when it returns True).
    """

    min_steps: int = 100
    max_steps: int = 2000
    max_seconds: float | None = None
    window: int = 25
    patience: int = 2
    tolerance: float = 0.02
    queries_per_class: int = 0
    plateau: bool = True
    reason: str = ""
    steps: int = 0
    _start: float = field(default_factory=time.perf_counter)
    _window_losses: list[float] = field(default_factory=list)
    _best: float = math.inf
    _stale: int = 0

    def update(self, loss: float, class_queries: list[int] | None = None) -> bool:
        """Record one step's loss; True when training should stop (``reason`` says why)."""
        self.steps += 1
        if math.isfinite(loss):
            self._window_losses.append(loss)
        if len(self._window_losses) >= self.window:
            mean = sum(self._window_losses) / len(self._window_losses)
            self._window_losses.clear()
            if mean < self._best * (1.0 - self.tolerance):
                self._best, self._stale = mean, 0
            else:
                self._stale += 1
        if self.steps >= self.max_steps:
            self.reason = f"reached the step cap ({self.max_steps})"
            return True
        if self.max_seconds is not None and time.perf_counter() - self._start >= self.max_seconds:
            minutes = self.max_seconds / 60
            # --config max_minutes: 0.1 read "(0 min)"
            cap = f"{round(self.max_seconds, 1):g} s" if minutes < 1 else f"{round(minutes, 2):g} min"
            self.reason = f"reached the time cap ({cap})"
            return True
        covered = not class_queries or min(class_queries) >= self.queries_per_class
        if self.steps < self.min_steps or not covered:
            return False
        if not self.plateau:
            self.reason = (
                f"a continued run: {self.min_steps} steps, each class to learn in {self.queries_per_class}+ queries"
            )
            return True
        if self._stale >= self.patience:
            self.reason = f"the training loss stopped falling (window of {self.window} steps)"
            return True
        return False
