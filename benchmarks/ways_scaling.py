"""Student / bare backbone latency against the number of classes, for several heads, paired in one run.

For each ways value N and each variant (a decoder, a ConvDist width and optionally the refiner,
``decoder:width[:refiner]`` with refiner 1 or 0; default the config's: on for light and shared) a random-weight
N-class student is built (efficientnet-lite0 with its embedded weights, 384 px) and prepared as predict runs it
(batch norms folded, channels-last on the CPU). Then, round by round, the bare backbone and every variant's
student each run once on the same query batch, so background load hits them alike; the ratio student /
backbone is taken per round and its median reported, with median milliseconds. Latency does not depend on the
weights.

    python benchmarks/ways_scaling.py [--ways 1,5,10,20,50] [--variants light:8,shared:8] [--rounds 15]
        [--threads N]

Writes ``benchmarks/results/ways_scaling/results.json`` and ``results.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # common.py, also when this file is loaded by path

from common import run_script, write_json  # noqa: E402

from fsdistill.config import ModelCfg  # noqa: E402
from fsdistill.models.build import build_student, build_teacher, for_inference  # noqa: E402
from fsdistill.models.decoder import DECODERS  # noqa: E402
from fsdistill.runtime import (  # noqa: E402
    inference_memory_format,
    library_versions,
    retain_freed_memory,
    write_atomic,
)


def _student(
    decoder: str, ways: int, width: int, refiner: bool | None, size: int, backbone: torch.nn.Module | None
) -> torch.nn.Module:
    """A random N-class student as predict runs it (sharing ``backbone`` when given: one backbone for all);
    ``refiner`` None: the config's default for the decoder."""
    cfg = ModelCfg(decoder=decoder, size=size, **({} if refiner is None else {"refiner": refiner}))
    teacher = build_teacher(cfg, ways, pretrained=backbone is None)
    if backbone is not None:
        teacher.backbone = backbone
    student = build_student(teacher, width, cfg.refiner).eval()
    return student


def _checked(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[int], list[tuple[str, int, bool | None]], list[str]]:
    """The ways (each once, in the order given), the variants (decoder, width, refiner) and their names, or exit 2
    with argparse's one-line error for a value the models or the timing cannot use."""
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--warmup", args.warmup, 0),
        ("--rounds", args.rounds, 1),
    ):
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.size < 64 or args.size % 32:
        parser.error(f"--size must be a multiple of 32 of at least 64, got {args.size}")
    try:
        ways = list(dict.fromkeys(int(w) for w in args.ways.split(",")))
    except ValueError:
        parser.error(f"--ways must be comma-separated whole numbers, got {args.ways!r}")
    if min(ways) < 1:
        parser.error(f"--ways must be at least 1, got {args.ways!r}")
    fields = list(dict.fromkeys(args.variants.split(",")))
    variants = []
    for field in fields:
        parts = field.split(":")
        if len(parts) not in (2, 3) or parts[0] not in DECODERS or not all(p.isdigit() for p in parts[1:]):
            parser.error(
                f"--variants entry {field!r} is not decoder:student_width[:refiner] with a decoder of "
                f"{', '.join(sorted(DECODERS))} and whole numbers"
            )
        variants.append((parts[0], int(parts[1]), bool(int(parts[2])) if len(parts) > 2 else None))
    return ways, variants, fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ways", default="1,5,10,20,50", help="comma-separated numbers of classes")
    parser.add_argument(
        "--variants",
        default="light:8,shared:8",
        help="comma-separated decoder:student_width[:refiner] (ModelCfg fields; refiner 1 or 0)",
    )
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ways_scaling")
    args = parser.parse_args(argv)
    ways, variants, names = _checked(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # as predict: freed memory kept, so the timed runs are warm
    device = torch.device("cpu")
    layout = inference_memory_format(device, "student")
    torch.manual_seed(0)
    query = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
    query = query.contiguous(memory_format=layout)
    base = _student(variants[0][0], 1, variants[0][1], variants[0][2], args.size, None)
    backbone = for_inference(copy.deepcopy(base.backbone), device, "student")
    results: list[dict] = []
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall0 = time.perf_counter()
    for n in ways:
        students = {
            name: for_inference(copy.deepcopy(_student(d, n, w, r, args.size, base.backbone)), device, "student")
            for name, (d, w, r) in zip(names, variants)
        }
        fns = {"backbone": lambda: backbone.encode(query)}
        fns.update({d: (lambda s=s: s.predict(query)) for d, s in students.items()})
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for _ in range(args.warmup):
                for fn in fns.values():
                    fn()
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1000.0)
        for name, (d, w, _) in zip(names, variants):
            ratios = [s / b for s, b in zip(times[name], times["backbone"])]
            results.append(
                {
                    "variant": name,
                    "decoder": d,
                    "student_width": w,
                    "refiner": students[name].refiner is not None,
                    "ways": n,
                    "student_ms": round(statistics.median(times[name]), 2),
                    "backbone_ms": round(statistics.median(times["backbone"]), 2),
                    "student_over_backbone": round(statistics.median(ratios), 3),
                    "params": sum(p.numel() for p in students[name].parameters()),
                }
            )
        del students
    data = {
        "backbone": base.backbone.spec.name,
        "size": args.size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "memory_format": "channels_last" if layout == torch.channels_last else "contiguous",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seconds": round(time.perf_counter() - wall0, 1),
        "versions": library_versions(),
        "rows": results,
    }
    write_json(args.out / "results.json", data)
    lines = [
        f"# Student / bare backbone by number of classes: {data['backbone']} at {args.size} px, batch "
        f"{args.batch_size}, {data['threads']} threads",
        "",
        f"Median over {args.rounds} rounds of paired runs (backbone, then each variant's student); load average "
        f"{data['load_average_start']} → {data['load_average_end']}.",
        "",
        "| ways | " + " | ".join(f"{v} student / backbone (ms)" for v in names) + " | backbone ms |",
        "|---:|" + "---:|" * (len(names) + 1),
    ]
    for n in ways:
        cells = [r for r in results if r["ways"] == n]
        shown = " | ".join(f"{r['student_over_backbone']:.2f}× ({r['student_ms']:.1f})" for r in cells)
        lines.append(f"| {n} | {shown} | {cells[0]['backbone_ms']:.1f} |")
    write_atomic(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_script(main)
