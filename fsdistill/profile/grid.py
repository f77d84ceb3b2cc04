"""``run_profile``: the ways × shots grid of ``fsdistill profile``, cell by cell, driven by a :class:`ProfileCfg`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsdistill.config import ModelCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.backbone_specs import DEFAULT_BACKBONE, backbone_spec
from fsdistill.profile.config import DEFAULT_WAYS, ProfileCfg, ProfileResult, shot_grid
from fsdistill.profile.measure import MemoryMeter, _Estimator, _free, _load_average, _Measure, _Runner, is_oom
from fsdistill.profile.report import _write_plot, _write_tables, headline_ratios, render_markdown
from fsdistill.profile.subjects import (
    _load_run,
    _Models,
    _params,
    _random_images,
    _RandomFactory,
    _support_mb,
    _Supports,
    _weights_mb,
)
from fsdistill.runtime import (
    device_name,
    inference_memory_format,
    library_versions,
    progress,
    resolve_device,
    retain_freed_memory,
    seed_everything,
    write_atomic,
)

__all__ = ["run_profile"]


def run_profile(cfg: ProfileCfg, quiet: bool = False) -> ProfileResult:
    """Measure the grid and write profile.json/.csv/.md/.png into ``cfg.out`` (see :mod:`fsdistill.profile`).

    Raises:
        ConfigError: a bad option. CheckpointError: an unusable ``cfg.model``. DeviceError: an unavailable device.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    retain_freed_memory()  # predict runs warm (see Predictor), so the times here are taken warm too
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for profile.json/.csv/.md/.png.")
    gen = seed_everything(cfg.seed)
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
        given = {"backbone": backbone_name, "size": size, "student_width": cfg.student_width, "decoder": cfg.decoder}
        model_cfg = load_config(ModelCfg, None, given)  # None: not given, the default stands
        max_ways = cfg.ways or DEFAULT_WAYS
        ways_grid = list(range(1, max_ways + 1))
        factory = _RandomFactory(model_cfg, max_ways, device)
        base_teacher = factory.base
        info = {}
    shots_grid = shot_grid(cfg.shots)
    max_ways, max_shots = ways_grid[-1], shots_grid[-1]
    teacher_ways = min(max_ways, cfg.teacher_max_ways)  # the teacher is timed up to this many ways
    if not any(w <= teacher_ways for w in ways_grid):  # no teacher cell at all: no supports to encode either
        base_teacher = None

    meter = MemoryMeter(device)
    runner = _Runner(cfg, device, meter)
    estimator = _Estimator()
    query = _random_images(cfg.batch_size, size, gen).to(device)  # uint8: the models normalise it, as in predict

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the output folder {out} ({exc.strerror}); pass another --out.") from None
    cells = [(w, s) for w in ways_grid for s in shots_grid]
    bar = progress(total=len(cells), quiet=quiet, desc="profile", unit="cell")

    supports = None
    if base_teacher is not None:
        supports = _Supports(teacher_ways, max_shots, size, gen, device)
        if cfg.cache:
            bar.set_postfix({"step": f"encoding {teacher_ways * max_shots} support images"}, refresh=True)
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
        "teacher_max_ways": cfg.teacher_max_ways,
        "teacher_ways": [w for w in ways_grid if w <= teacher_ways] if base_teacher is not None else [],
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
    has_student = factory is not None or fixed.student is not None

    def cell_seconds(w: int, s: int) -> float | None:
        total = 0.0
        groups = [["teacher"]] if base_teacher is not None and w <= teacher_ways else []
        groups.append(["student", "backbone"] if has_student else ["backbone"])
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
            if current.teacher is not None and base_teacher is not None and w <= teacher_ways:
                _measure_teacher(current, w, s, query, supports, cfg, runner, estimator, data)
            _write_tables(out, data)
            bar.update(1)
    finally:
        bar.close()
    data["complete"] = True
    data["load_average_end"] = _load_average()
    data["seconds"] = round(time.perf_counter() - wall0, 1)
    data["ratios"] = headline_ratios(data["rows"], max_ways, max_shots, teacher_ways)
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


def _measure_pair(
    models: _Models, ways: int, shots: int, query: Tensor, runner: _Runner, est: _Estimator, data: dict
) -> None:
    """Student and bare backbone of one cell, run alternately (the backbone alone without a student), both as
    predict runs them (:meth:`_Models.inference_pair`)."""
    layout = inference_memory_format(query.device, "student")
    layout_name = "channels_last" if layout == torch.channels_last else "contiguous"
    student, backbone = models.inference_pair(query.device)
    query = query.contiguous(memory_format=layout)
    fns: dict[str, Callable[[], Any]] = {}
    if student is not None:
        fns["student"] = lambda: student.predict(query)
    fns["backbone"] = lambda: backbone.encode(query)
    guesses = [est.single_ms(name, ways, shots) for name in fns]
    estimate = None if None in guesses else sum(guesses)
    measured = runner.measure(fns, estimate)
    for name, m in measured.items():
        if m.status == "ok":
            est.add(name, ways, shots, m.stats()["p50_ms"])
    if student is not None:
        m = measured["student"]
        extra = {
            "weights_mb": round(_weights_mb(models.student), 1),
            "student_width": getattr(student, "width_arg", None),
            "memory_format": layout_name,
        }
        data["rows"].append(_row("student", ways, shots, m, _params(models.student), query.shape[0], **extra))
    m = measured["backbone"]
    extra = {
        "weights_mb": round(_weights_mb(models.backbone), 1),
        "note": m.note or "the student's backbone alone, run alternately with the student in this cell",
        "memory_format": layout_name,
    }
    data["rows"].append(_row("backbone", ways, shots, m, _params(models.backbone), query.shape[0], **extra))


def _measure_teacher(
    models: _Models,
    ways: int,
    shots: int,
    query: Tensor,
    supports: _Supports,
    cfg: ProfileCfg,
    runner: _Runner,
    est: _Estimator,
    data: dict,
) -> None:
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
            measure = _Measure("oom", note=f"out of memory preparing the supports: {str(exc).splitlines()[0][:160]}")
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

    def fn() -> list[Tensor]:
        outs = []
        for img in query:
            feats = teacher.backbone.encode_batched(images)
            support = teacher.prepare_support(feats, masks)
            del feats
            outs.append(teacher.predict_features(teacher.backbone.encode(img[None]), support, voting))
        return outs

    return fn


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
