"""Commands on trained runs: ``predict``, ``evaluate``, ``profile`` and ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsdistill.cli.common import (
    BackboneOpt,
    DecoderOpt,
    DeviceOpt,
    GpusPerWorkerOpt,
    InferSeedOpt,
    ModelOpt,
    QuietOpt,
    RayAddressOpt,
    SeedOpt,
    SizeOpt,
    _bar,
    _exit_on_failures,
    _model_announcer,
    _say,
    _write_json,
    check_json_target,
    engine_option,
    model_command,
    non_empty_text,
    path_argument,
    path_option,
)


@model_command
def predict(
    # str, not Path: a Path would fold s3://bucket into s3:/bucket.
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS",
            parser=non_empty_text,
            help="Image files or folders (searched recursively), or object-store prefixes s3://BUCKET/PREFIX, "
            "gs://BUCKET/PREFIX (pip install 'fsdistill\\[ray]').",
        ),
    ],
    out: Annotated[
        str,
        path_option(
            "-o",
            "--out",
            parser=non_empty_text,
            metavar="<str>",
            help="Output folder (masks/, overlays/, predictions.csv), or s3://BUCKET/PREFIX, gs://...",
        ),
    ],
    model: ModelOpt = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per forward pass (default: 8 on GPU, 2 on CPU).")
    ] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write colour overlays.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already predicted.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Image-decoding worker processes (default: 2 on GPU; on CPU 0 up to 2 cores, else cores/4, at most 2). "
            "With --engine ray: the Ray actors, each with its own copy of the model (default: the cluster's CPUs up "
            "to 8, or its GPUs / --gpus-per-worker).",
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="torch | onnx: onnx runs an exported .onnx (--model FILE, or RUN with RUN/student.onnx) with "
            "onnxruntime only. Default: onnx for an .onnx --model, else torch.",
        ),
    ] = None,
    format: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="png (default: the index masks, always written) and any of coco, cvat, labelstudio: pre-labels "
            "for annotation tools (OUT/coco.json, OUT/cvat.zip, OUT/labelstudio_tasks.json + "
            "labelstudio_config.xml). Repeat it or give a comma list.",
        ),
    ] = None,
    coco_rle: Annotated[
        bool, typer.Option("--coco-rle", help="With --format coco: compressed RLE masks instead of polygons.")
    ] = False,
    image_root_url: Annotated[
        str | None,
        typer.Option(
            "--image-root-url",
            help="With --format labelstudio: prefix of each task's image URL, followed by the image's path "
            "relative to the input folder (default /data/local-files/?d= : Label Studio's local files, with "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to the input folder).",
        ),
    ] = None,
    engine: Annotated[
        str, engine_option("runs the model in a pool of Ray actors; same outputs, written by this process")
    ] = "local",
    address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Do only shard I of N (0 <= I < N) of the sorted image list: image k goes to shard k mod N. For job "
            "arrays: run I = 0..N-1 into the same -o folder; the last shard to finish merges predictions.csv.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    seed: InferSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Segment images with a support-free student; masks at each image's original size.

    Example: fsdistill predict images/ -o out/ --model runs/polyps --overlay
    (ONNX: fsdistill predict images/ -o out/ --backend onnx --model runs/polyps/student.onnx)
    (pre-labels: fsdistill predict images/ -o out/ --format labelstudio,cvat)
    (job array: fsdistill predict images/ -o out/ --shard $SLURM_ARRAY_TASK_ID/8)
    (Ray cluster: fsdistill predict /shared/images -o /shared/out --engine ray --address auto --gpus-per-worker 1)
    (object store: fsdistill predict s3://bucket/images -o s3://bucket/masks --engine ray --address auto)
    """
    from fsdistill import api

    with _bar("predict", quiet) as bar:
        result = api.predict(
            inputs,
            out,
            model,
            device,
            batch_size,
            overlay,
            overwrite,
            workers,
            bar.update,
            backend=backend,
            on_model=_model_announcer(bar, model, quiet),
            on_total=bar.reset,
            formats=format,
            coco_rle=coco_rle,
            image_root_url=image_root_url,
            shard=shard,
            engine=engine,
            address=address,
            gpus_per_worker=gpus_per_worker,
        )
    say = _say(quiet)
    # As the library reports the folder: an object-store URI without its query (?endpoint_override=…).
    masks = f"{str(result.out_dir).rstrip('/')}/masks"
    say(f"{result.written} written, {result.skipped} already done, {len(result.failed)} failed -> {masks}")
    if result.scored:  # the model ran again on images already done: said, as it takes as long as predicting them
        say(f"{result.scored} masks of an earlier run given the class scores --format needs (their images run again)")
    for name, paths in result.format_paths.items():
        say(f"{name}: {', '.join(str(p) for p in paths)}")
    _exit_on_failures(result.failed)


@model_command
def evaluate(
    data_dir: Annotated[
        Path,
        path_argument(metavar="DATA_DIR", help="Labelled folder (any support layout) with the model's classes."),
    ],
    model: ModelOpt = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Evaluate the run's teacher with its supports.")] = False,
    json_out: Annotated[Path | None, path_option("--json", help="Write the result as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Image-decoding worker processes (default: as predict's)."),
    ] = None,
    device: DeviceOpt = "auto",
    seed: InferSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Per-class IoU and mIoU (foreground classes) on held-out images, at original resolution.

    Example: fsdistill evaluate heldout/ --model runs/polyps --json eval.json
    """
    from fsdistill import api

    check_json_target(json_out)  # before the evaluation, not after it
    with _bar("evaluate", quiet) as bar:
        result = api.evaluate(data_dir, model, teacher, device, batch_size, workers, bar.update, bar.reset)
    say = _say(quiet)
    for name, value in result.iou.items():
        say(f"{name:>20}  IoU {'n/a' if value is None else f'{value:.4f}'}")
    say(f"{'mIoU':>20}  {result.miou:.4f}  ({result.images} images, {result.model})")
    if json_out is not None:
        _write_json(json_out, result.to_dict())


@model_command
def profile(
    ways: Annotated[
        int | None, typer.Option("--ways", help="Largest ways W: grid 1..W (default 3; with --model its classes).")
    ] = None,
    shots: Annotated[int, typer.Option("--shots", help="Largest shots S: grid {1,5,10,25,50,S} up to S.")] = 10,
    teacher_max_ways: Annotated[
        int,
        typer.Option(
            "--teacher-max-ways",
            help="Time the teacher only up to this many ways (0: never); the student and the bare backbone are "
            "timed at every ways value, e.g. --ways 50 for a student's cost per class.",
        ),
    ] = 10,
    backbone: BackboneOpt = None,
    size: SizeOpt = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Query images per timed run (the teacher runs them one at a time).")
    ] = 1,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before each cell (slow cells skip them).")] = 1,
    runs: Annotated[
        int, typer.Option("--runs", help="Timed runs per cell (cells slower than 2 s: as many as fit in 10 s).")
    ] = 5,
    model: Annotated[
        Path | None,
        path_option("--model", help="Run or artifact folder to time (default: random-weight models, no run needed)."),
    ] = None,
    out: Annotated[Path, path_option("--out", help="Output folder for profile.json/.csv/.md/.png.")] = Path("profile"),
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Time the teacher as the original DCAMA code runs it: the support images go through the backbone "
            "again for every query image, instead of once per support set.",
        ),
    ] = False,
    student_width: Annotated[
        int | None,
        typer.Option(
            "--student-width",
            help="Size of the per-class layer of the random student (as distill --student-width; default 8).",
        ),
    ] = None,
    decoder: DecoderOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Latency and memory of teacher vs student vs bare backbone over ways x shots (the paper's speed table).

    Random weights and inputs unless --model RUN_DIR (then its teacher/student, classes and size).

    Example: fsdistill profile --ways 5 --shots 50 --out profile/
    Many classes: fsdistill profile --ways 50 --shots 1 (teacher up to 10 ways, see --teacher-max-ways)
    """
    from fsdistill import api
    from fsdistill.profiling import ProfileCfg

    cfg = ProfileCfg(
        ways=ways,
        teacher_max_ways=teacher_max_ways,
        shots=shots,
        backbone=backbone,
        size=size,
        batch_size=batch_size,
        warmup=warmup,
        runs=runs,
        model=model,
        out=out,
        cache=not no_cache,
        student_width=student_width,
        decoder=decoder,
        device=device,
        seed=0 if seed is None else seed,
    )
    result = api.profile(cfg, quiet=quiet)
    say = _say(quiet)
    ratios = result.ratios
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
    say(f"student latency max/min over the grid: {fmt(ratios['student_max_over_min'])}")
    t_cell = ratios.get("teacher_cell")
    if t_cell is not None:
        say(f"teacher/student at {t_cell['ways']}-way {t_cell['shots']}-shot: {fmt(ratios['teacher_over_student'])}")
    else:
        say("teacher: not timed (--teacher-max-ways below the ways, or no teacher in the run)")
    say(f"student/backbone at {ratios['largest_cell']['ways']}-way: {fmt(ratios['student_over_backbone'])}")
    by_ways = ratios.get("student_over_backbone_by_ways") or {}
    if len(by_ways) > 1:
        # A line, not a table: the round numbers of ways and the largest (profile.md has every cell).
        shown = {w: v for w, v in by_ways.items() if int(w) in (1, 2, 5, 10, 20, 50, 100) or w == max(by_ways, key=int)}
        say("student/backbone by ways: " + ", ".join(f"{w}: {fmt(v)}" for w, v in shown.items()))
    peaks = {k: v for k, v in (ratios.get("peak_mem_mb_largest_cell") or {}).items() if v is not None}
    if peaks:
        say("peak memory (MB, per cell in profile.md): " + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()))
    failed = [f"{r['model']} {r['ways']}w{r['shots']}s" for r in result.rows if r["status"] != "ok"]
    if failed:
        say(f"out of memory: {', '.join(failed)}")
    say(f"profile: {result.out_dir}/profile.{{json,csv,md,png}}  ({result.data['seconds']:.0f} s)")


@model_command
def export(
    model: ModelOpt = None,
    format: Annotated[str, typer.Option("--format", help="Export format: onnx (the only one).")] = "onnx",
    out: Annotated[
        Path | None,
        path_option(
            "-o",
            "--out",
            help="Output file, or a folder for student.onnx (default: RUN/student.onnx beside the artifact).",
        ),
    ] = None,
    images: Annotated[
        list[Path] | None,
        path_option(
            "--images", help="Images or folders for the parity check, the first 4 used (default: the run's supports)."
        ),
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Largest accepted |logit difference| (outside near-tied classes).")
    ] = 1e-2,
    min_agreement: Annotated[
        float, typer.Option("--min-agreement", help="Smallest accepted fraction of pixels with the same class.")
    ] = 0.999,
    device: Annotated[
        str,
        typer.Option("--device", help="Where the PyTorch reference of the check runs: cpu (default), cuda, mps, auto."),
    ] = "cpu",
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export the student to ONNX and check onnxruntime against PyTorch (largest difference, argmax agreement).

    Exit 1 when the check fails (the file is still written). Needs onnx and onnxruntime (the export extra).

    Example: fsdistill export --model runs/polyps -o polyps.onnx
    """
    from fsdistill import api

    result = api.export(model, out, format, images, device, tolerance, min_agreement, seed=0 if seed is None else seed)
    say = _say(quiet)
    if model is None and not quiet:
        typer.echo(f"model: {result.model} (newest run under ./runs; pass --model to choose)", err=True)
    shape = "dynamic batch and height/width" if result.dynamic_hw else f"dynamic batch, fixed {result.input_size}px"
    say(f"exported: {result.path}  ({result.size_bytes / 2**20:.1f} MB, {shape}, {result.seconds:.0f} s)")
    if result.note:
        say(f"note: {result.note}")
    summary = (
        f"parity vs PyTorch on {result.samples} images ({result.real_samples} real): "
        f"max |logit diff| {result.max_abs_diff:.2e} ({result.max_abs_diff_stable:.2e} outside near-tied classes, "
        f"tolerance {result.tolerance:g}), argmax agreement {result.agreement:.4%} "
        f"(minimum {result.min_agreement:.2%})"
    )
    if not result.passed:
        typer.echo(summary, err=True)
        typer.echo("error: onnxruntime does not reproduce PyTorch within the tolerance (see above).", err=True)
        raise typer.Exit(1)
    say(summary)


@model_command
def suggest(
    pool: Annotated[
        list[Path],
        path_argument(metavar="POOL", help="Unlabelled images: folders (searched recursively) or files."),
    ],
    model: ModelOpt = None,
    top: Annotated[
        int, typer.Option("--top", help="How many images to suggest (CSV, JSON, --copy-to); all are scored.")
    ] = 20,
    out: Annotated[
        Path | None, path_option("--out", "-o", help="Write the top images' scores to this CSV file.")
    ] = None,
    json_out: Annotated[Path | None, path_option("--json", help="Write the same as JSON here.")] = None,
    copy_to: Annotated[
        Path | None,
        path_option("--copy-to", help="Copy the top image files into this folder to label them (names kept)."),
    ] = None,
    teacher: Annotated[
        Path | None,
        path_option(
            "--teacher",
            help="Teacher to compare the student with (default: the run's teacher/, else the one it was distilled from).",
        ),
    ] = None,
    student_only: Annotated[
        bool,
        typer.Option(
            "--student-only",
            help="Rank by the student's uncertainty alone, without the teacher (much faster on a CPU: the teacher "
            "takes seconds per image).",
        ),
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Images per forward pass (default: 8 on GPU, 2 on CPU).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Image-decoding worker processes, or with --engine ray the Ray actors (defaults: as predict's).",
        ),
    ] = None,
    engine: Annotated[str, engine_option("scores the pool in a pool of Ray actors; same ranking")] = "local",
    address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Score only shard I of N of the sorted pool (image k goes to shard k mod N); the ranking is that "
            "shard's alone.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    seed: InferSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank unlabelled images by how much labelling each would teach: teacher-student disagreement and student
    uncertainty per class, near-duplicates skipped.

    Example: fsdistill suggest unlabelled/ --model runs/polyps --top 20 --out ranking.csv --copy-to to_label/
    (Ray cluster: fsdistill suggest /shared/pool --model /shared/runs/polyps --engine ray --address auto)
    """
    from fsdistill import api

    with _bar("suggest", quiet) as bar:
        result = api.suggest(
            pool,
            model,
            top,
            out,
            json_out,
            copy_to,
            teacher,
            device,
            batch_size,
            workers,
            student_only,
            on_model=_model_announcer(bar, model, quiet),
            on_total=bar.reset,
            on_progress=bar.update,
            shard=shard,
            engine=engine,
            address=address,
            gpus_per_worker=gpus_per_worker,
        )
    say = _say(quiet)
    if result.note and not quiet:
        typer.echo(f"note: {result.note}", err=True)
    if result.supports_left_out and not quiet:
        typer.echo(
            f"note: {len(result.supports_left_out)} images of the pool are supports of the model (e.g. "
            f"{result.supports_left_out[0]}); left out of the ranking.",
            err=True,
        )
    if result.masks_left_out and not quiet:
        typer.echo(
            f"note: {len(result.masks_left_out)} files of the pool are masks of a labelled folder (e.g. "
            f"{result.masks_left_out[0]}); left out of the ranking.",
            err=True,
        )
    say(f"{'rank':>4}  {'score':>6}  {'disagree':>8}  {'uncert':>6}  image")
    for row in result.shown:
        s = row.scores
        disagree = "-" if s.disagreement is None else f"{s.disagreement:.3f}"
        say(f"{row.rank:>4}  {s.score:>6.3f}  {disagree:>8}  {s.uncertainty:>6.3f}  {row.image}")
    done = [f"{len(result.ranking)} images scored in {result.seconds:.0f} s"]
    if result.csv_path is not None:
        done.append(f"ranking -> {result.csv_path}")
    if result.json_path is not None:
        done.append(f"JSON -> {result.json_path}")
    if result.copy_to is not None:
        done.append(f"{result.copied} copied ({result.already_copied} already there) -> {result.copy_to}")
    say(", ".join(done))
    _exit_on_failures(result.failed)
