"""``fsdistill profile``: latency and memory of the teacher, the student and the bare backbone over ways × shots.

Every cell of ways 1..W × shots {1, 5, 10, 25, 50, S} ∩ [1, S] times three models on the same query batch: the
support-based teacher (support features cached as in real use, or recomputed per query with ``cache=False``),
the support-free student and its bare backbone, run alternately with the student so their ratio survives a busy
machine. Student and backbone run as predict runs them (:func:`fsdistill.models.build.for_inference`). Slow
cells get fewer runs (:class:`~fsdistill.profiling.measure._Runner`); how memory was metered is recorded in
profile.json as ``memory_method`` (:class:`~fsdistill.profiling.measure.MemoryMeter`).
"""

from fsdistill.profiling.config import SHOT_STEPS, ProfileCfg, ProfileResult, shot_grid
from fsdistill.profiling.grid import run_profile
from fsdistill.profiling.measure import MemoryMeter, is_oom
from fsdistill.profiling.report import CSV_COLUMNS, headline_ratios, render_markdown

__all__ = [
    "SHOT_STEPS",
    "ProfileCfg",
    "ProfileResult",
    "shot_grid",
    "run_profile",
    "is_oom",
    "CSV_COLUMNS",
    "MemoryMeter",
    "headline_ratios",
    "render_markdown",
]
