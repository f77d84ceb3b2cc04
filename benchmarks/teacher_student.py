"""Teacher vs student vs training-free baselines on the real example data, in one run.

For each example case (nuclei: DSB2018 fluorescence, binary; brain: MNI152 grey/white matter, 3 classes; macaque:
five structures of the INIA19 macaque brain, four of them small) and the same support set, measures held-out mIoU (dataset-level IoU at original resolution) of:
  1. a training-free prototype baseline (masked average pooling, cosine similarity),
  2. the untuned teacher (``adapt --steps 0``),
  3. the adapted teacher (TransferFSS, ``adapt``),
  4. the DistillFSS student and its jointly trained teacher (``distill``),
with training wall time and per-image inference time. Writes JSON and a markdown table.

    python benchmarks/teacher_student.py [--cases nuclei brain macaque] [--steps N] [--out benchmarks/results/teacher_student]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # baselines.py, also when this file is loaded by path

from baselines import PrototypeBaseline  # noqa: E402
from common import run_script, write_json  # noqa: E402
from make_examples import build_examples  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import AdaptCfg, DistillCfg, load_config  # noqa: E402
from fsdistill.data.discover import discover  # noqa: E402
from fsdistill.data.support_tensors import load_support_tensors  # noqa: E402
from fsdistill.data.transforms import normalize, resize_image  # noqa: E402
from fsdistill.infer.postprocess import logits_to_mask  # noqa: E402
from fsdistill.metrics import ConfusionMatrix  # noqa: E402
from fsdistill.models.build import build_teacher  # noqa: E402
from fsdistill.runtime import device_name, library_versions, resolve_device, write_atomic  # noqa: E402

METHODS = ("prototype", "untuned", "adapt", "distill")


def prototype_miou(support_dir: Path, heldout_dir: Path, model_args: dict, device: torch.device) -> tuple[float, float]:
    """Held-out mIoU and seconds per image of :class:`PrototypeBaseline` on the backbone of ``model_args`` (the
    students' own ``ModelCfg`` overrides, so ``--model-args '{"backbone": ...}'`` reaches it too)."""
    index, held = discover(support_dir), discover(heldout_dir)
    model = load_config(AdaptCfg, overrides={"support": support_dir, "model": model_args}).model
    backbone, size = build_teacher(model, 1).backbone.to(device), model.size
    baseline = PrototypeBaseline(backbone, len(index.class_names) - 1).fit(load_support_tensors(index, size), device)
    matrix = ConfusionMatrix(len(index.class_names))
    start = time.perf_counter()
    for i in range(len(held)):
        image, mask = held.load_pair(i)
        batch = normalize(
            torch.from_numpy(resize_image(image, size))[None].to(device), backbone.spec.mean, backbone.spec.std
        )
        matrix.update(mask, logits_to_mask(baseline.logits(batch)[0], *mask.shape))
    return matrix.miou(), (time.perf_counter() - start) / len(held)


def run_case(
    name: str,
    case_dir: Path,
    out: Path,
    steps: int | None,
    size: int,
    device_arg: str,
    model_args: dict,
    train_args: dict,
    methods: list[str],
) -> dict:
    support, heldout = case_dir / "support", case_dir / "heldout"
    device = resolve_device(device_arg)
    result: dict = {"case": name, "supports": len(discover(support)), "heldout": len(discover(heldout))}
    if "prototype" in methods:
        miou, per_image = prototype_miou(support, heldout, {"size": size, **model_args}, device)
        result["prototype"] = {"miou": miou, "infer_s_per_image": per_image}

    def evaluate(model: Path, teacher: bool) -> dict:
        ev = api.evaluate(heldout, model=model, teacher=teacher, device=device_arg, workers=0)
        return {"miou": ev.miou, "iou": ev.iou, "infer_s_per_image": ev.seconds / ev.images}

    train = {**train_args, **({"steps": steps} if steps is not None else {})}
    common = {"model": {"size": size, **model_args}, "device": device_arg}
    # overwrite: a rerun of the benchmark replaces the runs of the previous one under the same --out.
    if "untuned" in methods:
        cfg = load_config(
            AdaptCfg, overrides={"support": support, "out": out / name / "untuned", "train": {"steps": 0}, **common}
        )
        result["untuned_teacher"] = evaluate(api.adapt(cfg, quiet=True, overwrite=True).teacher_dir, True)
    if "adapt" in methods:
        cfg = load_config(
            AdaptCfg, overrides={"support": support, "out": out / name / "adapt", "train": train, **common}
        )
        adapted = api.adapt(cfg, quiet=True, overwrite=True)
        result["adapted_teacher"] = {
            **evaluate(adapted.teacher_dir, True),
            "train_s": adapted.stats["seconds"],
            "steps": adapted.stats["steps"],
        }
    if "distill" in methods:
        cfg = load_config(
            DistillCfg, overrides={"support": support, "out": out / name / "distill", "train": train, **common}
        )
        distilled = api.distill(cfg, quiet=True, overwrite=True)
        result["distill_teacher"] = {**evaluate(distilled.teacher_dir, True), "train_s": distilled.stats["seconds"]}
        result["student"] = {
            **evaluate(distilled.student_dir, False),
            "train_s": distilled.stats["seconds"],
            "steps": distilled.stats["steps"],
        }
        result["student_over_teacher"] = result["student"]["miou"] / max(result["distill_teacher"]["miou"], 1e-9)
    return result


def _cell(r: dict, key: str, train: bool = False) -> str:
    if key not in r:
        return "–"
    text = f"{r[key]['miou']:.3f}"
    return f"{text} ({r[key]['train_s']:.0f} s)" if train else text


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Device: {meta['device']}; input {meta['size']} px; steps {meta['steps']}; model args {meta['model_args'] or 'default'}; "
        f"train args {meta['train_args'] or 'default'}; seed 0; fsdistill {meta['versions']['fsdistill']}, torch {meta['versions']['torch']}.",
        "",
        "| case | supports / held-out | prototype | untuned teacher | adapted teacher (train) | distill: teacher | distill: student (train) | student / teacher | student ms/img | teacher ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r['student_over_teacher']:.2f}" if "student_over_teacher" in r else "–"
        s_ms = f"{1000 * r['student']['infer_s_per_image']:.0f}" if "student" in r else "–"
        t_key = "distill_teacher" if "distill_teacher" in r else "adapted_teacher"
        t_ms = f"{1000 * r[t_key]['infer_s_per_image']:.0f}" if t_key in r else "–"
        lines.append(
            f"| {r['case']} | {r['supports']} / {r['heldout']} | {_cell(r, 'prototype')} | {_cell(r, 'untuned_teacher')} "
            f"| {_cell(r, 'adapted_teacher', True)} | {_cell(r, 'distill_teacher')} | {_cell(r, 'student', True)} | {ratio} | {s_ms} | {t_ms} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases", nargs="+", default=["nuclei", "brain", "macaque"], choices=["nuclei", "brain", "macaque"]
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: fsdistill's default)")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--train-args", type=json.loads, default={}, help="TrainCfg overrides as JSON, e.g. '{\"augment\": false}'"
    )
    parser.add_argument(
        "--model-args", type=json.loads, default={}, help="ModelCfg overrides as JSON, e.g. '{\"student_width\": 32}'"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_student")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:  # before any case is built or model trained
        parser.error(f"--steps must be at least 1, got {args.steps}")
    torch.manual_seed(0)
    cases = build_examples(args.data, cases=args.cases)
    results = []
    for name in args.cases:
        start = time.perf_counter()
        results.append(
            run_case(
                name,
                cases[name],
                args.out / "runs",
                args.steps,
                args.size,
                args.device,
                args.model_args,
                args.train_args,
                args.methods,
            )
        )
        print(
            f"{name}: {json.dumps(results[-1], default=float)[:400]} ({time.perf_counter() - start:.0f} s)", flush=True
        )
    meta = {
        "device": device_name(resolve_device(args.device)),
        "size": args.size,
        "steps": args.steps if args.steps is not None else "default",
        "model_args": args.model_args,
        "train_args": args.train_args,
        "versions": library_versions(),
        "command": "python benchmarks/teacher_student.py " + " ".join(sys.argv[1:]),
    }
    write_json(args.out / "results.json", {"meta": meta, "results": results})
    write_atomic(args.out / "results.md", markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    run_script(main)
