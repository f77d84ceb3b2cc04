"""Which images to label next: ``suggest``'s top images against random ones, in a simulated labelling loop.

For each example case, seed and K (the nested K-shot support sets of ``benchmarks/accuracy.py``): distill on the K
supports, rank the candidates with ``api.suggest`` (the support-pool images after the first K and the case's
unlabeled ``pool/`` split, never a held-out image), then "label" the top ``--add`` suggested images, or ``--add``
candidates drawn at random with the seed, with their true masks (the simulated labeller), distill each grown
folder from scratch with the same seed and evaluate the three students on the held-out images.

Writes ``results.json`` and ``results.md`` (per cell: the K-shot student, + suggested, + random; then the mean gain
of suggested over random and how often suggested won) into ``--out``.

    python benchmarks/suggest_loop.py                          # brain, macaque, nuclei; K 5; seeds 0 1; add 5
    python benchmarks/suggest_loop.py --cases brain --shots 2 --seeds 0 --add 3 --steps 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from common import run_script, write_json  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import DistillCfg, load_config  # noqa: E402
from fsdistill.runtime import device_name, library_versions, resolve_device, write_atomic  # noqa: E402

VARIANTS = ("base", "suggested", "random")


def candidates(case: accuracy.Case, k: int) -> list[tuple[str, Path, Path]]:
    """(key, image, true mask) of every image a K-shot run may ask to have labelled: the support-pool images after
    the first K and the case's unlabeled split (its masks beside its images, in ``masks/``)."""
    found = list(case.pool[k:])
    for image in case.unlabeled:
        mask = image.parent.parent / "masks" / image.name
        if mask.is_file():
            found.append((f"pool__{image.stem}", image, mask))
    return found


def _distill(support: Path, out: Path, seed: int, args: argparse.Namespace) -> Path:
    train = {**args.train_args, "seed": seed, **({"steps": args.steps} if args.steps is not None else {})}
    cfg = load_config(
        DistillCfg,
        overrides={"support": support, "out": out, "train": train, "model": args.model_args, "device": args.device},
    )
    return api.distill(cfg, quiet=True, overwrite=True).run_dir


def _miou(case: accuracy.Case, run: Path, device: str) -> dict[str, Any]:
    ev = api.evaluate(case.heldout, model=run, device=device, workers=0)
    return {"miou": ev.miou, "iou": ev.iou}


def run_cell(case: accuracy.Case, k: int, seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One case, K and seed: the three students' held-out mIoU and which images were added."""
    pool = candidates(case, k)
    if len(pool) < args.add:
        return {"case": case.name, "k": k, "seed": seed, "skipped": f"only {len(pool)} candidates"}
    cell = work / case.name / f"k{k}_seed{seed}"
    support = accuracy._copy_pairs(case.pool[:k], case.names_file, cell / "support")
    reason = accuracy.unusable_supports(case, support)
    if reason is not None:  # a draw that misses a class: a skip row, not a traceback losing the other cells
        shutil.rmtree(cell, ignore_errors=True)
        return {"case": case.name, "k": k, "seed": seed, "skipped": reason}
    base = _distill(support, cell / "run_base", seed, args)
    shown = cell / "candidates"
    shutil.rmtree(shown, ignore_errors=True)
    shown.mkdir(parents=True)
    by_name = {}
    for key, image, mask in pool:
        name = f"{key.replace('/', '__')}{image.suffix}"
        shutil.copyfile(image, shown / name)
        by_name[name] = (key, image, mask)
    start = time.perf_counter()
    ranking = api.suggest(shown, model=base, top=args.add, device=args.device, workers=0).ranking
    suggest_s = time.perf_counter() - start
    picked = {
        "suggested": [by_name[Path(s.image).name] for s in ranking if s.duplicate_of is None][: args.add],
        "random": random.Random(seed).sample(pool, args.add),
    }
    row: dict[str, Any] = {"case": case.name, "k": k, "seed": seed, "candidates": len(pool), "suggest_s": suggest_s}
    row["base"] = _miou(case, base, args.device)
    for variant, added in picked.items():
        grown = accuracy._copy_pairs([*case.pool[:k], *added], case.names_file, cell / f"support_{variant}")
        run = _distill(grown, cell / f"run_{variant}", seed, args)
        row[variant] = {**_miou(case, run, args.device), "added": [key for key, _, _ in added]}
    if not args.keep_runs:
        shutil.rmtree(cell, ignore_errors=True)
    print(
        f"{case.name} K={k} seed {seed}: base {row['base']['miou']:.3f}, +{args.add} suggested "
        f"{row['suggested']['miou']:.3f}, +{args.add} random {row['random']['miou']:.3f}",
        flush=True,
    )
    return row


def markdown(report: dict[str, Any]) -> str:
    """Per-cell table, then per case the mean gain of suggested over random and the share of cells it won."""
    meta, rows = report["meta"], [r for r in report["results"] if "skipped" not in r]
    add = meta["add"]
    lines = [
        f"Device: {meta['device']}; seeds {', '.join(map(str, meta['seeds']))}; {add} images added per loop; "
        f"fsdistill {meta['versions']['fsdistill']}.",
        "",
        f"| case | K | seed | candidates | K-shot student | + {add} suggested | + {add} random |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['k']} | {r['seed']} | {r['candidates']} | {r['base']['miou']:.3f} | "
            f"{r['suggested']['miou']:.3f} | {r['random']['miou']:.3f} |"
        )
    lines += ["", "| case | cells | suggested − random (mean) | suggested won |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == name]
        gains = [r["suggested"]["miou"] - r["random"]["miou"] for r in mine]
        won = sum(g > 0 for g in gains)
        lines.append(f"| {name} | {len(mine)} | {sum(gains) / len(gains):+.3f} | {won} of {len(mine)} |")
    skipped = [r for r in report["results"] if "skipped" in r]
    lines += [f"- {r['case']} K={r['k']} seed {r['seed']}: skipped, {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(accuracy.BUILTIN_CASES), choices=accuracy.BUILTIN_CASES)
    parser.add_argument(
        "--folder", action="append", default=[], metavar="NAME=DIR", help="another case (see accuracy.py)"
    )
    parser.add_argument("--shots", nargs="+", type=int, default=[5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--add", type=int, default=5, help="images labelled per loop (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="distill steps (default: the automatic budget)")
    parser.add_argument("--heldout", type=int, default=None, help="at most this many held-out images per case")
    parser.add_argument("--model-args", type=json.loads, default={})
    parser.add_argument("--train-args", type=json.loads, default={})
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suggest_loop")
    parser.add_argument("--keep-runs", action="store_true", help="keep support folders and runs under OUT/work")
    args = parser.parse_args(argv)
    if args.add < 1:
        parser.error("--add must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.out / "work" if args.keep_runs else Path(tempfile.mkdtemp(prefix="fsdistill-suggest-loop-"))
    start = time.perf_counter()
    results = []
    try:
        for seed in args.seeds:
            cases = [accuracy.builtin_case(n, args.data, work / f"seed{seed}", seed, args.heldout) for n in args.cases]
            for spec in args.folder:
                name, folder = spec.split("=", 1)
                folder = Path(folder)
                cases.append(
                    accuracy.make_case(
                        name,
                        folder / "support",
                        folder / "heldout",
                        work / f"seed{seed}",
                        seed,
                        args.heldout,
                        f"{folder}",
                        folder / "pool" / "images",
                    )  # fmt: skip
                )
            for case in (c for c in cases if c is not None):
                for k in args.shots:
                    results.append(run_cell(case, k, seed, work, args))
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": device_name(resolve_device(args.device)),
            "seeds": args.seeds,
            "shots": args.shots,
            "add": args.add,
            "steps": args.steps,
            "total_s": time.perf_counter() - start,
            "versions": library_versions(),
        },
        "results": results,
    }
    write_json(args.out / "results.json", report)
    write_atomic(args.out / "results.md", markdown(report))
    print(f"wrote {args.out / 'results.md'}", flush=True)
    return report


if __name__ == "__main__":
    run_script(main)
