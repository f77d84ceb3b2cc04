"""``fsdistill profile``: latency and memory of the teacher, the student and the bare backbone over ways × shots.

The paper's speed/memory table, reproducible on any machine. For every cell of the grid ways 1..W × shots in
{1, 5, 10, 25, 50, S} ∩ [1, S] three models are timed on the same query batch:

- ``teacher``: the support-based DCAMA teacher with W×S random support images (way c's supports show class c,
  random blob masks, ordered way by way). Support features are computed once, before timing, and cached as in
  real use (``LoadedModel.support_features``); with ``cache=False`` every query also pays the backbone passes
  over its supports (what the reference does). Queries run one at a time (the attention is per query), so a
  batch of B queries costs B sequential passes. A cell that runs out of memory is retried with half the voting
  chunk (down to 1) before it is reported with ``status: "oom"``.
- ``student``: the support-free DistilledStudent. Its cost does not depend on shots, but it is measured in every
  cell anyway (no reuse across cells), so the rows show the measurement noise too.
- ``backbone``: the student's bare backbone on the same batch, also measured in every cell, its runs alternating
  with the student's (one call each per round) so both see the same machine load and the student/backbone
  ratio of a cell stays meaningful on a busy machine. It depends on neither ways nor shots.

Student and backbone run as predict runs them (:func:`fsdistill.models.build.for_inference`: batch norms folded
into their convs, channels-last on the CPU), on copies, so the teacher runs its model as it is; parameter counts
and weight sizes are those of the artifact's (unfolded) modules.

Timing: warm-up runs, then timed runs; CUDA events + synchronize on GPU, ``time.perf_counter`` elsewhere (with
``torch.mps.synchronize`` on MPS). Reported: median (p50), p95, mean and min in ms per run of one batch,
throughput = batch_size / p50 in images/s. Slow cells follow a time policy so that a 5-way 50-shot grid stays
within minutes on a CPU: a cell whose single run is estimated (from its warm-up, or from the previous cells of
the same model) above ``slow_s`` gets no warm-up (the same kernels ran in the smaller cells before it) and only
as many timed runs as fit in ``cell_budget_s``, at least ``min_slow_runs`` (each row says how many it got).

Memory (``peak_mem_mb``): CUDA: ``torch.cuda.max_memory_allocated`` after a reset, so it includes the resident
weights and cached support features. CPU: the growth of peak RSS over the RSS just before the cell's runs
(activations and workspace only; teacher rows add ``support_cache_mb``, all rows ``weights_mb``). On Linux the
peak is VmHWM from /proc/self/status after resetting it by writing "5" to /proc/self/clear_refs; where that is
not permitted a background thread samples /proc/self/statm every 2 ms; elsewhere ``ru_maxrss`` growth (a lower
bound: it cannot be reset). The method used is recorded as ``memory_method``. Memory is metered on a cell's
warm-up calls (in a cell without warm-up: its first timed call), never on the other timed calls: metering hands
freed heap memory back to the OS first (malloc_trim), which would make every timed call fault its activations in
again, while predict runs warm (:func:`fsdistill.runtime.retain_freed_memory`).

The library never prints: progress goes to a tqdm bar (off a terminal or with ``quiet``: none) whose postfix
shows the cell running, its estimated time and the estimated time left.

Modules: :mod:`~fsdistill.profile.config` (``ProfileCfg``, ``ProfileResult``, the shots grid),
:mod:`~fsdistill.profile.measure` (timing of one call, memory meters, the slow-cell policy),
:mod:`~fsdistill.profile.subjects` (the models measured and their random inputs and supports),
:mod:`~fsdistill.profile.grid` (``run_profile``: the ways × shots grid) and :mod:`~fsdistill.profile.report`
(profile.json / .csv / .md / .png and the headline ratios).
"""

from fsdistill.profile.config import SHOT_STEPS, ProfileCfg, ProfileResult, shot_grid
from fsdistill.profile.grid import run_profile
from fsdistill.profile.measure import MemoryMeter, is_oom
from fsdistill.profile.report import CSV_COLUMNS, headline_ratios, render_markdown

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
