"""``fsdistill predict`` throughput against the bare backbone, measured in one run.

Builds a folder of real images (the example nuclei and brain images, tiled to 512×512 and 640×480 files so
decoding and resizing cost what they cost on user data), then measures, on the same device and thread count:
  * predict images/s: the full ``api.predict`` path with its defaults (model load, decode, resize, student
    forward, upsample to original size, argmax, palette PNG written, predictions.csv);
  * backbone images/s: the bare frozen backbone forward on pre-resized tensors at the same batch size and in the
    same memory layout as predict runs it (channels-last for a student on the CPU).
The two are measured back to back ``--repeats`` times; ``ratio`` is the median of the per-repeat ratios (this
machine's speed drifts between repeats), ``ratio_of_medians`` the ratio of the two medians. The issue's goal is
predict ≥ 0.8× backbone.

    python benchmarks/predict_throughput.py [--model RUN_DIR] [--images 256] [--batch-size N] [--workers N]

Without ``--model`` a student is built with random weights (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from common import random_student, run_script, write_json  # noqa: E402
from make_examples import build_examples  # noqa: E402

from fsdistill import api  # noqa: E402
from fsdistill.config import ModelCfg  # noqa: E402
from fsdistill.data.discover import discover  # noqa: E402
from fsdistill.data.transforms import normalize  # noqa: E402
from fsdistill.infer.predictor import Predictor  # noqa: E402
from fsdistill.models.build import load_model  # noqa: E402
from fsdistill.runtime import device_name, library_versions, resolve_device  # noqa: E402


def make_image_folder(folder: Path, count: int, data: Path) -> None:
    cases = build_examples(data)
    sources = []
    for case in cases.values():
        index = discover(case / "heldout")
        sources += [index.load_image(i) for i in range(len(index))]
    sizes = [(512, 512), (640, 480)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tile = sources[i % len(sources)]
        w, h = sizes[i % len(sizes)]
        big = np.tile(tile, (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1))[:h, :w]
        Image.fromarray(big).save(folder / f"img_{i:04d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="default: predict's (8 on GPU, 2 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="default: predict's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_throughput")
    args = parser.parse_args(argv)
    for flag, value in (("--images", args.images), ("--repeats", args.repeats), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:  # --images 0 or less ended in a misleading "No images found"
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be at least 0, got {args.workers}")
    if args.model is not None and not args.model.exists():  # before the image folder is written
        parser.error(f"--model {args.model} does not exist")
    device = resolve_device(args.device)
    if args.batch_size is None:  # predict's own default, and the backbone is timed at the same batch size
        args.batch_size = 8 if device.type == "cuda" else 2
    work = Path(tempfile.mkdtemp(prefix="fsd-throughput-"))
    try:
        images = work / "images"
        make_image_folder(images, args.images, args.data)
        model_dir = args.model or random_student(work / "student", ModelCfg())
        # The backbone as predict runs it (on the CPU a student runs channels-last: faster, so the fair reference).
        runner = Predictor(load_model(model_dir), device)
        loaded, backbone = runner.loaded, runner.loaded.model.backbone
        batch = normalize(
            torch.randint(0, 255, (args.batch_size, 3, loaded.size, loaded.size), dtype=torch.uint8).to(device),
            loaded.mean,
            loaded.std,
        )
        if runner.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        steps = max(1, args.images // args.batch_size)

        def predict_rate(r: int) -> float:
            start = time.perf_counter()
            result = api.predict(
                [images],
                work / f"out{r}",
                model=model_dir,
                device=args.device,
                batch_size=args.batch_size,
                workers=args.workers,
            )
            return result.written / (time.perf_counter() - start)

        @torch.inference_mode()
        def backbone_rate() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                backbone(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return args.batch_size * steps / (time.perf_counter() - start)

        backbone_rate()  # warm-up
        predict_rates, backbone_rates = [], []
        # Interleaved repeats: this machine's speed drifts by tens of percent over seconds, and a ratio of two
        # measurements taken minutes apart would measure the drift.
        for r in range(args.repeats):
            predict_rates.append(predict_rate(r))
            backbone_rates.append(backbone_rate())
        report = {
            "device": device_name(device),
            "model": str(model_dir) if args.model else "random-init student (default config)",
            "model_cfg": loaded.model_cfg.model_dump(mode="json"),
            "images": args.images,
            "batch_size": args.batch_size,
            "channels_last": runner.channels_last,
            "workers": args.workers,
            "predict_images_per_s": statistics.median(predict_rates),
            "backbone_images_per_s": statistics.median(backbone_rates),
            "predict_runs": [round(x, 2) for x in predict_rates],
            "backbone_runs": [round(x, 2) for x in backbone_rates],
            "ratio_per_repeat": [round(p / b, 3) for p, b in zip(predict_rates, backbone_rates)],
            "versions": library_versions(),
        }
        # The goal's figure: the median over repeats of predict / backbone measured back to back (robust to drift);
        # the ratio of the two medians is kept beside it.
        report["ratio"] = statistics.median(p / b for p, b in zip(predict_rates, backbone_rates))
        report["ratio_of_medians"] = report["predict_images_per_s"] / report["backbone_images_per_s"]
        write_json(args.out / "results.json", report)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
