"""Options of ``fsdistill profile`` (:class:`ProfileCfg`), its result (:class:`ProfileResult`) and the shots grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsdistill.errors import ConfigError
from fsdistill.models.backbone_specs import backbone_spec
from fsdistill.models.decoder import DECODERS
from fsdistill.runtime import is_count

__all__ = ["SHOT_STEPS", "DEFAULT_WAYS", "ProfileCfg", "ProfileResult", "shot_grid"]

SHOT_STEPS = (1, 5, 10, 25, 50)
DEFAULT_WAYS = 3


@dataclass
class ProfileCfg:
    """Options of ``fsdistill profile`` (see :mod:`fsdistill.profiling` for what is measured).

    Attributes:
        ways: largest ways W (grid 1..W); None = 3, or the model's classes with ``model``.
        teacher_max_ways: the teacher is timed only in cells of at most this many ways (0 = never).
        shots: largest shots per class S (grid {1, 5, 10, 25, 50, S} up to S).
        backbone / size / student_width / decoder: of the random-weight models (None = fsdistill's defaults);
            with ``model`` the artifact fixes them and they must be None.
        batch_size: query images per timed run. warmup / runs: per cell (slow cells: see ``slow_s``).
        model: a run or artifact folder: its teacher and/or student weights, classes and size.
        cache: support features computed once (real use); False recomputes them for every query.
        slow_s: single-run time above which a cell gets no warm-up and fewer runs.
        cell_budget_s: timed seconds a slow cell may spend; min_slow_runs: its fewest timed runs.
    """

    ways: int | None = None
    # The teacher's cost grows with ways × shots (minutes per query at 50 × 50 on a CPU), while the question at
    # many ways is the student's flatness.
    teacher_max_ways: int = 10
    shots: int = 10
    backbone: str | None = None
    size: int | None = None
    batch_size: int = 1
    warmup: int = 1
    runs: int = 5
    model: Path | None = None
    out: Path = Path("profile")
    cache: bool = True
    student_width: int | None = None
    decoder: str | None = None
    device: str = "auto"
    seed: int = 0
    slow_s: float = 2.0
    cell_budget_s: float = 10.0
    min_slow_runs: int = 1

    def check(self) -> None:
        """Raise ConfigError (one sentence naming the flag) for an unusable option."""
        for flag, value, low in (
            ("--shots", self.shots, 1),
            ("--batch-size", self.batch_size, 1),
            ("--warmup", self.warmup, 0),
            ("--runs", self.runs, 1),
            ("--teacher-max-ways", self.teacher_max_ways, 0),
        ):
            if not is_count(value) or value < low:
                raise ConfigError(f"{flag} must be an integer of at least {low}, got {value!r}.")
        if not is_count(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be an integer from 0 to 2^32 - 1, got {self.seed!r}.")
        if self.ways is not None and (not is_count(self.ways) or self.ways < 1):
            raise ConfigError(f"--ways must be an integer of at least 1, got {self.ways!r}.")
        if self.student_width is not None and (not is_count(self.student_width) or self.student_width < 0):
            raise ConfigError(f"--student-width must be 0 (the paper's width) or more, got {self.student_width!r}.")
        if self.decoder is not None and self.decoder not in DECODERS:
            raise ConfigError(f"--decoder must be one of {', '.join(sorted(DECODERS))}, got {self.decoder!r}.")
        if self.size is not None and (not is_count(self.size) or self.size < 64 or self.size % 32):
            raise ConfigError(f"--size must be a multiple of 32 of at least 64, got {self.size!r}.")
        if self.slow_s <= 0 or self.cell_budget_s <= 0 or self.min_slow_runs < 1:
            raise ConfigError("slow_s and cell_budget_s must be positive and min_slow_runs at least 1.")
        if self.model is not None:
            fixed = (
                ("--backbone", self.backbone),
                ("--size", self.size),
                ("--student-width", self.student_width),
                ("--decoder", self.decoder),
            )
            for flag, value in fixed:
                if value is not None:
                    raise ConfigError(
                        f"{flag} cannot be combined with --model: the model's artifact fixes it; drop {flag}."
                    )
        elif self.backbone is not None:
            backbone_spec(self.backbone)  # ConfigError for an unknown name


@dataclass
class ProfileResult:
    """What ``profile`` measured and where it wrote it."""

    out_dir: Path
    data: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    @property
    def ratios(self) -> dict[str, Any]:
        return self.data["ratios"]


def shot_grid(shots: int) -> list[int]:
    """{1, 5, 10, 25, 50, S} ∩ [1, S], sorted."""
    return sorted({s for s in SHOT_STEPS if s <= shots} | {shots})
