"""Accuracy vs number of supports: untuned teacher, adapted teacher, DistillFSS student, plain fine-tuning.

For each real example case, each seed (``--seeds``, default 0 and 1) and nested support sets of K images (K = 1,
2, 5, 10 by default; a larger set contains every smaller one, drawn from the case's support pool with the seed),
measures on the same held-out images, in one run:

  untuned    the training-free teacher (``adapt`` with 0 steps);
  adapted    the adapted teacher (TransferFSS, ``api.adapt``);
  student    the DistillFSS student (``api.distill``), evaluated support-free;
  distill_teacher  the teacher trained jointly with that student (only when asked: ``--methods ... distill_teacher``);
  pool_student  the student of ``distill --unlabeled POOL`` (only when asked: ``--methods ... pool``): the pool is the
             case's support-pool images not among the K supports (their masks unused) plus its ``pool/`` split
             (unlabeled slices of brain and macaque), never a held-out image;
  finetuned  plain fine-tuning: an FPN head on the same frozen backbone trained on the K supports with flips and
             the student's random crop views, cross-entropy and AdamW, full batch, until its training loss stops
             falling (its own budget, not the method's: ``benchmarks/baselines.py: FineTunedBaseline``), at each of
             two learning rates, on the backbone with ImageNet's normalisation statistics and with those moved
             towards the supports' as our runs move them (``train.norm_adapt``); the best of the four on the
             held-out images is reported (a choice on the test images that favours the baseline).

mIoU is dataset-level IoU per foreground class at each image's original resolution (``api.evaluate``); the
per-class IoU of every run is kept in ``results.json`` and the tables count the classes below IoU 0.1. Training
time is the optimisation loop (``train_s``) and the whole call including feature caching and saving
(``wall_s``); latency is evaluation wall time per held-out image (batch 8, decoding and metric included).

Cases (``--cases``): ``nuclei``, ``brain`` and ``macaque`` from ``examples/make_examples.py`` (built if missing;
a case whose source cannot be had is skipped with a note). ``macaque`` is the hard one: five structures of one
macaque brain, four of them small, some in only 2-3 of the supports. ``macaque-sagittal`` (asked for by name, not
in the default run) is the check case: the same atlas cut sagittally with five other structures, a folder no
default was chosen on; check a new default there, never choose one there. The built
nuclei case has only 8 support tiles of 128 px, so here every nuclei tile, support and held-out alike, is cut
into four 64 px sub-tiles: a pool of 32 supports, no two sharing a pixel, from the top half of the image, and
32 held-out sub-tiles covering exactly the held-out half. Cutting both splits keeps nuclei at the same scale in
supports and queries (every image is resized to the model's input size). Any folder with ``support/`` and
``heldout/`` in the paired layout can be added with ``--folder NAME=DIR``. A K larger than a case's pool is
skipped and reported.

Writes ``results.json``, ``results.md`` and ``accuracy.png`` (mIoU vs K per method, one panel per case) into
``--out``; ``--write-docs`` also replaces the section between ``<!-- accuracy:begin -->`` and
``<!-- accuracy:end -->`` of docs/benchmarks.md (appended if absent) and copies the plot next to it.

    python benchmarks/accuracy.py                       # the full run (see docs/benchmarks.md for its cost)
    python benchmarks/accuracy.py --quick               # K 1 and 5, 5 steps, 4 held-out images, seed 0
    python benchmarks/accuracy.py --cases brain --shots 1 5 20 --steps 60 --seeds 1 --write-docs
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # baselines.py, also when this file is loaded by path

from baselines import FineTunedBaseline  # noqa: E402
from common import fail, run_script, write_json  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import AdaptCfg, DistillCfg, load_config  # noqa: E402
from fsdistill.data.discover import discover  # noqa: E402
from fsdistill.data.support_tensors import load_support_tensors  # noqa: E402
from fsdistill.data.transforms import normalize  # noqa: E402
from fsdistill.errors import ConfigError  # noqa: E402
from fsdistill.infer.predictor import Runner  # noqa: E402
from fsdistill.models.build import build_teacher  # noqa: E402
from fsdistill.runtime import (  # noqa: E402
    device_name,
    flush_denormals,
    library_versions,
    resolve_device,
    seed_everything,
    write_atomic,
)

BUILTIN_CASES = ("nuclei", "brain", "macaque")
CHECK_CASES = ("macaque-sagittal",)  # built and run only when named in --cases
DEFAULT_SHOTS = (1, 2, 5, 10)
DEFAULT_SEEDS = (0, 1)
LOW_IOU = 0.1  # a foreground class below this is counted as "dead" in the tables
QUICK_SHOTS = (1, 5)
QUICK_STEPS = 5
QUICK_HELDOUT = 4
NUCLEI_SUBTILE = 64
TRAININGS = ("untuned", "adapt", "distill", "finetuned")  # what --methods selects by default
# Also selectable: evaluate the teacher that distill trained jointly with the student. Off by default: a teacher
# evaluation costs ~1.8 s per image at K = 20 (~2.6 min of the full run) and the table does not need it.
EXTRA_METHODS = ("distill_teacher", "pool")
METHODS = ("untuned", "adapted", "student", "pool_student", "distill_teacher", "finetuned")  # what is reported
LABELS = {
    "untuned": "untuned teacher",
    "adapted": "adapted teacher",
    "student": "DistillFSS student",
    "pool_student": "student + unlabeled pool",
    "distill_teacher": "distill: teacher",
    "finetuned": "fine-tuned FPN",
}
NAMES_FILES = ("labelmap.txt", "classes.txt", "class_names.txt", "names.txt")
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
DOCS_PNG = "accuracy_vs_shots.png"


@dataclass
class Case:
    """A benchmark case: an ordered support pool (prefixes are the nested sets) and a held-out folder.

    Attributes:
        pool: (key, image path, mask path) in draw order; the first K are the K-shot support set.
        names_file: the pool's class-names file, copied into every support set (None: names from the masks).
        class_names: the full pool's classes; a subset that discovers other classes is skipped.
        heldout: held-out folder (paired layout). note: how the case was made, for the tables.
        unlabeled: images of the case's unlabeled pool split (besides the support-pool images a K-shot set leaves).
    """

    name: str
    pool: list[tuple[str, Path, Path]]
    names_file: Path | None
    class_names: list[str]
    heldout: Path
    heldout_count: int
    note: str
    unlabeled: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- case data


def _names_file(folder: Path) -> Path | None:
    return next((folder / n for n in NAMES_FILES if (folder / n).is_file()), None)


def _copy_pairs(pairs: Sequence[tuple[str, Path, Path]], names_file: Path | None, dest: Path) -> Path:
    """Write ``dest/{images,masks}/<key><suffix>`` (+ the names file): a paired folder of exactly these pairs."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    for key, image, mask in pairs:
        stem = key.replace("/", "__")
        shutil.copyfile(image, dest / "images" / f"{stem}{image.suffix}")
        shutil.copyfile(mask, dest / "masks" / f"{stem}{mask.suffix}")
    if names_file is not None:
        shutil.copyfile(names_file, dest / names_file.name)
    return dest


def _pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(key, image, mask) of a paired folder, sorted by key; other layouts are refused (they cannot be subset)."""
    index = discover(folder)
    if index.layout != "paired" or any(len(s.mask_paths) != 1 for s in index.samples):
        raise SystemExit(f"{folder}: the benchmark needs the paired layout (images/ + masks/), found {index.layout}")
    return sorted((s.key, s.image_path, s.mask_paths[0]) for s in index.samples)


def _subtile(src: Path, dest: Path, tile: int, keep_empty: bool) -> int:
    """Cut every tile of paired folder ``src`` into non-overlapping tile×tile crops in ``dest``; returns the count.

    Crops are named ``<key>_<i><j>``; crops without foreground are dropped unless ``keep_empty``.
    """
    if dest.exists():
        shutil.rmtree(dest)
    count = 0
    for key, image_path, mask_path in _pairs(src):
        image, mask = np.asarray(Image.open(image_path)), np.asarray(Image.open(mask_path))
        h, w = mask.shape[:2]
        for i in range(h // tile):
            for j in range(w // tile):
                window = (slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile))
                if not keep_empty and not (mask[window] > 0).any():
                    continue
                for arr, sub in ((image, "images"), (mask, "masks")):
                    (dest / sub).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.ascontiguousarray(arr[window])).save(dest / sub / f"{key}_{i}{j}.png")
                count += 1
    names = _names_file(src)
    if names is not None:
        shutil.copyfile(names, dest / names.name)
    return count


def _heldout_subset(pairs: list[tuple[str, Path, Path]], limit: int | None) -> list[tuple[str, Path, Path]]:
    """``limit`` images spread evenly over the sorted held-out pairs (all when ``limit`` is None)."""
    if limit is None or limit >= len(pairs):
        return pairs
    picks = sorted({int(round(x)) for x in np.linspace(0, len(pairs) - 1, limit)})
    return [pairs[i] for i in picks]


def make_case(
    name: str,
    support: Path,
    heldout: Path,
    work: Path,
    seed: int,
    heldout_limit: int | None,
    note: str,
    unlabeled: Path | None = None,
) -> Case:
    """A case from paired ``support`` and ``heldout`` folders; the pool order is a permutation drawn with ``seed``.
    ``unlabeled``: the case's folder of unlabeled images, if it has one (``DIR/pool/images``)."""
    pairs = _pairs(support)
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = _heldout_subset(_pairs(heldout), heldout_limit)
    held_dir = _copy_pairs(held, _names_file(heldout), work / name / "heldout")
    return Case(
        name=name,
        pool=[pairs[i] for i in order],
        names_file=_names_file(support),
        class_names=discover(support).class_names,
        heldout=held_dir,
        heldout_count=len(held),
        note=note,
        unlabeled=sorted(unlabeled.glob("*.png")) if unlabeled is not None and unlabeled.is_dir() else [],
    )


def builtin_case(name: str, data: Path, work: Path, seed: int, heldout_limit: int | None) -> Case | None:
    """``nuclei`` (64 px sub-tiles of the built case), ``brain``, ``macaque`` or a check case (built as they are);
    None when the case's source data cannot be had on this machine."""
    from make_examples import ExampleDataUnavailable, build_examples

    try:
        case_dir = build_examples(data, cases=[name])[name]
    except ExampleDataUnavailable as exc:
        print(f"{name}: skipped, its source data is unavailable ({exc})", flush=True)
        return None
    if name == "nuclei":
        t = NUCLEI_SUBTILE
        pool = _subtile(case_dir / "support", work / name / "pool", t, keep_empty=False)
        held = _subtile(case_dir / "heldout", work / name / "heldout_all", t, keep_empty=True)
        note = (
            f"DSB2018; every 128 px tile cut into {t} px sub-tiles: {pool} supports from the top half of the image, "
            f"{held} held-out sub-tiles covering the bottom half"
        )
        return make_case(name, work / name / "pool", work / name / "heldout_all", work, seed, heldout_limit, note)
    if name == "brain":
        note = "MNI152 axial slices, grey / white matter; supports z 40-97, held out z 110-143"
        pool = case_dir / "pool" / "images"
        return make_case(name, case_dir / "support", case_dir / "heldout", work, seed, heldout_limit, note, pool)
    if name in ("macaque", *CHECK_CASES):
        plane = "sagittal" if name == "macaque-sagittal" else "coronal"
        note = f"INIA19 macaque {plane} slices, NeuroMaps structures"
        if name in CHECK_CASES:
            note += "; a check case, not tuned on"
        return make_case(
            name,
            case_dir / "support",
            case_dir / "heldout",
            work,
            seed,
            heldout_limit,
            note,
            case_dir / "pool" / "images",
        )
    raise SystemExit(f"unknown case {name}; choose from {BUILTIN_CASES + CHECK_CASES} or add --folder NAME=DIR")


# ---------------------------------------------------------------------------------------------------- methods


def _evaluate(heldout: Path, model: Path, teacher: bool, device: str) -> dict[str, Any]:
    ev = api.evaluate(heldout, model=model, teacher=teacher, device=device, workers=0)
    return {"miou": ev.miou, "iou": ev.iou, "infer_ms_per_image": 1000 * ev.seconds / ev.images}


# The baseline's learning rates and normalisation statistics (the backbone's ImageNet ones, and those moved towards the
# supports as our runs move them, ``train.norm_adapt``): each pair is trained and the best on the held-out images is
# reported. Choosing on the test images favours the baseline; our methods get no such choice.
FINETUNED_LRS = (1e-3, 3e-3)


def finetuned_baseline(support: Path, heldout: Path, cfg: AdaptCfg, steps: int | None = None) -> dict[str, Any]:
    """Train :class:`FineTunedBaseline` on ``support`` with ``cfg``'s model and seed at each of
    :data:`FINETUNED_LRS` on the backbone with ImageNet's and with ``cfg.train.norm_adapt``'s normalisation
    statistics, with its own budget (``steps`` None: until its loss is flat); evaluate like api.evaluate; return the
    best, with every setting's mIoU and per-class IoU (``miou_by_setting``, ``iou_by_setting``, keyed
    ``lr=…,norm=…``)."""
    index, held = discover(support), discover(heldout)
    if held.class_names != index.class_names:
        raise SystemExit(f"{heldout} has classes {held.class_names} but {support} has {index.class_names}")
    device = resolve_device(cfg.device)
    support_tensors = load_support_tensors(index, cfg.model.size)
    tried: dict[str, dict[str, Any]] = {}
    for norm in dict.fromkeys((0.0, cfg.train.norm_adapt_weight(cfg.model.teacher_weights is not None))):
        for lr in FINETUNED_LRS:
            start = time.perf_counter()
            seed_everything(cfg.train.seed)
            backbone = build_teacher(cfg.model, len(index.class_names) - 1).backbone.to(device)
            backbone.adapt_norm_stats(support_tensors.images, norm)
            baseline = FineTunedBaseline(  # the student's crop views (--train-args reaches both)
                backbone,
                len(index.class_names) - 1,
                crop_views=cfg.train.crop_views,
                crop_min_area=cfg.train.crop_min_area,
                crop_centre_on_class=cfg.train.crop_centre == "class",
            )
            baseline.fit(support_tensors, device, lr=lr, seed=cfg.train.seed, steps=steps)
            wall = time.perf_counter() - start
            tried[f"lr={lr:g},norm={norm:g}"] = {
                **_evaluate_baseline(baseline, held, cfg.model.size, device),
                "train_s": baseline.stats["train_s"],
                "wall_s": wall,
                "steps": baseline.stats["steps"],
                "stop_reason": baseline.stats["stop_reason"],
                "lr": lr,
                "norm_adapt": norm,
            }
    best = max(tried.values(), key=lambda r: r["miou"])
    return {
        **best,
        "miou_by_setting": {name: r["miou"] for name, r in tried.items()},
        "iou_by_setting": {name: r["iou"] for name, r in tried.items()},
    }


class _BaselineRunner(Runner):
    """A fitted :class:`FineTunedBaseline` as a predict/evaluate backend, so it is decoded, batched and scored
    exactly as our models are (``api.confusion_on_folder``)."""

    def __init__(self, baseline: FineTunedBaseline, held, size: int, device: torch.device) -> None:
        self.baseline, self.device, self.size = baseline, device, size
        self.class_names, self.palette = held.class_names, held.palette

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        spec = self.baseline.backbone.spec
        return self.baseline.logits(normalize(images.to(self.device), spec.mean, spec.std))

    def identity(self) -> dict:
        return {"model": "fine-tuned FPN baseline"}


def _evaluate_baseline(baseline: FineTunedBaseline, held, size: int, device: torch.device) -> dict[str, Any]:
    matrix, seconds = api.confusion_on_folder(_BaselineRunner(baseline, held, size, device), held, batch_size=8)
    ious = matrix.iou()
    return {
        "miou": matrix.miou(),
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(held.class_names, ious)},
        "infer_ms_per_image": 1000 * seconds / len(held),
    }


def _run_stats(result: api.RunResult, wall: float) -> dict[str, Any]:
    """What a result row records of a training run: loop and wall time, steps, why it stopped."""
    return {
        "train_s": result.stats["seconds"],
        "wall_s": wall,
        "steps": result.stats["steps"],
        "stop_reason": result.stats["stop_reason"],
    }


def run_shots(
    case: Case, k: int, support: Path, runs: Path, args: argparse.Namespace, seed: int
) -> dict[str, dict[str, Any]]:
    """Every selected method on one K-shot support folder: {method: {miou, iou, infer_ms_per_image, train_s, …}}."""
    common = {"model": args.model_args, "device": args.device}
    train = {**args.train_args, "seed": seed, **({"steps": args.steps} if args.steps is not None else {})}
    out: dict[str, dict[str, Any]] = {}

    def timed(fn, cfg):
        start = time.perf_counter()
        result = fn(cfg, quiet=True, overwrite=True)  # --keep-runs reruns replace the previous runs
        return result, time.perf_counter() - start

    if "untuned" in args.methods:
        cfg = load_config(
            AdaptCfg, overrides={"support": support, "out": runs / "untuned", "train": {**train, "steps": 0}, **common}
        )
        result, wall = timed(api.adapt, cfg)
        out["untuned"] = {
            **_evaluate(case.heldout, result.teacher_dir, True, args.device),
            "train_s": 0.0,
            "wall_s": wall,
            "steps": 0,
        }
    if "adapt" in args.methods:
        cfg = load_config(AdaptCfg, overrides={"support": support, "out": runs / "adapt", "train": train, **common})
        result, wall = timed(api.adapt, cfg)
        stats = _run_stats(result, wall)
        out["adapted"] = {**_evaluate(case.heldout, result.teacher_dir, True, args.device), **stats}
    if "distill" in args.methods:
        cfg = load_config(DistillCfg, overrides={"support": support, "out": runs / "distill", "train": train, **common})
        result, wall = timed(api.distill, cfg)
        stats = _run_stats(result, wall)
        out["student"] = {**_evaluate(case.heldout, result.student_dir, False, args.device), **stats}
        if "distill_teacher" in args.methods:
            out["distill_teacher"] = {**_evaluate(case.heldout, result.teacher_dir, True, args.device), **stats}
    if "pool" in args.methods:
        pool = _unlabeled_pool(case, k, runs / "pool_images")
        cfg = load_config(
            DistillCfg,
            overrides={"support": support, "out": runs / "pool", "unlabeled": pool, "train": train, **common},
        )
        result, wall = timed(api.distill, cfg)
        stats = {
            **_run_stats(result, wall),
            "pool": {
                key: result.stats["pool"].get(key)
                for key in ("used", "trusted", "images", "labelled_fraction", "pool_steps", "reason")
            },
        }
        out["pool_student"] = {**_evaluate(case.heldout, result.student_dir, False, args.device), **stats}
    if "finetuned" in args.methods:
        cfg = load_config(AdaptCfg, overrides={"support": support, "train": train, **common})
        # Its own budget (a baseline held to ours starves); --quick only checks the plumbing: a few steps.
        out["finetuned"] = finetuned_baseline(support, case.heldout, cfg, QUICK_STEPS if args.quick else None)
    return out


def _unlabeled_pool(case: Case, k: int, dest: Path) -> Path:
    """A folder of the unlabeled images a K-shot run may use: the pool images after the first K, and the case's
    unlabeled split (copied, so the run's pool fingerprint names only them)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for key, image, _ in case.pool[k:]:
        shutil.copyfile(image, dest / f"{key.replace('/', '__')}{image.suffix}")
    for image in case.unlabeled:
        shutil.copyfile(image, dest / f"pool__{image.name}")
    return dest


def unusable_supports(case: Case, support: Path) -> str | None:
    """Why a K-shot support folder of ``case`` cannot be trained and compared (its classes differ from the pool's,
    or a listed class has no pixel in it: training refuses that), else None."""
    index = discover(support)
    found, k = index.class_names, len(index)
    if found != case.class_names:
        return f"{k} supports show classes {found}, the pool {case.class_names}"
    shown = set().union(*(np.unique(index.load_mask(i)).tolist() for i in range(len(index))))
    missing = [name for c, name in enumerate(found) if c and c not in shown]
    if missing:
        return f"the {k} supports show no pixel of {', '.join(missing)}"
    return None


def run_case(case: Case, args: argparse.Namespace, work: Path, seed: int, on_result) -> None:
    """All K of one case and seed; ``on_result(row)`` gets each method's result row or a skip row when it exists."""
    for k in args.shots:
        base = {"case": case.name, "k": k, "seed": seed}
        if k > len(case.pool):
            on_result({**base, "skipped": f"the pool has {len(case.pool)} images"})
            continue
        support = _copy_pairs(case.pool[:k], case.names_file, work / case.name / f"support_k{k}")
        reason = unusable_supports(case, support)
        if reason is not None:
            on_result({**base, "skipped": reason})
            continue
        runs = work / case.name / f"runs_k{k}"
        start = time.perf_counter()
        for method, result in run_shots(case, k, support, runs, args, seed).items():
            on_result({**base, "method": method, **result, "supports": [key for key, _, _ in case.pool[:k]]})
        if not args.keep_runs:
            shutil.rmtree(runs, ignore_errors=True)
        print(f"{case.name} K={k} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------------- reports


def _runs(rows: list[dict], case: str, k: int, method: str) -> list[dict]:
    """The result rows of one cell, one per seed."""
    return [r for r in rows if r["case"] == case and r["k"] == k and r.get("method") == method]


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def low_classes(row: dict) -> int:
    """Foreground classes of a result row below :data:`LOW_IOU` (a class absent from the held-out set is skipped)."""
    return sum(1 for name, iou in list(row["iou"].items())[1:] if iou is not None and iou < LOW_IOU)


def _skipped_seeds(rows: list[dict], case: str, k: int) -> dict[int, str]:
    """Seed → why it could not train this cell (its K supports miss a class, the pool is too small)."""
    return {r["seed"]: r["skipped"] for r in rows if r["case"] == case and r["k"] == k and "skipped" in r}


def _skip(rows: list[dict], case: str, k: int) -> str | None:
    """Why a cell has no result, when no seed ran it (a cell some seeds ran is their mean; the others are named)."""
    skipped = _skipped_seeds(rows, case, k)
    ran = any(r["case"] == case and r["k"] == k and "skipped" not in r for r in rows)
    return None if ran or not skipped else next(iter(skipped.values()))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(report: dict, image: str) -> str:
    """The tables of a report (``results.json``'s content) with the plot linked as ``image``; each cell is the
    mean over the seeds that ran it."""
    meta, rows = report["meta"], report["results"]
    methods = [m for m in METHODS if any(r.get("method") == m for r in rows)]
    seeds = meta["seeds"]
    lines = [
        f"Device: {meta['device']}; input {meta['size']} px; backbone {meta['backbone']}; steps {meta['steps']} "
        f"({meta['episodes_per_step']} images per step); seeds {', '.join(map(str, seeds))} (every cell is their mean)"
        f"{'; **quick run**' if meta['quick'] else ''}; total {_duration(meta['total_s'])}; fsdistill "
        f"{meta['versions']['fsdistill']}, torch {meta['versions']['torch']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"![mIoU vs number of supports]({image})",
        "",
    ]
    for case in report["cases"]:
        name = case["name"]
        lines += [
            f"### {name}: {case['heldout']} held-out images, pool of {case['pool']} supports",
            "",
            case["note"] + ".",
            "",
        ]
        low = [m for m in ("student", "finetuned") if m in methods]
        header = [
            "K",
            *[LABELS[m] for m in methods],
            "student / adapted teacher",
            "≥ fine-tuned FPN",
            *[f"{LABELS[m]}: classes < {LOW_IOU}" for m in low],
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k in meta["shots"]:
            skip = _skip(rows, name, k)
            if skip is not None:
                lines.append(f"| {k} | skipped: {skip} |" + " |" * (len(header) - 2))
                continue
            res = {m: _runs(rows, name, k, m) for m in methods}
            miou = {m: _mean(r, "miou") for m, r in res.items()}
            cells = [str(k), *[_fmt(miou[m]) for m in methods]]
            s, t, f = miou.get("student"), miou.get("adapted"), miou.get("finetuned")
            cells.append(_fmt(s / t, 2) if s is not None and t else "–")
            if f is None:
                cells.append("–")
            else:
                beat = [
                    LABELS[m].split()[-1] for m in ("adapted", "student") if miou.get(m) is not None and miou[m] >= f
                ]
                cells.append(" and ".join(beat) if beat else "neither")
            # per seed, so a class dead in one seed only is not averaged away
            cells += [" / ".join(str(low_classes(r)) for r in res[m]) or "–" for m in low]
            lines.append("| " + " | ".join(cells) + " |")
        partly = [(k, _skipped_seeds(rows, name, k)) for k in meta["shots"] if _skip(rows, name, k) is None]
        for k, skipped in partly:
            for seed, why in skipped.items():
                lines.append(f"\nK = {k}, seed {seed}: skipped ({why}); the row is the mean of the other seeds.")
        timed = [m for m in ("adapted", "student", "finetuned") if m in methods]
        header = [
            "K",
            *[f"{LABELS[m]} train s" for m in timed],
            *[f"{LABELS[m]} steps" for m in timed],
            *[f"{LABELS[m]} ms/img" for m in methods],
        ]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k in meta["shots"]:
            if _skip(rows, name, k) is not None:
                continue
            res = {m: _runs(rows, name, k, m) for m in methods}
            cells = [str(k)]
            cells += [
                f"{_fmt(_mean(res[m], 'train_s'), 1)} ({_fmt(_mean(res[m], 'wall_s'), 1)})" if res[m] else "–"
                for m in timed
            ]
            cells += [" / ".join(str(r["steps"]) for r in res[m]) or "–" for m in timed]
            cells += [_fmt(_mean(res[m], "infer_ms_per_image"), 0) if res[m] else "–" for m in methods]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "mIoU: dataset-level IoU per foreground class over all held-out images at original resolution, averaged over "
        "classes, then over the seeds (each seed draws its own nested support sets from the pool: each K adds images "
        f"to the smaller set). *classes < {LOW_IOU}*: foreground classes below that IoU, per seed. *train s*: the "
        "optimisation loop (in brackets the whole call: model build, feature caching, saving); the student and the "
        "distill teacher train together. *steps*: per seed (automatic budget unless a step count was given; the "
        "student's exclude its polish phase, `train.polish_steps`; the FPN's are its own plateau's). "
        "*ms/img*: evaluation wall time per held-out image (batch 8, decoding included; the FPN's backbone runs as "
        "trained, float32 with its batch norms unfolded, where predict folds them and runs the student "
        "channels-last, so its figure overstates its cost). *fine-tuned FPN*: "
        "`benchmarks/baselines.py` (`FineTunedBaseline`), an FPN head on the same frozen backbone, flips and the "
        "student's random crop views (`train.crop_views`), cross-entropy, AdamW, full batch until its training loss "
        "stops falling (its own budget); trained at each learning rate of "
        f"{', '.join(f'{lr:g}' for lr in FINETUNED_LRS)}, on the backbone with ImageNet's normalisation statistics "
        "and with those moved towards the supports' as our runs move them (`train.norm_adapt`), and the best on the "
        "held-out images reported (a choice on the test images that favours the baseline). *train s* of the FPN: "
        "the reported run.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """mIoU vs K, one line per method, one panel per case (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c["name"] for c in report["cases"]]
    rows, shots = report["results"], report["meta"]["shots"]
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(max(8.0, 4.2 * len(cases)), 4.0), squeeze=False)
    for ax, name in zip(axes[0], cases):
        for method in METHODS:
            ks = sorted({r["k"] for r in rows if r["case"] == name and r.get("method") == method})
            mious = [_mean(_runs(rows, name, k, method), "miou") for k in ks]
            if ks:
                ax.plot(
                    ks, mious, marker="o", label=LABELS[method], linestyle="--" if method == "distill_teacher" else "-"
                )
        ax.set_xscale("log")
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_xlabel("supports K")
        ax.set_ylabel("held-out mIoU")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:  # no legend when every cell was skipped
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs_section(docs: Path, section: str) -> None:
    """Replace the text between the accuracy markers of ``docs`` by ``section`` (append the markers if absent).

    Everything outside the markers is left byte for byte; the file is replaced atomically.
    """
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(docs, text)


# ------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(BUILTIN_CASES), choices=BUILTIN_CASES + CHECK_CASES)
    parser.add_argument(
        "--folder",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another case: DIR/support (the pool) and DIR/heldout, paired layout (repeatable)",
    )
    parser.add_argument("--shots", nargs="+", type=int, default=None, help=f"K values (default {list(DEFAULT_SHOTS)})")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of adapt and distill (default: TrainCfg's automatic budget); the FPN baseline trains to "
        "its own plateau whatever this says",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help=f"each seed draws its support pools and seeds every training (default {list(DEFAULT_SEEDS)}; --quick: 0)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="input size (default: ModelCfg's)")
    parser.add_argument("--heldout", type=int, default=None, help="at most this many held-out images per case")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(TRAININGS),
        choices=TRAININGS + EXTRA_METHODS,
        help="what to train and evaluate (default: %(default)s); distill_teacher also evaluates the "
        "teacher trained jointly with the student (needs distill)",
    )
    parser.add_argument(
        "--model-args",
        type=json.loads,
        default={},
        help='ModelCfg overrides as JSON, e.g. \'{"backbone": "resnet50"}\'',
    )
    parser.add_argument(
        "--train-args", type=json.loads, default={}, help="TrainCfg overrides as JSON, e.g. '{\"lr\": 3e-4}'"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"K {list(QUICK_SHOTS)}, {QUICK_STEPS} steps, {QUICK_HELDOUT} held-out images (unless given)",
    )
    parser.add_argument(
        "--data", type=Path, default=ROOT / "examples" / "data", help="where the example cases are built"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy")
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep the support sets and every run's artifacts under OUT/work (default: a temporary folder)",
    )
    parser.add_argument("--write-docs", action="store_true", help="update the accuracy section of --docs")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="train nothing: merge the results.json of runs made in parallel (one per case, seed or method, "
        "same settings otherwise) into one report in --out (and the docs with --write-docs)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.shots = args.shots or list(QUICK_SHOTS)
        args.steps = args.steps if args.steps is not None else QUICK_STEPS
        args.heldout = args.heldout or QUICK_HELDOUT
        args.seeds = args.seeds or [0]
    args.seeds = list(dict.fromkeys(args.seeds or DEFAULT_SEEDS))
    if "distill_teacher" in args.methods and "distill" not in args.methods:
        parser.error("--methods distill_teacher needs distill (it evaluates distill's teacher)")
    args.shots = sorted(set(args.shots or DEFAULT_SHOTS))
    if args.shots[0] < 1:
        parser.error("--shots must be positive")
    if args.steps is not None and args.steps < 1:  # before any case is built or model trained
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.size is not None:
        args.model_args = {**args.model_args, "size": args.size}
    args.cases = list(dict.fromkeys(args.cases))  # a case named twice would be measured twice into one cell
    names = list(args.cases)
    for spec in args.folder:
        if "=" not in spec:
            parser.error(f"--folder takes NAME=DIR, got {spec}")
        name = spec.split("=", 1)[0]
        if name in names:  # the cases share work/seedS/NAME: one would be evaluated on the other's images
            parser.error(f"--folder {name}=… names a case already measured; give it another NAME")
        names.append(name)
    if not args.cases and not args.folder:
        parser.error("no case: give --cases and/or --folder")
    return args


def reproducing_command(words: Sequence[str] | str) -> str:
    """The command line that measures the same numbers: without ``--out DIR`` and ``--keep-runs`` (where results
    and artifacts go changes no figure, and a scratch path in the docs says nothing to a reader)."""
    words = shlex.split(words) if isinstance(words, str) else list(words)
    kept, skip_value = [], False
    for word in words:
        if skip_value:
            skip_value = False
        elif word == "--out":
            skip_value = True
        elif word != "--keep-runs" and not word.startswith("--out="):
            kept.append(word)
    return shlex.join(kept)


def resolved_args(meta: dict, key: str) -> dict:
    """A report's ``model_args`` or ``train_args`` (``key``) resolved over this code's defaults: two runs whose
    arguments differ only by naming a default (``{"crop_centre": "class"}`` against ``{}``) trained alike."""
    section = {"model_args": "model", "train_args": "train"}[key]
    try:
        cfg = load_config(AdaptCfg, overrides={"support": Path("."), section: meta.get(key) or {}})
    except ConfigError as exc:  # a field this code no longer has (a run of an older version)
        raise SystemExit(f"cannot merge a run whose {key} {meta.get(key)} this code does not take: {exc}") from None
    return getattr(cfg, section).model_dump()


def read_report(path: Path) -> dict:
    """The report in the results.json ``path`` given to ``--merge``; ends the script with one sentence naming the
    file when it is missing, unreadable or not a whole report (a run killed while it wrote an older version)."""
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        fail(f"--merge {path} cannot be read: {exc.strerror or exc}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"--merge {path} is not a whole results.json ({exc})")
    if not isinstance(report, dict) or not {"meta", "cases", "results"} <= report.keys():
        fail(f"--merge {path} is not a results.json of this benchmark (no meta, cases and results)")
    return report


def merge_reports(reports: list[dict]) -> dict:
    """One report from several made with the same settings on other cases, seeds or methods (run in parallel).

    Cases are listed once each (in first-seen order), results concatenated, shots, seeds and methods united; the
    total time is the longest run's (they ran side by side). A cell (case, K, seed, method) measured by two of the
    runs is refused: its mean would count one draw twice.
    """
    if not reports:
        raise SystemExit("--merge needs at least one results.json")
    meta = dict(reports[0]["meta"])
    for other in reports[1:]:
        # The machine (its device words name the CPU's bfloat16 and the threads) and the code measured too: a cell
        # moves by up to 0.03 with the threads alone.
        for key in ("size", "backbone", "steps", "quick", "device"):
            if other["meta"].get(key) != meta.get(key):
                raise SystemExit(f"cannot merge runs with different {key}: {meta.get(key)} vs {other['meta'].get(key)}")
        for library in ("fsdistill", "torch"):
            mine, theirs = (r.get("versions", {}).get(library) for r in (meta, other["meta"]))
            if mine != theirs:
                raise SystemExit(f"cannot merge runs of different {library} versions: {mine} vs {theirs}")
        for key in ("model_args", "train_args"):
            if resolved_args(other["meta"], key) != resolved_args(meta, key):
                raise SystemExit(f"cannot merge runs with different {key}: {meta.get(key)} vs {other['meta'].get(key)}")
    meta["shots"] = sorted({k for r in reports for k in r["meta"]["shots"]})
    meta["seeds"] = sorted({s for r in reports for s in r["meta"]["seeds"]})
    meta["methods"] = list(dict.fromkeys(m for r in reports for m in r["meta"]["methods"]))
    meta["total_s"] = max(r["meta"]["total_s"] for r in reports)
    meta["command"] = " + ".join(dict.fromkeys(reproducing_command(r["meta"]["command"]) for r in reports))
    cases: dict[str, dict] = {}
    for r in reports:
        for case in r["cases"]:
            first = cases.setdefault(case["name"], case)
            data = [tuple(c.get(key) for key in ("heldout", "pool", "classes")) for c in (first, case)]
            if data[0] != data[1]:
                raise SystemExit(
                    f"cannot merge runs of {case['name']} on other data: {first.get('heldout')} / "
                    f"{case.get('heldout')} held-out images, a pool of {first.get('pool')} / {case.get('pool')} "
                    "(--heldout, or another build)"
                )
    results, seen = [], set()
    for row in (row for r in reports for row in r["results"]):
        cell = (row["case"], row["k"], row["seed"], row.get("method"))
        if cell in seen:
            if "skipped" in row:  # every run that reached a cell it cannot train says so
                continue
            raise SystemExit(
                f"two of the runs measured {row['method']} on {row['case']} K={row['k']} seed {row['seed']}: "
                "merge only one of them"
            )
        seen.add(cell)
        results.append(row)
    # The table compares the methods' means per cell: over the same seeds, or a missing run would unpair them.
    seeds: dict[tuple, dict[str, set]] = {}
    for row in results:
        if "skipped" not in row:
            seeds.setdefault((row["case"], row["k"]), {}).setdefault(row["method"], set()).add(row["seed"])
    for (case, k), by_method in seeds.items():
        if len({frozenset(s) for s in by_method.values()}) > 1:
            measured = "; ".join(f"{m} {sorted(s)}" for m, s in by_method.items())
            raise SystemExit(f"{case} K={k} has methods measured on other seeds ({measured}): merge the missing runs")
    return {"meta": meta, "cases": list(cases.values()), "results": results}


def write_reports(report: dict, args: argparse.Namespace) -> None:
    """results.json, results.md and accuracy.png into ``args.out``; the docs section with ``--write-docs``."""
    write_json(args.out / "results.json", report)
    plot(report, args.out / "accuracy.png")
    write_atomic(args.out / "results.md", markdown(report, "accuracy.png"))
    if args.write_docs:
        # The plot goes in under a temporary name and replaces the docs' one only once the section that describes
        # it is written: a failure in between leaves the old plot beside the old text.
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        png = args.docs.parent / DOCS_PNG
        new_png = png.with_name(f".{png.name}.tmp")
        shutil.copyfile(args.out / "accuracy.png", new_png)
        try:
            section = (
                "## Accuracy vs number of supports\n\n"
                + "Written by `python benchmarks/accuracy.py --write-docs`: do not edit this section by hand.\n\n"
                + markdown(report, DOCS_PNG)
            )
            write_docs_section(args.docs, section)
            new_png.replace(png)
        finally:
            new_png.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark (or merge runs with ``--merge``); returns the report written to ``OUT/results.json``."""
    args = parse_args(argv)
    if args.merge:
        report = merge_reports([read_report(path) for path in args.merge])
        write_reports(report, args)
        print(f"merged {len(args.merge)} runs into {args.out / 'results.json'}", flush=True)
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    flush_denormals()  # as the CLI does, before any torch work: the baselines train under the same setting
    # Support sets, held-out copies and run artifacts (hundreds of MB for a full run): a temporary folder that is
    # removed at the end, even after an error, or OUT/work with --keep-runs.
    work = args.out / "work" if args.keep_runs else Path(tempfile.mkdtemp(prefix="fsdistill-accuracy-"))
    try:
        return _run(args, work, sys.argv[1:] if argv is None else list(argv))
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)


def _cases(args: argparse.Namespace, work: Path, seed: int) -> list[Case]:
    """The cases of one seed (its pool order), built-in ones whose data cannot be had left out."""
    cases = [builtin_case(name, args.data, work / f"seed{seed}", seed, args.heldout) for name in args.cases]
    for spec in args.folder:
        name, folder = spec.split("=", 1)
        folder = Path(folder)
        note = f"{folder}: pool = support/, held out = heldout/, unlabeled = pool/images/ if there"
        unlabeled = folder / "pool" / "images"
        cases.append(
            make_case(
                name, folder / "support", folder / "heldout", work / f"seed{seed}", seed, args.heldout, note, unlabeled
            )
        )
    return [c for c in cases if c is not None]


def _run(args: argparse.Namespace, work: Path, argv: list[str]) -> dict:
    start = time.perf_counter()
    cases_by_seed = {seed: _cases(args, work, seed) for seed in args.seeds}
    cases = cases_by_seed[args.seeds[0]]
    resolved = load_config(
        AdaptCfg,
        overrides={
            "support": Path("."),
            "model": args.model_args,
            "train": {**args.train_args, **({"steps": args.steps} if args.steps is not None else {})},
        },
    )
    meta = {
        "command": reproducing_command(["python", "benchmarks/accuracy.py", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(resolve_device(args.device)),
        "quick": args.quick,
        "shots": args.shots,
        "seeds": args.seeds,
        "steps": resolved.train.steps if resolved.train.steps is not None else "automatic",
        "episodes_per_step": resolved.train.episodes_per_step,
        "size": resolved.model.size,
        "backbone": resolved.model.backbone,
        "methods": args.methods,
        "model_args": args.model_args,
        "train_args": args.train_args,
        "versions": library_versions(),
        "total_s": 0.0,
    }
    report: dict[str, Any] = {
        "meta": meta,
        "cases": [
            {"name": c.name, "pool": len(c.pool), "heldout": c.heldout_count, "classes": c.class_names, "note": c.note}
            for c in cases
        ],
        "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        meta["total_s"] = time.perf_counter() - start
        write_json(args.out / "results.json", report)

    def on_result(row: dict) -> None:
        report["results"].append(row)
        if "skipped" in row:
            print(f"{row['case']} K={row['k']} seed {row['seed']}: skipped, {row['skipped']}", flush=True)
        else:
            print(
                f"{row['case']} K={row['k']} seed {row['seed']} {row['method']}: mIoU {row['miou']:.3f}, "
                f"{low_classes(row)} classes < {LOW_IOU}, {row['steps']} steps, train {row['train_s']:.1f} s, "
                f"{row['infer_ms_per_image']:.0f} ms/img",
                flush=True,
            )
        save()

    for seed, seed_cases in cases_by_seed.items():
        for case in seed_cases:
            run_case(case, args, work / f"seed{seed}", seed, on_result)
    save()
    write_reports(report, args)
    print(f"wrote {args.out / 'results.json'}, results.md, accuracy.png in {meta['total_s']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    run_script(main)
