"""Wall time of ``fsdistill distill`` on 10 supports × 4 classes at 384 px, per training precision.

The folder is the macaque example's 10 supports (``examples/make_examples.py --case macaque``) with its classes
after the first ``--classes`` foreground ones turned into background (default 4 of 5: the goal of issue "Defaults
that generalise" is ≤ 3 min for 10 supports × 4 classes). Each ``--precision`` runs the CLI in a fresh process,
one after the other with the same seed and threads, as a user would: the wall time covers start-up, the feature
cache, training, the per-class check and writing the artifacts. Also recorded from each student artifact: joint and
polish steps, the seconds of training, the arithmetic that ran and why training stopped. Compare versions by running
this script from each checkout back to back on the same idle machine (this VM's speed swung by up to ~45 %
within an hour).

Writes ``results.json`` and ``results.md`` into ``--out``.

    python benchmarks/distill_wall.py                              # auto and float32, 2 threads
    python benchmarks/distill_wall.py --precision bfloat16 --threads 1
    python benchmarks/distill_wall.py --support my_folder --classes 2  # your own folder's first two classes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import run_script, write_results  # noqa: E402
from make_examples import build_examples  # noqa: E402

from fsdistill.checkpoint import load_artifact  # noqa: E402
from fsdistill.runtime import library_versions  # noqa: E402


def keep_first_classes(source: Path, target: Path, classes: int) -> list[str]:
    """Copy the support folder ``source`` (``images/``, ``masks/``, ``classes.txt``) to ``target`` with every class
    after the first ``classes`` foreground ones turned into background; returns the kept class names."""
    names = (source / "classes.txt").read_text().split()
    if not 1 <= classes <= len(names) - 1:
        raise SystemExit(f"--classes {classes}: choose 1 to {len(names) - 1} (the folder's foreground classes)")
    kept = names[: classes + 1]
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for image in sorted((source / "images").iterdir()):
        (target / "images" / image.name).write_bytes(image.read_bytes())
    for mask_path in sorted((source / "masks").iterdir()):
        mask = Image.open(mask_path)
        values = np.array(mask)
        values[(values > classes) & (values != 255)] = 0  # 255 stays "ignore"
        out = Image.fromarray(values.astype(np.uint8), mode="P" if mask.mode == "P" else "L")
        if mask.mode == "P":
            out.putpalette(mask.getpalette())
        out.save(target / "masks" / mask_path.name)
    (target / "classes.txt").write_text("\n".join(kept) + "\n")
    return kept


def run_distill(support: Path, out: Path, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``fsdistill distill`` in a fresh process; its wall time and what its student artifact records."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "fsdistill", "distill", "--support", str(support), "--out", str(out)]
    command += ["--device", "cpu", "--precision", precision, "--seed", str(args.seed), "--size", str(args.size)]
    command += ["--quiet", *(["--steps", str(args.steps)] if args.steps is not None else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - start
    training = load_artifact(out / "student")[1]["training"]
    return {
        "precision_asked": precision,
        "precision": training["precision"],
        "wall_s": round(wall, 1),
        "train_s": training["seconds"],
        "steps": training["steps"],
        "polish_steps": training.get("polish_steps", 0),
        "stop_reason": training["stop_reason"],
    }


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"`fsdistill distill` of {meta['supports']} supports × {meta['classes']} classes at {meta['size']} px, "
        f"{meta['threads']} threads, seed {meta['seed']}; torch {meta['versions'].get('torch', '?')}.",
        "",
        "| precision asked | ran in | joint + polish steps | training | mean per step (joint and polish mixed) | wall |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["runs"]:
        steps = row["steps"] + row["polish_steps"]
        minutes, seconds = divmod(round(row["wall_s"]), 60)
        lines.append(
            f"| {row['precision_asked']} | {row['precision']} | {row['steps']} + {row['polish_steps']} | "
            f"{row['train_s']:.0f} s | {row['train_s'] / steps:.3f} s | {minutes} min {seconds:02d} s |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["auto", "float32"], choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--support", type=Path, default=None, help="a support folder (default: the macaque case)")
    parser.add_argument("--classes", type=int, default=4, help="foreground classes kept (default 4 of 5)")
    parser.add_argument("--steps", type=int, default=None, help="default: the automatic budget")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_wall")
    args = parser.parse_args(argv)
    if args.support is not None and not (args.support / "classes.txt").is_file():
        parser.error(f"--support {args.support} is not a support folder with images/, masks/ and classes.txt")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    source = args.support
    if source is None:
        cases = build_examples(args.data, cases=["macaque"])
        if "macaque" not in cases:
            raise SystemExit("the macaque example could not be built here (see examples/make_examples.py)")
        source = cases["macaque"] / "support"
    with tempfile.TemporaryDirectory(prefix="fsdistill-wall-") as work:
        support = Path(work) / "support"
        kept = keep_first_classes(source, support, args.classes)
        supports = len(list((support / "images").iterdir()))
        runs = []
        for precision in args.precision:
            row = run_distill(support, Path(work) / f"run-{precision}", precision, args)
            print(json.dumps(row), flush=True)
            runs.append(row)
    report = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "supports": supports,
            "classes": len(kept) - 1,
            "size": args.size,
            "threads": args.threads,
            "steps": args.steps,
            "seed": args.seed,
            "versions": library_versions(),
        },
        "runs": runs,
    }
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    run_script(main)
