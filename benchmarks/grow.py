"""``distill --init``: grow a trained run's folder (more classes, more images) vs training it from scratch.

On an example case, for each seed: distill a run on the first ``--base`` classes (the others mapped to background)
of the first ``--base-images`` support images, then continue it with ``--init`` on the first ``--base + --add``
classes of all support images, and distill that same grown folder from scratch. Reports held-out IoU per class of
both grown students (old classes and new ones), their steps and wall times.

    python benchmarks/grow.py [--case macaque] [--base 3] [--add 1] [--seeds 0 1] [--out benchmarks/results/grow]
    python benchmarks/grow.py --case nuclei --base 1 --add 0 --base-images 4   # more images, no new class
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import run_script, write_json  # noqa: E402
from make_examples import CASE_CLASSES, CASES, CHECK_CASES, build_examples  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.checkpoint import is_artifact  # noqa: E402
from fsdistill.config import DistillCfg, load_config  # noqa: E402
from fsdistill.data.discover import discover  # noqa: E402
from fsdistill.runtime import library_versions, write_atomic  # noqa: E402


def subset_folder(src: Path, dest: Path, classes: int, images: int | None = None) -> Path:
    """Copy paired folder ``src`` keeping its first ``classes`` foreground classes (the others → background) and
    its first ``images`` images (None = all)."""
    index = discover(src)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    for i, sample in enumerate(index.samples[:images]):
        mask = index.load_pair(i)[1].copy()
        mask[(mask > classes) & (mask != 255)] = 0
        shutil.copyfile(sample.image_path, dest / "images" / sample.image_path.name)
        Image.fromarray(mask).save(dest / "masks" / f"{sample.image_path.stem}.png")
    (dest / "classes.txt").write_text("\n".join(index.class_names[: classes + 1]) + "\n")
    return dest


def distill(support: Path, out: Path, seed: int, init: Path | None = None) -> tuple[Path, float, int]:
    overrides = {"support": support, "out": out, "device": "cpu", "train": {"seed": seed}, "init": init}
    cfg = load_config(DistillCfg, None, overrides)
    start = time.perf_counter()
    result = api.distill(cfg, quiet=True, overwrite=True)
    return result.run_dir, time.perf_counter() - start, int(result.stats["steps"])


def _same_base(run: Path, support: Path) -> bool:
    """Whether ``run`` is a finished base run of this very support folder (its classes and images, by the folder's
    fingerprint): a base of other classes, reused, counted its classes as the grown run's old ones."""
    if not (is_artifact(run / "teacher") and is_artifact(run / "student")):
        return False
    recorded = json.loads((run / "student" / "config.json").read_text())
    if recorded["support"].get("fingerprint") != discover(support).fingerprint():
        raise SystemExit(
            f"--reuse-base: {run} was distilled from another support folder (other classes or images than "
            f"--base/--base-images give now); drop --reuse-base or use another --out."
        )
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="macaque", choices=[*CASES, *CHECK_CASES])
    parser.add_argument("--base", type=int, default=3, help="classes of the first run")
    parser.add_argument("--add", type=int, default=1, help="classes added for the continued run")
    parser.add_argument("--base-images", type=int, default=None, help="support images of the first run (all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grow")
    parser.add_argument(
        "--reuse-base", action="store_true", help="keep a finished base run of an earlier call (same --out, seed)"
    )
    args = parser.parse_args(argv)
    # Checked before any case is built or run is distilled: classes beyond the case's would otherwise run the whole
    # benchmark on fewer classes than asked (the masks simply hold no such class).
    foreground = len(CASE_CLASSES[args.case]) - 1
    if not 1 <= args.base <= foreground:
        parser.error(f"--base {args.base}: choose 1 to {foreground} ({args.case}'s foreground classes)")
    if not 0 <= args.add <= foreground - args.base:
        parser.error(
            f"--add {args.add}: choose 0 to {foreground - args.base} ({args.case} has {foreground} foreground "
            f"classes, --base takes {args.base})"
        )
    if args.base_images is not None and args.base_images < 1:
        parser.error(f"--base-images must be at least 1, got {args.base_images}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    case = build_examples(args.data, cases=[args.case])[args.case]
    work = args.out / "work"
    grown_classes = args.base + args.add
    base = subset_folder(case / "support", work / "base_support", args.base, args.base_images)
    grown = subset_folder(case / "support", work / "grown_support", grown_classes)
    heldout = subset_folder(case / "heldout", work / "grown_heldout", grown_classes)
    rows = []
    for seed in args.seeds:
        base_run = work / f"base_{seed}"
        if args.reuse_base and _same_base(base_run, base):
            row = {"seed": seed, "base_reused": True}
        else:
            base_run, base_s, base_steps = distill(base, base_run, seed)
            row = {"seed": seed, "base_s": base_s, "base_steps": base_steps}
        for name, init in (("init", base_run), ("scratch", None)):
            run, seconds, steps = distill(grown, work / f"{name}_{seed}", seed, init)
            result = api.evaluate(heldout, model=run, device="cpu", workers=0)
            row[name] = {"seconds": seconds, "steps": steps, "miou": result.miou, "iou": result.iou}
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = discover(grown).class_names[1:]
    old, new = names[: args.base], names[args.base :]
    summary = {
        "case": args.case,
        "old_classes": old,
        "new_classes": new,
        "rows": rows,
        "mean": {
            name: {
                "miou": float(np.mean([r[name]["miou"] for r in rows])),
                "seconds": float(np.mean([r[name]["seconds"] for r in rows])),
                "steps": float(np.mean([r[name]["steps"] for r in rows])),
                "old_iou": float(np.mean([r[name]["iou"][c] for r in rows for c in old])),
                "new_iou": float(np.mean([r[name]["iou"][c] for r in rows for c in new])) if new else None,
            }
            for name in ("init", "scratch")
        },
        "versions": library_versions(),
    }
    write_json(args.out / "grow.json", summary)
    m = summary["mean"]
    images = "all" if args.base_images is None else args.base_images
    lines = [
        f"| {args.case}: {args.base} classes ({images} support images) → {grown_classes} (all images), seeds "
        f"{args.seeds} | --init | from scratch |",
        "|---|---|---|",
        f"| old classes ({', '.join(old)}), mean IoU | {m['init']['old_iou']:.3f} | {m['scratch']['old_iou']:.3f} |",
    ]
    if new:
        lines.append(
            f"| new classes ({', '.join(new)}), mean IoU | {m['init']['new_iou']:.3f} | {m['scratch']['new_iou']:.3f} |"
        )
    lines += [
        f"| mIoU | {m['init']['miou']:.3f} | {m['scratch']['miou']:.3f} |",
        f"| steps | {m['init']['steps']:.0f} | {m['scratch']['steps']:.0f} |",
        f"| distill wall time | {m['init']['seconds']:.0f} s | {m['scratch']['seconds']:.0f} s "
        f"(--init: {m['init']['seconds'] / m['scratch']['seconds']:.0%}) |",
    ]
    table = "\n".join(lines) + "\n"
    write_atomic(args.out / "grow.md", table)
    print(table)
    return summary


if __name__ == "__main__":
    run_script(main)
