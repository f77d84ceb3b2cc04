"""When training stops without ``--steps``: a budget decided by the data, not a constant.

A constant number of steps (the earlier ``max(120, 12·K)``) was tuned on two easy folders and starved a folder of
small structures (student IoU 0 on three of four classes; 5x the steps fixed it). The automatic budget instead
trains until

* every foreground class has been shown in at least ``queries_per_class`` training queries (rare classes are
  not cut off early), and at least ``min_steps`` steps are done, and
* the training loss has stopped falling: the mean loss of the last ``window`` steps has not improved on the best
  earlier window mean by more than ``tolerance`` (relative) for ``patience`` windows in a row,

or until ``max_steps`` or ``max_seconds``, whichever comes first. The same rule stops the plain fine-tuning
baseline of the benchmarks (its own loss, its own windows), so both are trained to convergence.

A run that continues a trained one (``distill --init``) does not wait for the plateau (``plateau=False``): its
kept classes and the shared decoder start converged and training them on over-fits the supports (held-out IoU
fell the longer it trained, docs/benchmarks.md), so it stops as soon as the floors are met: ``min_steps``, and
``queries_per_class`` for the classes it has to learn (the caller passes only the new classes' counts).
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
            self.reason = f"reached the time cap ({self.max_seconds / 60:.0f} min)"
            return True
        covered = not class_queries or min(class_queries) >= self.queries_per_class
        if self.steps >= self.min_steps and covered and not self.plateau:
            self.reason = (
                f"a continued run: {self.min_steps} steps, each class to learn in {self.queries_per_class}+ queries"
            )
            return True
        if self.steps >= self.min_steps and covered and self._stale >= self.patience:
            self.reason = f"the training loss stopped falling (window of {self.window} steps)"
            return True
        return False
