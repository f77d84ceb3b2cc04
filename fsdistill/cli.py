"""The ``fsdistill`` command line: parse options, call ``fsdistill.api``, print results.

The only module that imports typer or prints. Exit codes: 0 success, 2 a user error (one sentence on stderr, no
traceback), 1 an internal error, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from fsdistill import __version__
from fsdistill.errors import FsdistillError


class _PlainFlags:
    """On/off flags show no value type in help: typer labels them ``<bool>``, which made ``--overlay true`` look
    valid (``true`` is then read as an input path)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_bool_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_PlainFlags, typer.core.TyperCommand):
    pass


class _Group(_PlainFlags, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="fsdistill",
    help="Few-shot segmentation distilled into a fast, support-free segmenter (DistillFSS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Reusable option types (one definition each, like the hf CLI's aliases).
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default 0).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries, errors only.")]
InferSeedOpt = Annotated[
    Optional[int], typer.Option("--seed", help="Accepted like every command's (inference is deterministic).")
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of options (flags override it).")]
BackboneOpt = Annotated[
    Optional[str], typer.Option("--backbone", help="efficientnet-lite0 (default, offline), resnet50, swin-b.")
]
BackboneWeightsOpt = Annotated[
    Optional[Path], typer.Option("--backbone-weights", help="Local .pth/.safetensors backbone weights (no download).")
]
TeacherWeightsOpt = Annotated[
    Optional[Path], typer.Option("--teacher-weights", help="Official DCAMA/DistillFSS checkpoint to start from.")
]
# Typer cannot show defaults of options whose default is None (None lets --config YAML values through), so the
# help texts say them; tests/test_first_hour.py checks them against config.py. No square brackets: typer's rich
# markup reads them as tags and dropped "[default: ...]" from the help.
_AUTO_STEPS = "default: automatic from the support folder, see README"
AdaptStepsOpt = Annotated[
    Optional[int],
    typer.Option("--steps", help=f"Optimiser steps ({_AUTO_STEPS}). 0 = the untrained teacher (training-free baseline)."),
]
DistillStepsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--steps",
        help=f"Optimiser steps ({_AUTO_STEPS}). 0 = no training: the student is written untrained and predicts "
        "nothing useful (a quick check of the pipeline); for the training-free baseline use adapt --steps 0.",
    ),
]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate (default 3e-3).")]
SizeOpt = Annotated[
    Optional[int], typer.Option("--size", help="Square input size in pixels, a multiple of 32 (default 384).")
]
OutRunOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<date>-<time>).")]
SupportOpt = Annotated[
    Optional[Path],
    typer.Option("--support", help="Support folder (images + masks); required unless the --config YAML sets support:."),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the run already in --out (refused without it).")
]
TrainOpt = Annotated[
    Optional[str],
    typer.Option(
        "--train",
        help="Which parts of the teacher learn from your images, comma-separated (default mapper,merge,mixer): "
        "mapper and merge turn the raw image-to-support matches into masks, attention is the matching itself, "
        "mixer draws the final mask. The backbone never changes.",
    ),
]
DecoderOpt = Annotated[
    Optional[str],
    typer.Option(
        "--decoder",
        help="light (default: fast; its per-class part still grows with the classes: the student measured 1.18x the "
        "bare backbone's time at 1 class, 2.2x at 20) or dcama (the paper's, ~11 GFLOP per class at 384 px).",
    ),
]
AugmentOpt = Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Flip views of the supports.")]
ModelOpt = Annotated[
    Optional[Path], typer.Option("--model", help="Run folder or artifact folder (default: newest run under ./runs).")
]


class _Console:
    """stdout for results, stderr for messages; silenced by --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            typer.echo(text)


def _guarded(fn: Callable) -> Callable:
    """User errors → one line on stderr and exit 2; Ctrl-C → a note on what was kept and exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fsdistill.runtime import clear_interrupt, request_interrupt

        def on_sigint(signum: int, frame: Any) -> None:
            request_interrupt()
            raise KeyboardInterrupt

        clear_interrupt()
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
        try:
            return fn(*args, **kwargs)
        except FsdistillError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: nothing half-written was left (artifacts are written only when complete); "
                "re-run the same command to start again (predict resumes where it stopped).",
                err=True,
            )
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    return wrapper


def command(fn: Callable) -> Callable:
    """Register a guarded command under its function name."""
    return app.command(cls=_Command)(_guarded(fn))


def model_command(fn: Callable) -> Callable:
    """Register a guarded command that runs models, setting the process up for them first: glibc keeps the memory
    a forward pass frees for the next one (:func:`fsdistill.runtime.retain_freed_memory`)."""

    @functools.wraps(fn)
    def set_up_then_run(*args: Any, **kwargs: Any) -> Any:
        from fsdistill.runtime import retain_freed_memory

        retain_freed_memory()
        return fn(*args, **kwargs)

    return command(set_up_then_run)


def _train_overrides(
    steps: int | None, lr: float | None, seed: int | None, train: str | None, augment: bool | None
) -> dict[str, Any]:
    groups = [g.strip() for g in train.split(",") if g.strip()] if train is not None else None
    if groups == []:  # --train "" (an unset shell variable, say) silently meant the default groups
        from fsdistill.errors import ConfigError

        raise ConfigError(
            "--train got no group names; list some of mapper,merge,attention,mixer, or leave --train out for the "
            "default mapper,merge,mixer."
        )
    return {"steps": steps, "lr": lr, "seed": seed, "train": groups, "augment": augment}


def _bar(desc: str, quiet: bool):
    """An image progress bar whose total the API reports once it has found the images (``set_total``)."""
    from fsdistill.runtime import progress

    bar = progress(total=None, desc=desc, unit="img", quiet=quiet)

    def set_total(total: int) -> None:
        bar.total = total
        bar.refresh()

    bar.set_total = set_total
    return bar


@command
def check(
    support_dir: Annotated[Path, typer.Argument(help="Support folder to validate.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    device: Annotated[
        str, typer.Option("--device", help="Accepted like every command's (check reads files only, no model).")
    ] = "auto",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Accepted like every command's (nothing random).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Validate a support folder: layout, pairs, orphans, classes, sizes and warnings.

    Example: fsdistill check ./support --json report.json
    """
    from fsdistill.data.check import check_support
    from fsdistill.runtime import check_device_name

    check_device_name(device)  # a typo is still an error, as in the commands that run a model

    report = check_support(support_dir)
    _Console(quiet).say(report.to_text())
    if json_out is not None:
        _write_json(json_out, report.to_dict())


def _write_json(path: Path, data: dict) -> None:
    from fsdistill.errors import DataError
    from fsdistill.runtime import ensure_writable_dir, write_atomic

    path = Path(path)
    ensure_writable_dir(path.parent, "--json")
    try:
        write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:
        raise DataError(f"Cannot write {path} ({exc.strerror or type(exc).__name__}); choose another --json file.")


def _model_overrides(backbone, backbone_weights, teacher_weights, size, decoder, student_width=None) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "backbone_weights": backbone_weights,
        "teacher_weights": teacher_weights,
        "size": size,
        "decoder": decoder,
        "student_width": student_width,
    }


@model_command
def adapt(
    support: SupportOpt = None,
    backbone: BackboneOpt = None,
    backbone_weights: BackboneWeightsOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    decoder: DecoderOpt = None,
    steps: AdaptStepsOpt = None,
    lr: LrOpt = None,
    size: SizeOpt = None,
    train: TrainOpt = None,
    augment: AugmentOpt = None,
    out: OutRunOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """TransferFSS: fine-tune the DCAMA teacher on a support folder; writes RUN/teacher/.

    Example: fsdistill adapt --support ./support --steps 150 --out runs/polyps
    """
    from fsdistill import api
    from fsdistill.config import AdaptCfg, load_config

    cfg = load_config(
        AdaptCfg,
        config,
        {
            "support": support,
            "out": out,
            "device": device,
            "model": _model_overrides(backbone, backbone_weights, teacher_weights, size, decoder),
            "train": _train_overrides(steps, lr, seed, train, augment),
        },
        flag_names=True,
        command="adapt",
    )
    result = api.adapt(cfg, quiet=quiet, overwrite=overwrite)
    _Console(quiet).say(
        f"teacher: {result.teacher_dir}  ({result.stats['steps']} steps, {result.stats['seconds']:.0f} s)"
    )


@model_command
def distill(
    support: SupportOpt = None,
    teacher: Annotated[
        Optional[Path], typer.Option("--teacher", help="Adapted teacher (RUN/teacher) to distill from.")
    ] = None,
    freeze_teacher: Annotated[
        bool, typer.Option("--freeze-teacher", help="With --teacher: train only the student against it.")
    ] = False,
    backbone: BackboneOpt = None,
    backbone_weights: BackboneWeightsOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    decoder: DecoderOpt = None,
    student_width: Annotated[
        Optional[int],
        typer.Option(
            "--student-width",
            help="Size of the small layer the student learns per class and scale instead of the teacher's support "
            "matching (default 8): larger can learn more but is slower and bigger; 0 = the paper's full size "
            "(as wide as the backbone's features: 12-50 M parameters per class on wide backbones).",
        ),
    ] = None,
    steps: DistillStepsOpt = None,
    lr: LrOpt = None,
    size: SizeOpt = None,
    train: TrainOpt = None,
    augment: AugmentOpt = None,
    out: OutRunOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """DistillFSS: train the support-free student (jointly with the teacher); writes RUN/student/.

    Example: fsdistill distill --support ./support --backbone efficientnet-lite0
    """
    from fsdistill import api
    from fsdistill.config import DistillCfg, load_config

    cfg = load_config(
        DistillCfg,
        config,
        {
            "support": support,
            "out": out,
            "teacher": teacher,
            "freeze_teacher": freeze_teacher or None,
            "device": device,
            "model": _model_overrides(backbone, backbone_weights, teacher_weights, size, decoder, student_width),
            "train": _train_overrides(steps, lr, seed, train, augment),
        },
        flag_names=True,
        command="distill",
    )
    result = api.distill(cfg, quiet=quiet, overwrite=overwrite)
    console = _Console(quiet)
    console.say(
        f"student: {result.student_dir}  ({result.student_parameters:,} parameters, {result.student_mb:.1f} MB)"
    )
    if result.teacher_dir is not None:
        console.say(f"teacher: {result.teacher_dir}")
    console.say(f"trained {result.stats['steps']} steps in {result.stats['seconds']:.0f} s ({result.stats['stop_reason']})")
    if result.stats["steps"] == 0:
        console.say("note: 0 steps: the student is untrained and predicts nothing useful; adapt --steps 0 gives the "
                    "training-free teacher baseline.")
    if result.check is not None:
        _print_support_check(result.check, console)


def _print_support_check(check, console: _Console) -> None:
    """The per-class table of distill's support check, then one warning line per dead-looking class (stderr)."""
    def fmt(value: float | None) -> str:
        return "  -  " if value is None else f"{value:.2f}"

    console.say("per-class check on the support folder (leave-one-out: teacher on each support with the others; "
                "fit: student on its training images):")
    width = max(len(c.name) for c in check.classes)
    for c in check.classes:
        console.say(f"  {c.name:<{width}}  in {c.supports:>3} supports  leave-one-out {fmt(c.leave_one_out)}  fit {fmt(c.fit)}")
    if check.note:
        console.say(f"  ({check.note})")
    for warning in check.warnings():
        typer.echo(f"warning: {warning}", err=True)


@model_command
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (masks/, overlays/, predictions.csv).")],
    model: ModelOpt = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", min=1, help="Images per forward pass (default: 8 on GPU, 2 on CPU).")
    ] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write colour overlays.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already predicted.")] = False,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", min=0, help="Image-decoding worker processes (default: 2 on GPU; on CPU 0 up to 2 cores, else cores/4, at most 2)."),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option(
            "--backend",
            help="torch | onnx: onnx runs an exported .onnx (--model FILE, or RUN with RUN/student.onnx) with "
            "onnxruntime only. Default: onnx for an .onnx --model, else torch.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    seed: InferSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Segment images with a support-free student; masks at each image's original size.

    Example: fsdistill predict images/ -o out/ --model runs/polyps --overlay
    (ONNX: fsdistill predict images/ -o out/ --backend onnx --model runs/polyps/student.onnx)
    """
    from fsdistill import api

    with _bar("predict", quiet) as bar:
        # Without --model the newest run is used: say which, or the masks cannot be traced to a model.
        def say_model(path: str) -> None:
            if model is None and not quiet:
                bar.write(f"model: {path} (newest run under ./runs; pass --model to choose)", file=sys.stderr)

        result = api.predict(
            inputs, out, model, device, batch_size, overlay, overwrite, workers, bar.update, backend=backend,
            on_model=say_model, on_total=bar.set_total,
        )
    console = _Console(quiet)
    console.say(
        f"{result.written} written, {result.skipped} already done, {len(result.failed)} failed -> {out}/masks"
    )
    if result.failed:
        for path, reason in result.failed:
            typer.echo(f"error: {reason}", err=True)
        raise typer.Exit(2)


@model_command
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Labelled folder (any support layout) with the model's classes.")],
    model: ModelOpt = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Evaluate the run's teacher with its supports.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    workers: Annotated[
        Optional[int],
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

    if json_out is not None:  # refuse an unwritable --json before the evaluation, not after it
        from fsdistill.runtime import ensure_writable_dir

        ensure_writable_dir(Path(json_out).parent, "--json")
    with _bar("evaluate", quiet) as bar:
        result = api.evaluate(data_dir, model, teacher, device, batch_size, workers, bar.update, bar.set_total)
    console = _Console(quiet)
    for name, value in result.iou.items():
        console.say(f"{name:>20}  IoU {'n/a' if value is None else f'{value:.4f}'}")
    console.say(f"{'mIoU':>20}  {result.miou:.4f}  ({result.images} images, {result.model})")
    if json_out is not None:
        _write_json(json_out, result.to_dict())



@model_command
def profile(
    ways: Annotated[
        Optional[int], typer.Option("--ways", help="Largest ways W: grid 1..W (default 3; with --model its classes).")
    ] = None,
    shots: Annotated[int, typer.Option("--shots", help="Largest shots S: grid {1,5,10,25,50,S} up to S.")] = 10,
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
        Optional[Path],
        typer.Option("--model", help="Run or artifact folder to time (default: random-weight models, no run needed)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder for profile.json/.csv/.md/.png.")] = Path("profile"),
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Time the teacher as the original DCAMA code runs it: the support images go through the backbone "
            "again for every query image, instead of once per support set.",
        ),
    ] = False,
    student_width: Annotated[
        Optional[int],
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
    """
    from fsdistill import api
    from fsdistill.profile import ProfileCfg

    cfg = ProfileCfg(
        ways=ways,
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
    console = _Console(quiet)
    ratios = result.ratios
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
    cell = ratios["largest_cell"]
    console.say(f"student latency max/min over the grid: {fmt(ratios['student_max_over_min'])}")
    console.say(f"teacher/student at {cell['ways']}-way {cell['shots']}-shot: {fmt(ratios['teacher_over_student'])}")
    console.say(f"student/backbone at {cell['ways']}-way: {fmt(ratios['student_over_backbone'])}")
    failed = [f"{r['model']} {r['ways']}w{r['shots']}s" for r in result.rows if r["status"] != "ok"]
    if failed:
        console.say(f"out of memory: {', '.join(failed)}")
    console.say(f"profile: {result.out_dir}/profile.{{json,csv,md,png}}  ({result.data['seconds']:.0f} s)")


@model_command
def export(
    model: ModelOpt = None,
    format: Annotated[str, typer.Option("--format", help="Export format: onnx (the only one).")] = "onnx",
    out: Annotated[
        Optional[Path], typer.Option("-o", "--out", help="Output file (default: RUN/student.onnx beside the artifact).")
    ] = None,
    images: Annotated[
        Optional[list[Path]],
        typer.Option(
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

    result = api.export(
        model, out, format, images, device, tolerance, min_agreement, seed=0 if seed is None else seed
    )
    console = _Console(quiet)
    shape = "dynamic batch and height/width" if result.dynamic_hw else f"dynamic batch, fixed {result.input_size}px"
    console.say(f"exported: {result.path}  ({result.size_bytes / 2**20:.1f} MB, {shape}, {result.seconds:.0f} s)")
    if result.note:
        console.say(f"note: {result.note}")
    summary = (
        f"parity vs PyTorch on {result.samples} images ({result.real_samples} real): "
        f"max |logit diff| {result.max_abs_diff:.2e} ({result.max_abs_diff_stable:.2e} outside near-tied classes, "
        f"tolerance {result.tolerance:.0e}), argmax agreement {result.agreement:.4%} "
        f"(minimum {result.min_agreement:.2%})"
    )
    if not result.passed:
        typer.echo(summary, err=True)
        typer.echo("error: onnxruntime does not reproduce PyTorch within the tolerance (see above).", err=True)
        raise typer.Exit(1)
    console.say(summary)


@model_command
def suggest(
    pool: Annotated[list[Path], typer.Argument(help="Unlabelled images: folders (searched recursively) or files.")],
    model: ModelOpt = None,
    top: Annotated[
        int, typer.Option("--top", help="How many images to suggest (CSV, JSON, --copy-to); all are scored.")
    ] = 20,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write the top images' scores to this CSV file.")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the same as JSON here.")] = None,
    copy_to: Annotated[
        Optional[Path],
        typer.Option("--copy-to", help="Copy the top image files into this folder to label them (names kept)."),
    ] = None,
    teacher: Annotated[
        Optional[Path],
        typer.Option(
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
        Optional[int], typer.Option("--batch-size", help="Images per forward pass (default: 8 on GPU, 2 on CPU).")
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", min=0, help="Image-decoding worker processes (default: as predict's)."),
    ] = None,
    device: DeviceOpt = "auto",
    seed: InferSeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank unlabelled images by how much labelling each would teach: teacher-student disagreement and student
    uncertainty per class, near-duplicates skipped.

    Example: fsdistill suggest unlabelled/ --model runs/polyps --top 20 --out ranking.csv --copy-to to_label/
    """
    from fsdistill import api

    with _bar("suggest", quiet) as bar:

        def say_model(path: str) -> None:
            if model is None and not quiet:
                bar.write(f"model: {path} (newest run under ./runs; pass --model to choose)", file=sys.stderr)

        result = api.suggest(
            pool, model, top, out, json_out, copy_to, teacher, device, batch_size, workers, student_only,
            on_model=say_model, on_total=bar.set_total, on_progress=bar.update,
        )
    console = _Console(quiet)
    if result.note and not quiet:
        typer.echo(f"note: {result.note}", err=True)
    console.say(f"{'rank':>4}  {'score':>6}  {'disagree':>8}  {'uncert':>6}  image")
    for row in result.shown:
        s = row.scores
        disagree = "-" if s.disagreement is None else f"{s.disagreement:.3f}"
        console.say(f"{row.rank:>4}  {s.score:>6.3f}  {disagree:>8}  {s.uncertainty:>6.3f}  {row.image}")
    done = [f"{len(result.ranking)} images scored in {result.seconds:.0f} s"]
    if result.csv_path is not None:
        done.append(f"ranking -> {result.csv_path}")
    if result.json_path is not None:
        done.append(f"JSON -> {result.json_path}")
    if result.copy_to is not None:
        done.append(f"{result.copied} copied ({result.already_copied} already there) -> {result.copy_to}")
    console.say(", ".join(done))
    if result.failed:
        for _, reason in result.failed:
            typer.echo(f"error: {reason}", err=True)
        raise typer.Exit(2)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fsdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Few-shot segmentation distilled into a fast, support-free segmenter (DistillFSS)."""


def main() -> None:
    """Console entry point (``fsdistill`` and ``python -m fsdistill``)."""
    app()
