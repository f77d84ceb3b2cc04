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
"""

from __future__ import annotations

import copy
import csv
import gc
import io
import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fsdistill.config import ModelCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.backbone import DEFAULT_BACKBONE, backbone_spec
from fsdistill.models.decoder import DECODERS
from fsdistill.runtime import (
    device_name,
    inference_memory_format,
    library_versions,
    progress,
    release_freed_memory,
    resolve_device,
    seed_everything,
    write_atomic,
)

__all__ = [
    "SHOT_STEPS",
    "ProfileCfg",
    "ProfileResult",
    "shot_grid",
    "run_profile",
    "is_oom",
    "CSV_COLUMNS",
    "MemoryMeter",
]

SHOT_STEPS = (1, 5, 10, 25, 50)
DEFAULT_WAYS = 3
DEFAULT_SHOTS = 10
CSV_COLUMNS = (
    "model",
    "ways",
    "shots",
    "status",
    "p50_ms",
    "p95_ms",
    "mean_ms",
    "min_ms",
    "throughput",
    "peak_mem_mb",
    "params",
    "weights_mb",
    "support_cache_mb",
    "supports",
    "voting",
    "warmup",
    "runs",
    "note",
)


@dataclass
class ProfileCfg:
    """Options of ``fsdistill profile`` (see the module docstring for what is measured).

    Attributes:
        ways: largest ways W (grid 1..W); None = 3, or the model's classes with ``model``.
        shots: largest shots per class S (grid {1, 5, 10, 25, 50, S} up to S).
        backbone / size: random-weight models to build (None = efficientnet-lite0 / the backbone's default
            size); with ``model`` they come from the artifact and must be None or equal.
        batch_size: query images per timed run. warmup / runs: per cell (slow cells: see ``slow_s``).
        model: a run or artifact folder: its teacher and/or student weights, classes and size.
        out: output folder (profile.json, profile.csv, profile.md, profile.png).
        cache: support features computed once (real use); False recomputes them for every query.
        student_width: ConvDist width of the random student (None = fsdistill's default, ``ModelCfg``).
        decoder: decoder of the random models, "light" or "dcama" (None = fsdistill's default, ``ModelCfg``).
        slow_s: single-run time above which a cell gets no warm-up and fewer runs.
        cell_budget_s: timed seconds a slow cell may spend; min_slow_runs: its fewest timed runs.
    """

    ways: int | None = None
    shots: int = DEFAULT_SHOTS
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
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{flag} must be an integer of at least {low}, got {value}.")
        if self.ways is not None and (not isinstance(self.ways, int) or self.ways < 1):
            raise ConfigError(f"--ways must be an integer of at least 1, got {self.ways}.")
        if self.student_width is not None and self.student_width < 0:
            raise ConfigError(f"--student-width must be 0 (the paper's width) or more, got {self.student_width}.")
        if self.decoder is not None and self.decoder not in DECODERS:
            raise ConfigError(f"--decoder must be one of {', '.join(sorted(DECODERS))}, got {self.decoder!r}.")
        if self.size is not None and (self.size < 64 or self.size % 32):
            raise ConfigError(f"--size must be a multiple of 32 of at least 64, got {self.size}.")
        if self.slow_s <= 0 or self.cell_budget_s <= 0 or self.min_slow_runs < 1:
            raise ConfigError("slow_s and cell_budget_s must be positive and min_slow_runs at least 1.")
        if self.model is not None:
            fixed = (("--backbone", self.backbone), ("--size", self.size), ("--student-width", self.student_width), ("--decoder", self.decoder))
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


# ---------------------------------------------------------------------------------------------------------------
# Out-of-memory detection, timing and memory meters


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures (torch.OutOfMemoryError, MemoryError, allocator RuntimeErrors)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
    return False


def _free(device: torch.device, collect: bool = True) -> None:
    """Release memory between cells (a full gc pass costs ~0.3 s with torch and timm loaded: only when asked)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events around it on a GPU, perf_counter (after a sync) elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0


def _proc_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _clear_refs_ok() -> bool:
    if _proc_kb("VmHWM") is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory around a block of work, in MB (see the module docstring for the methods)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats (absolute)"
            self._kind = "cuda"
        elif _clear_refs_ok():
            self.method = "cpu: peak RSS growth, VmHWM after malloc_trim and resetting it via /proc/self/clear_refs"
            self._kind = "vmhwm"
        elif os.path.exists("/proc/self/statm"):
            self.method = "cpu: peak RSS growth, /proc/self/statm sampled every 2 ms by a thread"
            self._kind = "sampler"
        else:
            self.method = "cpu: ru_maxrss growth (lower bound: the peak cannot be reset here)"
            self._kind = "rusage"
        self._base = 0.0
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, AttributeError):
            return 0.0

    @staticmethod
    def _maxrss_mb() -> float:
        try:
            import resource
        except ImportError:  # Windows
            return 0.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss_mb())

    def start(self) -> None:
        if self._kind == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        release_freed_memory()  # RSS growth would hide in memory freed by earlier cells
        if self._kind == "vmhwm":
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._base = (_proc_kb("VmRSS") or 0) / 2**10
        elif self._kind == "sampler":
            self._base = self._peak = self._rss_mb()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = self._maxrss_mb()

    def stop(self) -> float:
        """Peak MB since :meth:`start` (CUDA: absolute; CPU: growth over the RSS at start)."""
        if self._kind == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._kind == "vmhwm":
            return max(0.0, (_proc_kb("VmHWM") or 0) / 2**10 - self._base)
        if self._kind == "sampler":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            return max(0.0, max(self._peak, self._rss_mb()) - self._base)
        return max(0.0, self._maxrss_mb() - self._base)


# ---------------------------------------------------------------------------------------------------------------
# Random inputs


def _random_images(n: int, size: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def _random_masks(ways: int, shots: int, size: int, gen: torch.Generator) -> Tensor:
    """ways·shots × size × size class ids, way-major: support i shows class i // shots + 1 as random blobs."""
    cells = max(2, size // 32)
    coarse = torch.rand(ways * shots, 1, cells, cells, generator=gen) > 0.6
    coarse[:, :, cells // 2, cells // 2] = True  # never an empty mask
    blobs = torch.nn.functional.interpolate(coarse.float(), size=(size, size), mode="nearest")[:, 0].bool()
    ids = torch.arange(ways).repeat_interleave(shots) + 1
    return (blobs.long() * ids[:, None, None]).to(torch.uint8)


def _normalise(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    from fsdistill.data.transforms import normalize

    return normalize(images, mean, std)


# ---------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class _Models:
    """The models of one ways value (teacher and/or student share the backbone in random mode)."""

    ways: int
    backbone: nn.Module
    teacher: nn.Module | None
    student: nn.Module | None
    _pair: tuple[nn.Module | None, nn.Module] | None = None

    def inference_pair(self, device: torch.device) -> tuple[nn.Module | None, nn.Module]:
        """(student, backbone) as predict runs them on ``device`` (:func:`fsdistill.models.build.for_inference`:
        batch norms folded, predict's memory layout): one copy made on first use, since the teacher shares the
        backbone in random mode and runs it as it is."""
        from fsdistill.models.build import for_inference

        if self._pair is None:
            if self.student is not None:
                student = for_inference(copy.deepcopy(self.student), device, "student")
                self._pair = (student, student.backbone)
            else:
                self._pair = (None, for_inference(copy.deepcopy(self.backbone), device, "student"))
        return self._pair


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _weights_mb(module: nn.Module | None) -> float:
    if module is None:
        return 0.0
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def _support_mb(support: Any) -> float:
    tensors = [m for maps in support.feats.values() for m in maps] + list(support.masks.values()) + [support.present]
    seen: dict[int, Tensor] = {}
    for t in tensors:
        seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values()) / 2**20


class _RandomFactory:
    """Random-weight teacher + student per ways value; the teacher weights are shared across ways values."""

    def __init__(self, cfg: ModelCfg, max_ways: int, student_width: int | None, device: torch.device) -> None:
        from fsdistill.models.build import build_teacher

        self.cfg, self.student_width, self.device = cfg, student_width, device
        self.base = build_teacher(cfg, max_ways, pretrained=False).to(device).eval()

    def models(self, ways: int) -> _Models:
        from fsdistill.models.build import build_student, build_teacher

        if ways == self.base.num_classes:
            teacher = self.base
        else:
            teacher = build_teacher(self.cfg, ways, pretrained=False)
            teacher.backbone = self.base.backbone  # one backbone for every ways value (and for the support cache)
            try:
                teacher.load_state_dict(self.base.state_dict())
            except RuntimeError:  # per-class parameters would not fit; random weights time the same
                pass
            teacher = teacher.to(self.device).eval()
        student = build_student(teacher, self.student_width).to(self.device).eval()
        return _Models(ways, teacher.backbone, teacher, student)


def _load_run(path: Path, device: torch.device) -> tuple[_Models, dict[str, Any]]:
    """Teacher and/or student of a run (or one artifact) → models, plus size/classes/backbone info."""
    from fsdistill.errors import CheckpointError
    from fsdistill.models.build import load_model, resolve_model_dir

    loaded = {}
    path = Path(path)
    for kind in ("teacher", "student"):
        try:
            directory = resolve_model_dir(path, kind)
        except CheckpointError:
            continue
        loaded[kind] = load_model(directory, kind)
    if not loaded:
        resolve_model_dir(path)  # raises the usual "no artifact" message
        raise CheckpointError(f"{path} holds no teacher or student artifact; pass a run folder to --model.")
    first = next(iter(loaded.values()))
    sizes = {m.size for m in loaded.values()}
    classes = {len(m.class_names) - 1 for m in loaded.values()}
    if len(sizes) > 1 or len(classes) > 1:
        raise CheckpointError(f"The teacher and student of {path} disagree on size or classes; profile one artifact.")
    teacher = loaded["teacher"].model.to(device).eval() if "teacher" in loaded else None
    student = loaded["student"].model.to(device).eval() if "student" in loaded else None
    backbone = (student or teacher).backbone
    info = {
        "size": first.size,
        "ways": classes.pop(),
        "backbone": first.config["backbone"]["name"],
        "class_names": first.class_names,
        "artifacts": {k: str(m.path) for k, m in loaded.items()},
    }
    return _Models(info["ways"], backbone, teacher, student), info


# ---------------------------------------------------------------------------------------------------------------
# Support cache


class _Supports:
    """W×S random supports; their features are encoded once (cache mode) and sliced per cell."""

    def __init__(self, ways: int, shots: int, size: int, gen: torch.Generator, device: torch.device) -> None:
        self.ways, self.shots, self.device = ways, shots, device
        self.images = _random_images(ways * shots, size, gen).to(device)
        self.masks = _random_masks(ways, shots, size, gen).to(device)
        self.full = None  # SupportFeatures of all W×S supports (num_classes = W)
        self.encode_ms: float | None = None

    def index(self, ways: int, shots: int) -> list[int]:
        return [c * self.shots + j for c in range(ways) for j in range(shots)]

    def encode(self, teacher: nn.Module) -> None:
        from fsdistill.train.episodes import encode_batched

        with torch.no_grad():
            t0 = time.perf_counter()
            feats = encode_batched(teacher.backbone, self.images, self.device)
            self.full = teacher.prepare_support(feats, self.masks)
            _sync(self.device)
            self.encode_ms = (time.perf_counter() - t0) * 1000.0
        del feats

    def cell(self, ways: int, shots: int) -> Any:
        """SupportFeatures of a cell for a ``ways``-class teacher (a view when it is a prefix: no copy)."""
        from fsdistill.models.teacher import SupportFeatures

        full = self.full
        n = ways * shots
        if shots == self.shots:  # way-major order: the first ways·S supports
            pick = lambda t: t[:n]  # noqa: E731
        else:
            index = torch.tensor(self.index(ways, shots), device=self.device)
            pick = lambda t: t.index_select(0, index)  # noqa: E731
        return SupportFeatures(
            feats={lvl: [pick(m) for m in maps] for lvl, maps in full.feats.items()},
            masks={lvl: pick(m)[:, :ways] for lvl, m in full.masks.items()},
            present=pick(full.present)[:, :ways],
        )

    def raw(self, ways: int, shots: int) -> tuple[Tensor, Tensor]:
        index = torch.tensor(self.index(ways, shots), device=self.device)
        return self.images.index_select(0, index), self.masks.index_select(0, index)


# ---------------------------------------------------------------------------------------------------------------
# Measurement


@dataclass
class _Measure:
    status: str
    times: list[float]
    peak_mb: float
    warmup: int
    note: str = ""
    metered: bool = False  # a call of this cell has been metered for memory

    def stats(self) -> dict[str, float | None]:
        if not self.times:
            return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None}
        ordered = sorted(self.times)
        return {
            "p50_ms": round(_quantile(ordered, 0.5), 3),
            "p95_ms": round(_quantile(ordered, 0.95), 3),
            "mean_ms": round(sum(ordered) / len(ordered), 3),
            "min_ms": round(ordered[0], 3),
        }


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default)."""
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Runner:
    """Warm-up + timed runs of the models of one cell, with the slow-cell time policy.

    Several models given together (the student and the bare backbone) are run alternately, one call each per
    round, so that both see the same machine load and their ratio stays meaningful on a busy machine. Memory is
    metered around each warm-up call separately (outside any timed region) and the cell reports the largest peak.
    """

    def __init__(self, cfg: ProfileCfg, device: torch.device, meter: MemoryMeter) -> None:
        self.cfg, self.device, self.meter = cfg, device, meter

    def plan(self, estimate_ms: float | None) -> tuple[int, int]:
        """(warm-up runs, timed runs) for a cell whose single run (round) is estimated at ``estimate_ms``."""
        cfg = self.cfg
        if estimate_ms is None or estimate_ms <= cfg.slow_s * 1000:
            return cfg.warmup, cfg.runs
        fit = int(cfg.cell_budget_s * 1000 // estimate_ms)
        return 0, max(min(cfg.min_slow_runs, cfg.runs), min(cfg.runs, fit))

    def _call(self, name: str, fn: Callable[[], Any], m: _Measure, timed: bool) -> float:
        # Memory is metered on warm-up calls (or, in a cell without warm-up, on its first timed call) only: the
        # meter hands freed heap memory back to the OS first, so a metered call faults its memory in again, and
        # the timed runs should be warm, as predict's are.
        metered = not timed or not m.metered
        if metered:
            self.meter.start()
        try:
            t = _time_once(fn, self.device)
        except BaseException as exc:
            if metered:
                m.peak_mb = max(m.peak_mb, self.meter.stop())
            if not is_oom(exc):
                raise
            m.status, m.times = "oom", []
            m.note = f"out of memory: {str(exc).splitlines()[0][:160]}"
            _free(self.device)
            return 0.0
        if metered:
            m.peak_mb = max(m.peak_mb, self.meter.stop())
            m.metered = True
        if timed:
            m.times.append(t)
        else:
            m.warmup += 1
        return t

    def measure(self, fns: dict[str, Callable[[], Any]], estimate_ms: float | None) -> dict[str, _Measure]:
        """Warm-up and timed runs of every function (alternating); an out-of-memory one stops, the rest go on."""
        warmup, runs = self.plan(estimate_ms)
        out = {name: _Measure("ok", [], 0.0, 0) for name in fns}
        slow = self.cfg.slow_s * 1000

        def live() -> list[str]:
            return [n for n in fns if out[n].status == "ok"]

        with torch.no_grad():
            for _ in range(warmup):
                round_ms = sum(self._call(n, fns[n], out[n], timed=False) for n in live())
                if round_ms > slow:  # slower than expected: this warm-up was enough
                    runs = self.plan(round_ms)[1]
                    break
            done = 0
            while done < runs and live():
                round_ms = sum(self._call(n, fns[n], out[n], timed=True) for n in live())
                done += 1
                if done == 1 and round_ms > slow:
                    runs = min(runs, self.plan(round_ms)[1])
        return out


class _Estimator:
    """Single-run time of a cell from the cells measured before it (teacher: linear in the support count)."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, int, float]]] = {"teacher": [], "student": [], "backbone": []}

    def add(self, model: str, ways: int, shots: int, ms: float) -> None:
        self.points[model].append((ways, shots, ms))

    def single_ms(self, model: str, ways: int, shots: int) -> float | None:
        pts = self.points[model]
        if not pts:
            return None
        if model != "teacher":
            same = [p for p in pts if p[0] == ways]
            return (same or pts)[-1][2]
        xs = [w * s for w, s, _ in pts]
        ys = [ms for _, _, ms in pts]
        n = ways * shots
        if len(set(xs)) < 2:
            return ys[-1] * n / xs[-1]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        slope = max(slope, 0.0)
        return max(my + slope * (n - mx), min(ys))


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages where the OS has them: other work on the cores distorts CPU timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ---------------------------------------------------------------------------------------------------------------
# Main entry


def run_profile(cfg: ProfileCfg, quiet: bool = False) -> ProfileResult:
    """Measure the grid and write profile.json/.csv/.md/.png into ``cfg.out`` (see the module docstring).

    Raises:
        ConfigError: a bad option. CheckpointError: an unusable ``cfg.model``. DeviceError: an unavailable device.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for profile.json/.csv/.md/.png.")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    wall0 = time.perf_counter()
    load_start = _load_average()

    if cfg.model is not None:
        fixed, info = _load_run(cfg.model, device)
        if cfg.ways is not None and cfg.ways != info["ways"]:
            raise ConfigError(
                f"--ways {cfg.ways} does not match the model's {info['ways']} classes; drop --ways with --model."
            )
        ways_grid = [info["ways"]]
        backbone_name, size = info["backbone"], info["size"]
        factory, model_cfg = None, None
        base_teacher = fixed.teacher
    else:
        backbone_name = cfg.backbone or DEFAULT_BACKBONE
        size = cfg.size or backbone_spec(backbone_name).default_size
        chosen = {"student_width": cfg.student_width, "decoder": cfg.decoder}
        model_cfg = load_config(
            ModelCfg, None, {"backbone": backbone_name, "size": size, **{k: v for k, v in chosen.items() if v is not None}}
        )
        max_ways = cfg.ways or DEFAULT_WAYS
        ways_grid = list(range(1, max_ways + 1))
        factory = _RandomFactory(model_cfg, max_ways, model_cfg.student_width, device)
        base_teacher = factory.base
        info = {}
    shots_grid = shot_grid(cfg.shots)
    max_ways, max_shots = ways_grid[-1], shots_grid[-1]

    meter = MemoryMeter(device)
    runner = _Runner(cfg, device, meter)
    estimator = _Estimator()
    spec = (factory.base if factory else (fixed.student or fixed.teacher)).backbone.spec
    query = _normalise(_random_images(cfg.batch_size, size, gen), spec.mean, spec.std).to(device)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the output folder {out} ({exc.strerror}); pass another --out.") from None
    cells = [(w, s) for w in ways_grid for s in shots_grid]
    bar = progress(total=len(cells), quiet=quiet, desc="profile", unit="cell")

    supports = None
    if base_teacher is not None:
        supports = _Supports(max_ways, max_shots, size, gen, device)
        if cfg.cache:
            bar.set_postfix({"step": f"encoding {max_ways * max_shots} support images"}, refresh=True)
            try:
                supports.encode(base_teacher)
            except BaseException as exc:
                if not is_oom(exc):
                    bar.close()
                    raise
                supports.full = None
                _free(device)

    timing_policy = (
        f"warm-up {cfg.warmup} + {cfg.runs} timed runs per cell; a cell whose single run is estimated above "
        f"{cfg.slow_s:g} s (from its warm-up or the previous cells of that model) gets no warm-up and as many timed "
        f"runs as fit in {cfg.cell_budget_s:g} s (at least {min(cfg.min_slow_runs, cfg.runs)}); "
        "each row's warmup/runs say what it got"
    )
    data: dict[str, Any] = {
        "device": device_name(device),
        "backbone": backbone_name,
        "size": size,
        "rows": [],
        "versions": library_versions(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": cfg.batch_size,
        "warmup": cfg.warmup,
        "runs": cfg.runs,
        "cache": cfg.cache,
        "seed": cfg.seed,
        "grid": {"ways": ways_grid, "shots": shots_grid},
        "model": str(cfg.model) if cfg.model is not None else None,
        "weights": "run artifacts" if cfg.model is not None else "random init",
        "student_width": model_cfg.student_width if model_cfg is not None else None,
        "decoder": model_cfg.decoder if model_cfg is not None else None,
        "timing": "CUDA events + synchronize" if device.type == "cuda" else "time.perf_counter",
        "timing_policy": timing_policy,
        "memory_method": meter.method,
        "teacher_queries": "one query at a time (batch_size sequential passes per run)",
        "support_order": "way-major: way c's supports show class c (random blob masks)",
        "support_encode_ms": None if supports is None or supports.encode_ms is None else round(supports.encode_ms, 1),
        "created": datetime.now().isoformat(timespec="seconds"),
        "load_average_start": load_start,
        "complete": False,
    }
    if info:
        data["artifacts"] = info["artifacts"]
        data["class_names"] = info["class_names"]
    plans = {"teacher": base_teacher is not None, "student": factory is not None or fixed.student is not None}

    def cell_seconds(w: int, s: int) -> float | None:
        total = 0.0
        groups = [["teacher"]] if plans["teacher"] else []
        groups.append(["student", "backbone"] if plans["student"] else ["backbone"])
        for group in groups:
            guesses = [estimator.single_ms(model, w, s) for model in group]
            if None in guesses:
                return None
            warm, runs = runner.plan(sum(guesses))
            total += (warm + runs) * sum(guesses) / 1000
        return total

    try:
        current: _Models | None = None
        for w, s in cells:
            this = cell_seconds(w, s)
            left = [cell_seconds(*c) for c in cells[cells.index((w, s)) :]]
            bar.set_postfix(
                {"cell": f"{w}w{s}s", "cell_eta": _fmt_s(this), "eta": _fmt_s(None if None in left else sum(left))},
                refresh=True,
            )
            if current is None or current.ways != w:
                current = None
                _free(device)
                current = fixed if factory is None else factory.models(w)
            _measure_pair(current, w, s, query, runner, estimator, data)
            if current.teacher is not None:
                _measure_teacher(current, w, s, query, supports, cfg, runner, estimator, data)
            _write_tables(out, data)
            bar.update(1)
    finally:
        bar.close()
    data["complete"] = True
    data["load_average_end"] = _load_average()
    data["seconds"] = round(time.perf_counter() - wall0, 1)
    data["ratios"] = headline_ratios(data["rows"], max_ways, max_shots)
    files = _write_tables(out, data)
    files["md"] = write_atomic(out / "profile.md", render_markdown(data))
    files["png"] = _write_plot(out / "profile.png", data)
    return ProfileResult(out, data, files)


def _row(model: str, ways: int, shots: int, m: _Measure, params: int, batch: int, **extra: Any) -> dict[str, Any]:
    stats = m.stats()
    p50 = stats["p50_ms"]
    row = {
        "model": model,
        "ways": ways,
        "shots": shots,
        "status": m.status,
        **stats,
        "throughput": round(batch * 1000.0 / p50, 3) if p50 else None,
        "peak_mem_mb": round(m.peak_mb, 1),
        "params": int(params),
        "warmup": m.warmup,
        "runs": len(m.times),
        **extra,
    }
    if m.note:
        row["note"] = m.note
    return row


def _measure_pair(models: _Models, ways: int, shots: int, query: Tensor, runner: _Runner, est: _Estimator,
                  data: dict) -> None:
    """Student and bare backbone of one cell, run alternately (the backbone alone without a student), both as
    predict runs them (:meth:`_Models.inference_pair`)."""
    layout = inference_memory_format(query.device, "student")
    student, backbone = models.inference_pair(query.device)
    query = query.contiguous(memory_format=layout)
    fns: dict[str, Callable[[], Any]] = {}
    if student is not None:
        fns["student"] = lambda: student(query)
    fns["backbone"] = lambda: backbone(query)
    guesses = [est.single_ms(name, ways, shots) for name in fns]
    estimate = None if None in guesses else sum(guesses)
    measured = runner.measure(fns, estimate)
    for name, m in measured.items():
        if m.status == "ok":
            est.add(name, ways, shots, m.stats()["p50_ms"])
    if student is not None:
        m = measured["student"]
        extra = {"weights_mb": round(_weights_mb(models.student), 1), "student_width": getattr(student, "width_arg", None),
                 "memory_format": _layout_name(layout)}
        data["rows"].append(_row("student", ways, shots, m, _params(models.student), query.shape[0], **extra))
    m = measured["backbone"]
    data["rows"].append(
        _row("backbone", ways, shots, m, _params(models.backbone), query.shape[0],
             weights_mb=round(_weights_mb(models.backbone), 1),
             note=m.note or "the student's backbone alone, run alternately with the student in this cell",
             memory_format=_layout_name(layout))
    )


def _pair_layout(data: dict[str, Any]) -> str:
    names = {r.get("memory_format") for r in data["rows"] if r["model"] in ("student", "backbone")}
    return ", ".join(sorted(n for n in names if n)) or "contiguous"


def _layout_name(layout: torch.memory_format) -> str:
    return "channels_last" if layout == torch.channels_last else "contiguous"


def _measure_teacher(models: _Models, ways: int, shots: int, query: Tensor, supports: _Supports, cfg: ProfileCfg,
                     runner: _Runner, est: _Estimator, data: dict) -> None:
    teacher = models.teacher
    voting = int(teacher.voting)
    extra: dict[str, Any] = {"supports": ways * shots, "weights_mb": round(_weights_mb(teacher), 1)}
    measure: _Measure | None = None
    notes: list[str] = []
    while True:
        support = None
        try:
            if cfg.cache:
                if supports.full is None:
                    raise MemoryError("the support features of the whole grid did not fit in memory")
                support = supports.cell(ways, shots)
                extra["support_cache_mb"] = round(_support_mb(support), 1)

                def fn(support=support, voting=voting):
                    return teacher.predict(query, support, voting)
            else:
                images, masks = supports.raw(ways, shots)
                fn = _uncached_fn(teacher, query, images, masks, voting)
        except BaseException as exc:
            if not is_oom(exc):
                raise
            measure = _Measure("oom", [], 0.0, 0, f"out of memory preparing the supports: {str(exc).splitlines()[0][:160]}")
            break
        estimate = est.single_ms("teacher", ways, shots)
        measure = runner.measure({"teacher": fn}, estimate)["teacher"]
        del support, fn
        if measure.status == "ok" or voting <= 1:
            break
        notes.append(f"voting {voting}: out of memory")
        voting = max(1, voting // 2)
    if measure.status == "ok":
        est.add("teacher", ways, shots, measure.stats()["p50_ms"])
    if notes:
        measure.note = "; ".join(notes + ([measure.note] if measure.note else []))
    extra["voting"] = voting
    data["rows"].append(_row("teacher", ways, shots, measure, _params(teacher), query.shape[0], **extra))
    _free(runner.device, collect=False)


def _uncached_fn(teacher: nn.Module, query: Tensor, images: Tensor, masks: Tensor, voting: int) -> Callable[[], Any]:
    """The reference's cost model: each query re-encodes its supports before the attention."""
    from fsdistill.train.episodes import encode_batched

    def fn() -> list[Tensor]:
        outs = []
        for img in query:
            feats = encode_batched(teacher.backbone, images, images.device)
            support = teacher.prepare_support(feats, masks)
            del feats
            outs.append(teacher.predict_features(teacher.backbone(img[None]), support, voting))
        return outs

    return fn


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def headline_ratios(rows: list[dict[str, Any]], ways: int, shots: int) -> dict[str, Any]:
    """The paper's three headline ratios (p50 latencies; None where a value is missing).

    - ``student_max_over_min``: slowest / fastest student cell over the whole grid (flat in ways and shots = 1).
    - ``teacher_over_student``: teacher / student at the largest cell (ways, shots).
    - ``student_over_backbone``: student / bare backbone at the largest cell (measured alternately there); also
      the worst cell (``student_over_backbone_max``).
    - ``student_paired_max_over_min``: max / min over the grid of each cell's student / backbone ratio. The
      backbone does the same work in every cell, so this is the student's flatness with the machine's speed drift
      between cells divided out (on a shared VM the bare backbone alone moved 1.6× between cells).
    """

    def p50(model: str, w: int, s: int | None = None) -> float | None:
        for r in rows:
            if r["model"] == model and r["ways"] == w and (s is None or r["shots"] == s) and r["status"] == "ok":
                return r["p50_ms"]
        return None

    students = [r for r in rows if r["model"] == "student" and r["status"] == "ok"]
    lat = [r["p50_ms"] for r in students]
    teacher, student, backbone = p50("teacher", ways, shots), p50("student", ways, shots), p50("backbone", ways, shots)
    per_cell = [r["p50_ms"] / b for r in students if (b := p50("backbone", r["ways"], r["shots"]))]
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
    return {
        "largest_cell": {"ways": ways, "shots": shots},
        "student_max_over_min": ratio(max(lat), min(lat)) if lat else None,
        "teacher_over_student": ratio(teacher, student),
        "student_over_backbone": ratio(student, backbone),
        "student_over_backbone_max": round(max(per_cell), 3) if per_cell else None,
        "student_paired_max_over_min": round(max(per_cell) / min(per_cell), 3) if per_cell else None,
    }


def _write_tables(out: Path, data: dict[str, Any]) -> dict[str, Path]:
    """profile.json and profile.csv (written after every cell, so an interrupted profile keeps its rows)."""
    files = {"json": write_atomic(out / "profile.json", json.dumps(data, indent=2, allow_nan=False) + "\n")}
    buf = io.StringIO()
    extra = sorted({k for r in data["rows"] for k in r} - set(CSV_COLUMNS))
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS) + extra, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in data["rows"]:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    files["csv"] = write_atomic(out / "profile.csv", buf.getvalue())
    return files


def _cell(rows: dict, model: str, w: int, s: int) -> tuple[str, str]:
    r = rows.get((model, w, s))
    if r is None:
        return "–", "–"
    if r["status"] != "ok":
        return r["status"].upper(), f"{r['peak_mem_mb']:,.0f}+"
    return f"{r['p50_ms']:,.1f}", f"{r['peak_mem_mb']:,.0f}"


def render_markdown(data: dict[str, Any]) -> str:
    """The paper-style table: rows ways × shots, teacher/student/backbone ms and MB, then the headline ratios."""
    rows = {(r["model"], r["ways"], r["shots"]): r for r in data["rows"]}
    v = data["versions"]
    lines = [
        f"# fsdistill profile: {data['backbone']} at {data['size']} px",
        "",
        f"- device: {data['device']}, {data['threads']} torch threads ({data['cpu_count']} CPUs visible)",
        f"- versions: torch {v['torch']}, timm {v['timm']}, fsdistill {v['fsdistill']}, python {v['python']}",
        f"- weights: {data['weights']}; batch size {data['batch_size']} (the teacher runs queries one at a time); "
        f"support features {'cached (computed once, as in real use)' if data['cache'] else 'recomputed for every query (--no-cache)'}",
        f"- timing: {data['timing']}; {data['timing_policy']}",
        f"- memory: {data['memory_method']}",
        f"- load average (1/5/15 min) at start: {data.get('load_average_start')}, at end: "
        f"{data.get('load_average_end')} (above the thread count, other work shared the cores: timings are inflated)",
        f"- latency = median (p50) ms per run of one batch; memory = peak MB; "
        "student and backbone runs alternate within a cell",
        f"- memory layout: student and backbone {_pair_layout(data)} (as predict runs the student), teacher default",
        "",
        "| ways | shots | teacher ms | teacher MB | student ms | student MB | backbone ms | backbone MB | teacher / student |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in data["grid"]["ways"]:
        for s in data["grid"]["shots"]:
            t_ms, t_mb = _cell(rows, "teacher", w, s)
            s_ms, s_mb = _cell(rows, "student", w, s)
            b_ms, b_mb = _cell(rows, "backbone", w, s)
            t, st = rows.get(("teacher", w, s)), rows.get(("student", w, s))
            speedup = (
                f"{t['p50_ms'] / st['p50_ms']:,.1f}×"
                if t and st and t["status"] == "ok" and st["status"] == "ok" and st["p50_ms"]
                else "–"
            )
            lines.append(f"| {w} | {s} | {t_ms} | {t_mb} | {s_ms} | {s_mb} | {b_ms} | {b_mb} | {speedup} |")
    params = {}
    for x in data["rows"]:
        params[x["model"]] = max(params.get(x["model"], 0), x["params"])
    lines += [
        "",
        "Parameters (largest ways): " + ", ".join(f"{m} {n:,}" for m, n in params.items()),
        "",
        "## Headline ratios",
        "",
    ]
    r = data.get("ratios") or {}
    cell = r.get("largest_cell", {})
    fmt = lambda x: "n/a" if x is None else f"{x:,.2f}×"  # noqa: E731
    lines += [
        f"- student latency max / min over the grid: {fmt(r.get('student_max_over_min'))} (per-cell student / "
        f"backbone, max / min: {fmt(r.get('student_paired_max_over_min'))}, the machine's drift divided out)",
        f"- teacher / student at {cell.get('ways')}-way {cell.get('shots')}-shot: {fmt(r.get('teacher_over_student'))}",
        f"- student / bare backbone at {cell.get('ways')}-way: {fmt(r.get('student_over_backbone'))}"
        f" (worst cell {fmt(r.get('student_over_backbone_max'))})",
        "",
    ]
    oom = [f"{x['model']} {x['ways']}w{x['shots']}s" for x in data["rows"] if x["status"] != "ok"]
    if oom:
        lines += [f"Out of memory: {', '.join(oom)} (MB column: the peak reached before it failed).", ""]
    if "seconds" in data:
        lines += [f"Profile wall time: {data['seconds']:,.0f} s.", ""]
    return "\n".join(lines)


def _write_plot(path: Path, data: dict[str, Any]) -> Path:
    """Latency vs shots per ways value, log y: teacher solid, student dashed, bare backbone dotted."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    shots = data["grid"]["shots"]
    cmap = matplotlib.colormaps["viridis"]
    ways = data["grid"]["ways"]
    for i, w in enumerate(ways):
        color = cmap(i / max(1, len(ways) - 1) * 0.9)
        for model, style, marker in (("teacher", "-", "o"), ("student", "--", "s"), ("backbone", ":", "^")):
            pts = [
                (r["shots"], r["p50_ms"])
                for r in data["rows"]
                if r["model"] == model and r["ways"] == w and r["status"] == "ok"
            ]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, style, marker=marker, color=color, label=f"{model} {w}-way", markersize=4)
    ax.set_yscale("log")
    if len(shots) > 1:
        ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("shots per class")
    ax.set_ylabel("latency p50 (ms per batch)")
    ax.set_title(f"{data['backbone']} {data['size']} px, {data['device']}, batch {data['batch_size']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())
