"""Student latency on the CPU: onnxruntime (the exported ``.onnx``) against PyTorch, same weights, same threads.

Exports the student with ``fsdistill.api.export`` (which also checks parity), then times the model forward alone
(PyTorch in the memory layout and process set-up predict uses)
on pre-normalised inputs (no decoding, resizing or upsampling: those are shared by both ``predict`` backends) at
each batch size, alternating the two runtimes in blocks of runs so background load hits both alike. Reports median and
p95 milliseconds per batch and per image, and the PyTorch / onnxruntime speed-up.

    python benchmarks/onnx_latency.py [--model RUN_DIR] [--batch-sizes 1,4] [--runs 20] [--threads N]

Without ``--model`` a student is built with the default configuration (efficientnet-lite0 with its embedded
ImageNet weights, 384 px, one class) and random decoder weights: latency does not depend on the weights.
Writes ``benchmarks/results/onnx_latency/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # common.py, also when this file is loaded by path

from common import random_student, run_script, write_json  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import ModelCfg  # noqa: E402
from fsdistill.data.transforms import normalize  # noqa: E402
from fsdistill.infer.onnx import OnnxRunner  # noqa: E402
from fsdistill.models.build import for_inference, load_model  # noqa: E402
from fsdistill.runtime import (  # noqa: E402
    inference_memory_format,
    library_versions,
    retain_freed_memory,
    write_atomic,
)

BLOCK = 5  # timed runs of one runtime in a row


def _stats(ms: list[float], batch: int) -> dict[str, float]:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return {"p50_ms": median, "p95_ms": p95, "p50_ms_per_image": median / batch, "runs": len(ms)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="run or student artifact (default: random student)")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_latency")
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated whole numbers, got {args.batch_sizes!r}")
    if not batch_sizes or min(batch_sizes) < 1:
        parser.error(f"--batch-sizes must be at least 1, got {args.batch_sizes!r}")
    for flag, value, low in (("--runs", args.runs, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.model is not None and not args.model.exists():  # before a minute of export
        parser.error(f"--model {args.model} does not exist")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    retain_freed_memory()  # as the fsdistill commands do before they run a model
    work = Path(tempfile.mkdtemp(prefix="fsd-onnx-latency-"))
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        model_dir = args.model or random_student(work / "student", ModelCfg())
        export = api.export(model_dir, work / "student.onnx", threads=threads, seed=args.seed)
        loaded = load_model(model_dir, kind="student")
        # PyTorch as predict runs it (for_inference: batch norms folded, channels-last on the CPU), in a process
        # that keeps freed memory as predict's does (retain_freed_memory above; both runtimes gain from it).
        layout = inference_memory_format(torch.device("cpu"), "student")
        model = for_inference(loaded.model.to("cpu").eval(), torch.device("cpu"), "student")
        runner = OnnxRunner(export.path, device="cpu", threads=threads)
        rng = np.random.default_rng(args.seed)
        rows = []
        for batch in batch_sizes:
            images = torch.from_numpy(rng.integers(0, 256, (batch, 3, loaded.size, loaded.size), dtype=np.uint8))
            x = normalize(images, loaded.mean, loaded.std)
            x_np = np.ascontiguousarray(x.numpy())
            x = x.contiguous(memory_format=layout)
            timings: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
            calls = {
                "pytorch": lambda x=x: model(x),
                "onnxruntime": lambda x_np=x_np: runner.run(x_np),
            }
            with torch.inference_mode():
                for call in calls.values():
                    for _ in range(args.warmup):
                        call()
                # Blocks of BLOCK runs, the runtimes alternating block by block so background load hits both
                # alike; the first run of a block is not recorded: both runtimes' thread pools spin for a while
                # after a call and would slow the other runtime's next call.
                while min(len(t) for t in timings.values()) < args.runs:
                    for name, call in calls.items():
                        for i in range(BLOCK + 1):
                            start = time.perf_counter()
                            call()
                            if i:
                                timings[name].append(1000 * (time.perf_counter() - start))
                # Whole blocks run; the first --runs of each runtime are kept, the count the table states.
                timings = {name: times[: args.runs] for name, times in timings.items()}
            row = {"batch_size": batch}
            for name, ms in timings.items():
                row[name] = _stats(ms, batch)
            row["speedup"] = row["pytorch"]["p50_ms"] / row["onnxruntime"]["p50_ms"]
            rows.append(row)
        report = {
            "device": f"cpu ({os.cpu_count()} cores visible, {threads} threads for both runtimes)",
            "model": str(args.model) if args.model else "random-init student (default config, 1 class)",
            "backbone": loaded.config["backbone"]["name"],
            "size": loaded.size,
            "model_cfg": loaded.model_cfg.model_dump(mode="json"),
            "onnx": {
                "file_mb": round(export.size_bytes / 2**20, 2),
                "dynamic_hw": export.dynamic_hw,
                "max_abs_diff": export.max_abs_diff,
                "argmax_agreement": export.agreement,
                "export_seconds": round(export.seconds, 2),
            },
            "rows": rows,
            "load_average": {"before": load_before, "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
            "versions": {**library_versions(), "onnxruntime": __import__("onnxruntime").__version__},
        }
        lines = [
            f"Student forward on the CPU, {report['backbone']} at {report['size']} px, {threads} thread(s); "
            f"median (p95) of {args.runs} runs, load average before: "
            f"{'n/a' if load_before is None else f'{load_before:.2f}'}.",
            "",
            "| batch | PyTorch ms/batch | onnxruntime ms/batch | PyTorch ms/img | onnxruntime ms/img | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            pt, ox = row["pytorch"], row["onnxruntime"]
            lines.append(
                f"| {row['batch_size']} | {pt['p50_ms']:.1f} ({pt['p95_ms']:.1f}) "
                f"| {ox['p50_ms']:.1f} ({ox['p95_ms']:.1f}) "
                f"| {pt['p50_ms_per_image']:.1f} | {ox['p50_ms_per_image']:.1f} | {row['speedup']:.2f}x |"
            )
        onnx_info = report["onnx"]
        lines += [
            "",
            f"Export: {onnx_info['file_mb']} MB, dynamic height/width: {onnx_info['dynamic_hw']}, max |logit diff| "
            f"{onnx_info['max_abs_diff']:.2e}, argmax agreement {onnx_info['argmax_agreement']:.4%}.",
        ]
        write_json(args.out / "results.json", report)
        write_atomic(args.out / "results.md", "\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
