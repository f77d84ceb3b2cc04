"""What an unlabeled pool costs: ``distill`` on K supports with and without ``--unlabeled`` (a pool of P images).

The K-shot support set and the pool come from one example case's nested support sets (``benchmarks/accuracy.py``):
the pool is the support-pool images after the first K and the case's unlabeled ``pool/`` split, then their
horizontal and vertical mirrors, until it holds ``--pool-size`` images (never a held-out image). Both runs use the same seed
and threads; the ratio of their wall times is the figure of issue "Learn from the unlabeled images" (≤ 2× for 100
images on 10 supports). Also recorded: the labelling seconds, the supports the teacher read per image, the pool
phase's steps, and each student's held-out mIoU (the accuracy benchmark's, run on this one split only).

Writes ``results.json`` and ``results.md`` into ``--out``.

    python benchmarks/pool_cost.py                                  # brain, K 10, 100 pool images
    python benchmarks/pool_cost.py --case nuclei --shots 5 --pool-size 40 --threads 1
    python benchmarks/pool_cost.py --folder my_case --shots 4    # my_case/support, my_case/heldout
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from common import run_script, write_results  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import DistillCfg, load_config  # noqa: E402
from fsdistill.runtime import device_name, flush_denormals, library_versions, resolve_device  # noqa: E402


def build_pool(case: accuracy.Case, k: int, size: int, dest: Path) -> int:
    """Fill ``dest`` with up to ``size`` unlabeled images: the candidates a K-shot run may use, then their mirrors;
    returns how many."""
    sources = [image for _, image, _ in case.pool[k:]] + list(case.unlabeled)
    if not sources:
        raise SystemExit(f"{case.name} at K {k} leaves no image for a pool")
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for view, flip in (("o", lambda p: p), ("h", lambda p: p[:, ::-1]), ("v", lambda p: p[::-1])):
        for i, image in enumerate(sources):
            if written == size:
                return written
            Image.fromarray(flip(np.asarray(Image.open(image).convert("RGB")))).save(dest / f"{view}{i:04d}.png")
            written += 1
    return written


def _distill(
    support: Path, out: Path, pool: Path | None, args: argparse.Namespace, warmup: bool = False
) -> tuple[api.RunResult, float]:
    """One timed ``api.distill``; ``warmup``: two steps and no polish phase, whatever ``--steps`` says."""
    train: dict[str, Any] = {"seed": args.seed}
    if warmup:
        train |= {"steps": 2, "polish_steps": 0}
    elif args.steps is not None:
        train["steps"] = args.steps
    overrides: dict[str, Any] = {
        "support": support,
        "out": out,
        "device": args.device,
        "model": args.model_args,
        "train": train,
    }
    if pool is not None:
        overrides |= {"unlabeled": pool, "unlabeled_max": args.pool_size}
    cfg = load_config(DistillCfg, overrides=overrides)
    start = time.perf_counter()
    result = api.distill(cfg, quiet=True, overwrite=True)
    return result, time.perf_counter() - start


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.folder is not None:  # support/ (the ordered pool of supports), heldout/, pool/images/ if there
        folder = args.folder
        case = accuracy.make_case(
            folder.name, folder / "support", folder / "heldout", work, args.seed, None, str(folder),
            folder / "pool" / "images",
        )  # fmt: skip
    else:
        case = accuracy.builtin_case(args.case, args.data, work, args.seed, None)
    if case is None:
        raise SystemExit(f"{args.case}: its source data is unavailable")
    if args.shots > len(case.pool):
        raise SystemExit(f"{case.name} has {len(case.pool)} support-pool images, fewer than --shots {args.shots}")
    support = accuracy._copy_pairs(case.pool[: args.shots], case.names_file, work / "support")
    pool = work / "pool"
    images = build_pool(case, args.shots, args.pool_size, pool)
    rows: dict[str, Any] = {}
    # An untimed run first: the process's first distill pays for loading the backbone weights and for the
    # kernels' first calls, which would be counted against the run without the pool alone.
    _distill(support, work / "run_warmup", None, args, warmup=True)
    for name, folder in (("without", None), ("with", pool)):
        result, wall = _distill(support, work / f"run_{name}", folder, args)
        held = accuracy._evaluate(case.heldout, result.student_dir, False, args.device)
        rows[name] = {
            "wall_s": round(wall, 1),
            "train_s": round(result.stats["seconds"], 1),
            "steps": result.stats["steps"],
            "polish_steps": result.stats.get("polish_steps"),
            "miou": round(held["miou"], 4),
        }
        if folder is not None:
            info = result.stats["pool"]
            rows[name]["pool"] = {
                key: info.get(key) for key in ("used", "images", "label_seconds", "label_shots", "pool_steps", "reason")
            }
        print(f"{name} the pool: {wall:.0f} s, student mIoU {held['miou']:.3f}", flush=True)
    return {
        "case": case.name,
        "shots": args.shots,
        "pool_images": images,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "device": device_name(resolve_device(args.device)),
        "runs": rows,
        "wall_ratio": round(rows["with"]["wall_s"] / rows["without"]["wall_s"], 2),
    }


def markdown(report: dict[str, Any]) -> str:
    without, with_pool = report["runs"]["without"], report["runs"]["with"]
    pool = with_pool.get("pool", {})
    return "\n".join(
        [
            f"# Pool cost: {report['case']}, K {report['shots']}, {report['pool_images']} pool images",
            "",
            f"{report['device']}, {report['threads']} threads, seed {report['seed']}, {report['date']}.",
            "",
            "| run | wall | steps (+ polish) | labelling | supports per image | pool steps | student mIoU |",
            "|---|---|---|---|---|---|---|",
            f"| without the pool | {without['wall_s']:.0f} s | {without['steps']} (+{without['polish_steps']}) | – | – | – "
            f"| {without['miou']:.3f} |",
            f"| with the pool | {with_pool['wall_s']:.0f} s | {with_pool['steps']} (+{with_pool['polish_steps']}) | "
            f"{pool.get('label_seconds')} s | ≤ {pool.get('label_shots')} (+1 per class they miss) | "
            f"{pool.get('pool_steps')} | {with_pool['miou']:.3f} |",
            "",
            f"With / without: **{report['wall_ratio']:.2f}×** the wall time.",
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="brain", choices=accuracy.BUILTIN_CASES)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=100)
    parser.add_argument(
        "--folder", type=Path, default=None, help="another case instead: DIR/support, DIR/heldout (and DIR/pool/images)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps of both runs (default: automatic)")
    parser.add_argument("--model-args", type=json.loads, default={}, help="ModelCfg overrides as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data", help="where the cases are built")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pool_cost")
    args = parser.parse_args(argv)
    if args.shots < 2 or args.pool_size < 1:
        parser.error("--shots must be at least 2 (the pool needs a teacher checked on the supports), --pool-size ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flush_denormals()  # as the CLI does, before any torch work (distill's timings are the CLI's)
    with tempfile.TemporaryDirectory(prefix="fsdistill_pool_cost_") as tmp:
        report = run(args, Path(tmp))
    report |= {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "versions": library_versions()}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    run_script(main)
