"""Measuring one call (time, peak memory, out of memory) and the warm-up and timed runs of a cell."""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fsdistill.profiling.config import ProfileCfg
from fsdistill.runtime import proc_status, release_freed_memory

__all__ = ["is_oom", "MemoryMeter"]


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures (torch.OutOfMemoryError, MemoryError, allocator RuntimeErrors)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
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


def _proc_mb(field: str) -> float | None:
    value = proc_status(field)  # kB
    return None if value is None else int(value) / 2**10


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory around a block of work, in MB.

    CUDA: ``max_memory_allocated`` after a reset (absolute: weights and cached supports included). CPU: growth of
    the peak RSS over the RSS at start (activations and workspace only), after handing freed heap memory back to
    the OS; the peak is VmHWM reset through /proc/self/clear_refs, else /proc/self/statm sampled by a thread,
    else ``ru_maxrss`` (a lower bound: it cannot be reset). ``method`` says which.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats (absolute)"
            self._kind = "cuda"
        elif _proc_mb("VmHWM") is not None and _reset_peak_rss():
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
            _reset_peak_rss()
            self._base = _proc_mb("VmRSS") or 0.0
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
            return max(0.0, (_proc_mb("VmHWM") or 0.0) - self._base)
        if self._kind == "sampler":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            return max(0.0, max(self._peak, self._rss_mb()) - self._base)
        return max(0.0, self._maxrss_mb() - self._base)


@dataclass
class _Measure:
    status: str = "ok"
    times: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    warmup: int = 0
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
    """Warm-up + timed runs of the models of one cell, several models alternately (one call each per round).

    A cell whose single round is estimated above ``slow_s`` gets no warm-up and only the timed runs that fit in
    ``cell_budget_s`` (at least ``min_slow_runs``). Memory is metered around single calls, outside timed regions.
    """

    def __init__(self, cfg: ProfileCfg, device: torch.device, meter: MemoryMeter) -> None:
        self.cfg, self.device, self.meter = cfg, device, meter
        self._primed: set[str] = set()  # models called once, unmetered and untimed, before their first cell

    def _prime(self, fns: dict[str, Callable[[], Any]]) -> None:
        """One unmetered, untimed call of each model not yet called in this process: a first call also sets up
        what the process keeps (thread pools, kernel caches), which is not the model's memory (the first cell's
        peak was 10–35× the others')."""
        for name in fns.keys() - self._primed:
            try:
                _time_once(fns[name], self.device)
            except BaseException as exc:
                if not is_oom(exc):
                    raise
                _free(self.device)  # its cell's own calls say so
            self._primed.add(name)

    def plan(self, estimate_ms: float | None) -> tuple[int, int]:
        """(warm-up runs, timed runs) for a cell whose single run (round) is estimated at ``estimate_ms``."""
        cfg = self.cfg
        if estimate_ms is None or estimate_ms <= cfg.slow_s * 1000:
            return cfg.warmup, cfg.runs
        fit = int(cfg.cell_budget_s * 1000 // estimate_ms)
        return 0, max(min(cfg.min_slow_runs, cfg.runs), min(cfg.runs, fit))

    def _call(self, fn: Callable[[], Any], m: _Measure, timed: bool) -> float:
        # A metered call faults in memory the meter handed back, so only warm-up calls (or, without warm-up, the
        # first timed call) are metered: the timed runs stay warm, as predict's are.
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
        out = {name: _Measure() for name in fns}
        slow = self.cfg.slow_s * 1000

        def live() -> list[str]:
            return [n for n in fns if out[n].status == "ok"]

        with torch.no_grad():
            self._prime(fns)
            for _ in range(warmup):
                round_ms = sum(self._call(fns[n], out[n], timed=False) for n in live())
                if round_ms > slow:  # slower than expected: this warm-up was enough
                    runs = self.plan(round_ms)[1]
                    break
            done = 0
            while done < runs and live():
                round_ms = sum(self._call(fns[n], out[n], timed=True) for n in live())
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
        slope = max(statistics.linear_regression(xs, ys).slope, 0.0)
        return max(statistics.fmean(ys) + slope * (n - statistics.fmean(xs)), min(ys))


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages where the OS has them: other work on the cores distorts CPU timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
