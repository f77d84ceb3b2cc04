"""``run_profile``: the ways × shots grid of ``fsdistill profile`` and what each cell measures (the models of each
ways value, random or a run's, on random queries and supports)."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsdistill.config import ModelCfg, load_config
from fsdistill.errors import CheckpointError, ConfigError
from fsdistill.models.backbone_specs import DEFAULT_BACKBONE, backbone_spec
from fsdistill.models.build import parameter_count
from fsdistill.profiling.config import DEFAULT_WAYS, ProfileCfg, ProfileResult, shot_grid
from fsdistill.profiling.measure import MemoryMeter, _Estimator, _free, _load_average, _Measure, _Runner, _sync, is_oom
from fsdistill.profiling.report import _write_plot, _write_tables, headline_ratios, render_markdown
from fsdistill.runtime import (
    device_name,
    inference_memory_format,
    library_versions,
    progress,
    resolve_device,
    retain_freed_memory,
    seed_everything,
    storage_bytes,
    write_atomic,
)

__all__ = ["run_profile"]


# What profile writes into its --out folder.
PROFILE_FILES = ("profile.json", "profile.csv", "profile.md", "profile.png")


def run_profile(cfg: ProfileCfg, quiet: bool = False) -> ProfileResult:
    """Measure the grid and write profile.json/.csv/.md/.png into ``cfg.out`` (see :mod:`fsdistill.profiling`).

    Raises:
        ConfigError: a bad option. CheckpointError: an unusable ``cfg.model``. DeviceError: an unavailable device.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    retain_freed_memory()  # predict runs warm (see Predictor), so the times here are taken warm too
    out = Path(cfg.out).expanduser()
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
        factory, model_cfg = None, info["model_cfg"]  # the run's own (its student's width and refiner)
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
    try:
        query = _random_images(cfg.batch_size, size, gen).to(device)  # uint8: the models normalise it, as predict
        supports = None if base_teacher is None else _Supports(teacher_ways, max_shots, size, gen, device)
    except BaseException as exc:
        if not is_oom(exc):
            raise
        raise ConfigError(
            f"The {cfg.batch_size} query image(s) and {teacher_ways * max_shots if base_teacher else 0} support "
            f"image(s) of {size} px do not fit in memory on {device_name(device)}; lower --batch-size or --shots "
            "(or --teacher-max-ways)."
        ) from None

    taken = [name for name in PROFILE_FILES if (out / name).exists() and not (out / name).is_file()]
    if taken:
        raise ConfigError(f"{out / taken[0]} is a folder, where profile writes a file; move it or pass another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the output folder {out} ({exc.strerror}); pass another --out.") from None
    cells = [(w, s) for w in ways_grid for s in shots_grid]
    bar = progress(total=len(cells), quiet=quiet, desc="profile", unit="cell")

    if supports is not None:
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
        "refiner": model_cfg.refiner if model_cfg is not None else None,
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
        for i, (w, s) in enumerate(cells):
            left = [cell_seconds(*c) for c in cells[i:]]
            bar.set_postfix(
                {"cell": f"{w}w{s}s", "cell_eta": _fmt_s(left[0]), "eta": _fmt_s(None if None in left else sum(left))},
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
            if i == 0:  # the earlier grid's reports go with its rows: never beside this grid's partial ones
                for name in ("profile.md", "profile.png"):
                    (out / name).unlink(missing_ok=True)
            bar.update(1)
    finally:
        bar.close()
    data["complete"] = True
    data["load_average_end"] = _load_average()
    data["seconds"] = round(time.perf_counter() - wall0, 1)
    data["ratios"] = headline_ratios(data["rows"], max_ways, max_shots, max(data["teacher_ways"], default=0))
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


def _paired_ratio(student: _Measure, backbone: _Measure) -> float | None:
    """Median over the cell's rounds of student / backbone, each round's two runs back to back: load that comes
    and goes between rounds slows both alike and divides out (the ratio of the two medians does not pair them)."""
    if student.status != "ok" or backbone.status != "ok" or len(student.times) != len(backbone.times):
        return None
    ratios = [s / b for s, b in zip(student.times, backbone.times) if b > 0]
    return round(statistics.median(ratios), 3) if ratios else None


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
            "student_width": student.width_arg,
            "refiner": student.refiner is not None,
            "memory_format": layout_name,
            "over_backbone": _paired_ratio(m, measured["backbone"]),
        }
        data["rows"].append(_row("student", ways, shots, m, parameter_count(models.student), query.shape[0], **extra))
    m = measured["backbone"]
    extra = {
        "weights_mb": round(_weights_mb(models.backbone), 1),
        "note": m.note or "the student's backbone alone, run alternately with the student in this cell",
        "memory_format": layout_name,
    }
    data["rows"].append(_row("backbone", ways, shots, m, parameter_count(models.backbone), query.shape[0], **extra))


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
    data["rows"].append(_row("teacher", ways, shots, measure, parameter_count(teacher), query.shape[0], **extra))
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


@dataclass
class _Models:
    """The models of one ways value (teacher and/or student share the backbone in random mode)."""

    ways: int
    backbone: nn.Module
    teacher: nn.Module | None
    student: nn.Module | None
    _pair: tuple[nn.Module | None, nn.Module] | None = None

    def inference_pair(self, device: torch.device) -> tuple[nn.Module | None, nn.Module]:
        """(student, backbone) as predict runs them on ``device`` (:func:`fsdistill.models.build.for_inference`),
        copied on first use: the teacher shares the backbone and runs it as it is."""
        from fsdistill.models.build import for_inference

        if self._pair is None:
            if self.student is not None:
                student = for_inference(copy.deepcopy(self.student), device, "student")
                self._pair = (student, student.backbone)
            else:
                self._pair = (None, for_inference(copy.deepcopy(self.backbone), device, "student"))
        return self._pair


def _tensors_mb(tensors: list[Tensor]) -> float:
    """MB of the memory behind ``tensors`` (one listed twice, or sharing its storage, counts once)."""
    return storage_bytes(tensors) / 2**20


def _weights_mb(module: nn.Module) -> float:
    return _tensors_mb([*module.parameters(), *module.buffers()])


def _support_mb(support: Any) -> float:
    return _tensors_mb(
        [m for maps in support.feats.values() for m in maps] + [*support.masks.values(), support.present]
    )


class _RandomFactory:
    """Random-weight teacher + student per ways value; the teacher weights are shared across ways values."""

    def __init__(self, cfg: ModelCfg, max_ways: int, device: torch.device) -> None:
        from fsdistill.models.build import build_teacher

        self.cfg, self.device = cfg, device
        self.base = build_teacher(cfg, max_ways, pretrained=False).to(device).eval()

    def models(self, ways: int) -> _Models:
        from fsdistill.models.build import build_student, build_teacher

        if ways == self.base.num_classes:
            teacher = self.base
        else:
            teacher = build_teacher(self.cfg, ways, pretrained=False)
            teacher.backbone = self.base.backbone  # one backbone for every ways value (and for the support cache)
            with contextlib.suppress(RuntimeError):  # per-class parameters would not fit; random weights time alike
                teacher.load_state_dict(self.base.state_dict())
            teacher = teacher.to(self.device).eval()
        student = build_student(teacher, self.cfg.student_width, self.cfg.refiner).to(self.device).eval()
        return _Models(ways, teacher.backbone, teacher, student)


def _load_run(path: Path, device: torch.device) -> tuple[_Models, dict[str, Any]]:
    """Teacher and/or student of a run (or one artifact) → models, plus size/classes/backbone info."""
    from fsdistill.checkpoint import is_artifact, recover_artifact, resolve_model_dir
    from fsdistill.models.build import load_model

    loaded = {}
    path = Path(path).expanduser()
    if is_artifact(recover_artifact(path)):  # one artifact, of its own kind (a damaged one says so)
        model = load_model(path)
        loaded[model.kind] = model
    else:  # a run folder: each artifact it holds
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
    models = {kind: m.model.to(device).eval() for kind, m in loaded.items()}
    teacher, student = models.get("teacher"), models.get("student")
    backbone = (student or teacher).backbone
    info = {
        "model_cfg": loaded["student"].model_cfg if "student" in loaded else None,  # a teacher has no student fields
        "size": first.size,
        "ways": classes.pop(),
        "backbone": first.config["backbone"]["name"],
        "class_names": first.class_names,
        "artifacts": {k: str(m.path) for k, m in loaded.items()},
    }
    return _Models(info["ways"], backbone, teacher, student), info


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
        with torch.no_grad():
            t0 = time.perf_counter()
            feats = teacher.backbone.encode_batched(self.images)
            self.full = teacher.prepare_support(feats, self.masks)
            _sync(self.device)
            self.encode_ms = (time.perf_counter() - t0) * 1000.0

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
