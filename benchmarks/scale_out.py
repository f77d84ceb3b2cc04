"""``predict --engine ray`` against local predict on one machine: the engine's overhead, measured in one run.

Builds the image folder of ``predict_throughput.py`` (real example images tiled to 512×512 and 640×480 files),
starts a local Ray instance once (``ray.init(num_cpus=--ray-cpus)``, not timed), then times, interleaved
``--repeats`` times: ``api.predict`` with the local engine, and with ``--engine ray`` and 1, 2, … actors
(``--workers``). Each timed run predicts every image into a fresh folder, so the Ray times include starting the
actor pool and loading the model in each actor, as a user's run does. ``overhead`` = 1 − ray / local images/s
with one actor (the same compute as local predict: the engine's own cost). The issue's goal: ≤ 20 %.

    python benchmarks/scale_out.py [--model RUN_DIR] [--images 128] [--workers 1 2] [--repeats 3]

Needs the ray extra (``pip install 'fsdistill[ray]'``). Without ``--model`` a random-weight student is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import random_student, run_script, write_json  # noqa: E402
from predict_throughput import make_image_folder  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import ModelCfg  # noqa: E402
from fsdistill.infer.ray_engine import require_ray  # noqa: E402
from fsdistill.runtime import device_name, library_versions, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts to time")
    parser.add_argument("--batch-size", type=int, default=None, help="default: predict's (8 on GPU, 2 on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out")
    args = parser.parse_args()
    ray = require_ray()
    device = resolve_device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 2)
    work = Path(tempfile.mkdtemp(prefix="fsd-scale-out-"))
    try:
        images = work / "images"
        make_image_folder(images, args.images, args.data)
        model_dir = args.model or random_student(work / "student", ModelCfg())
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        runs = 0

        def rate(engine: str, workers: int | None) -> float:
            nonlocal runs
            runs += 1
            start = time.perf_counter()
            kw = {"engine": "ray", "workers": workers} if engine == "ray" else {}
            result = api.predict(
                [images], work / f"out{runs}", model=model_dir, device=args.device, batch_size=batch_size, **kw
            )
            assert result.written == args.images and not result.failed
            return result.written / (time.perf_counter() - start)

        rate("local", None)  # warm-up: first imports, page cache
        keys = ["local"] + [f"ray_{w}" for w in args.workers]
        rates: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(args.repeats):  # interleaved: this machine's speed drifts between runs
            rates["local"].append(rate("local", None))
            for w in args.workers:
                rates[f"ray_{w}"].append(rate("ray", w))
        ray.shutdown()
        medians = {k: statistics.median(v) for k, v in rates.items()}
        report = {
            "device": device_name(device),
            "cpus": os.cpu_count(),
            "ray_cpus": args.ray_cpus,
            "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
            "model": str(model_dir) if args.model else "random-init student (default config)",
            "images": args.images,
            "batch_size": batch_size,
            "images_per_s": medians,
            "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
            "versions": library_versions(),
        }
        if 1 in args.workers:
            report["overhead"] = 1 - medians["ray_1"] / medians["local"]
        write_json(args.out / "results.json", report)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
