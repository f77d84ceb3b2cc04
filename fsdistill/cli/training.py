"""Commands on a support folder: ``check``, ``adapt`` (TransferFSS) and ``distill`` (DistillFSS)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fsdistill.cli.common import (
    SEED_MAX,
    AdaptStepsOpt,
    AugmentOpt,
    BackboneOpt,
    BackboneWeightsOpt,
    ConfigOpt,
    DecoderOpt,
    DistillStepsOpt,
    GpusPerWorkerOpt,
    LrOpt,
    NormAdaptOpt,
    OutRunOpt,
    OverwriteOpt,
    PrecisionOpt,
    QuietOpt,
    RayAddressOpt,
    SeedOpt,
    SizeOpt,
    SupportOpt,
    TeacherWeightsOpt,
    TrainDeviceOpt,
    TrainOpt,
    _model_overrides,
    _say,
    _train_overrides,
    _write_json,
    check_json_target,
    command,
    engine_option,
    model_command,
    path_argument,
    path_option,
    torchrun_group,
)


@command
def check(
    support_dir: Annotated[
        Path, path_argument(metavar="SUPPORT_DIR", help="Support folder (or .zip export) to validate.")
    ],
    json_out: Annotated[Path | None, path_option("--json", help="Also write the report as JSON here.")] = None,
    device: Annotated[
        str, typer.Option("--device", help="Accepted like every command's (check reads files only, no model).")
    ] = "auto",
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, max=SEED_MAX, help="Accepted like every command's (nothing random)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Validate a support folder: layout, pairs, orphans, classes, sizes and warnings.

    Example: fsdistill check ./support --json report.json
    """
    from fsdistill.data.check import BrokenPairsError, check_support
    from fsdistill.runtime import check_device_name

    check_device_name(device)  # a typo is still an error, as in the commands that run a model
    check_json_target(json_out)  # before the report is printed, not after it
    try:
        report = check_support(support_dir)
    except BrokenPairsError as err:  # the rest of the folder is reported too, and a script gets its JSON
        _say(quiet)(err.report.to_text())
        if json_out is not None:
            _write_json(json_out, err.report.to_dict())
        raise
    _say(quiet)(report.to_text())
    if quiet:  # errors and warnings only: the report's warnings, as every command says them
        for warning in report.warnings:
            typer.echo(f"warning: {warning}", err=True)
    if json_out is not None:
        _write_json(json_out, report.to_dict())


@model_command(torchrun=True)
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
    precision: PrecisionOpt = None,
    norm_adapt: NormAdaptOpt = None,
    out: OutRunOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    device: TrainDeviceOpt = None,
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
            "train": _train_overrides(steps, lr, seed, train, augment, precision, norm_adapt),
        },
        flag_names=True,
        command="adapt",
    )
    with torchrun_group(cfg.device) as main:
        result = api.adapt(cfg, quiet=quiet or not main, overwrite=overwrite)
    if not main:
        return
    _say(quiet)(
        f"teacher: {result.teacher_dir}  ({result.stats['steps']} steps, {result.stats['seconds']:.0f} s"
        f"{_precision_words(result.stats)})"
    )


def _say_views_left_out(stats: dict[str, Any], say: Callable[[str], None]) -> None:
    """Where distill's automatic augmentation cached the supports in one view: why, and how to have the flip views
    anyway."""
    if stats.get("flip_views_left_out"):
        say(
            f"note: the supports were cached without their flip views ({stats['flip_views_left_out']}); "
            "--augment caches them anyway, --no-augment silences this."
        )


@model_command(torchrun=True)
def distill(
    support: SupportOpt = None,
    teacher: Annotated[
        Path | None, path_option("--teacher", help="Adapted teacher (RUN/teacher) to distill from.")
    ] = None,
    freeze_teacher: Annotated[
        bool, typer.Option("--freeze-teacher", help="With --teacher: train only the student against it.")
    ] = False,
    init: Annotated[
        Path | None,
        path_option(
            "--init",
            help="Continue from this run (its teacher and student) after the support folder grew: classes are "
            "matched by name, a new class starts fresh, the run's model settings are kept; without --steps it stops once "
            "the new classes are covered (min_steps, queries_per_class), not at the loss plateau.",
        ),
    ] = None,
    drop_class: Annotated[
        list[str] | None,
        typer.Option("--drop-class", help="With --init: a class of the run the folder no longer has (repeatable)."),
    ] = None,
    unlabeled: Annotated[
        Path | None,
        path_option(
            "--unlabeled",
            help="A folder of unlabeled images like the supports: after training on the supports teacher and student label "
            "them and the student also learns from them.",
        ),
    ] = None,
    unlabeled_max: Annotated[
        int | None,
        typer.Option(
            "--unlabeled-max", help="Use at most N pool images (a random sample of a larger pool; default 200)."
        ),
    ] = None,
    engine: Annotated[
        str,
        engine_option(
            "labels the --unlabeled pool in a pool of Ray actors, each with its own copy of the support-phase "
            "teacher and student; the same labels, and training stays in this process"
        ),
    ] = "local",
    address: RayAddressOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="With --engine ray: the Ray actors (default: the cluster's CPUs up to 8, or with --gpus-per-worker "
            "its GPUs / --gpus-per-worker).",
        ),
    ] = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    backbone: BackboneOpt = None,
    backbone_weights: BackboneWeightsOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    decoder: DecoderOpt = None,
    student_width: Annotated[
        int | None,
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
    precision: PrecisionOpt = None,
    norm_adapt: NormAdaptOpt = None,
    out: OutRunOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    device: TrainDeviceOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """DistillFSS: train the support-free student (jointly with the teacher); writes RUN/student/.

    Example: fsdistill distill --support ./support --backbone efficientnet-lite0
    (several GPUs, data-parallel: torchrun --standalone --nproc-per-node 4 -m fsdistill distill --support ./support)
    (pool labelled on a Ray cluster: fsdistill distill --support ./support --unlabeled ./pool --engine ray --address auto)
    """
    from fsdistill import api
    from fsdistill.config import DistillCfg, load_config
    from fsdistill.errors import ConfigError

    cfg = load_config(
        DistillCfg,
        config,
        {
            "support": support,
            "out": out,
            "teacher": teacher,
            "freeze_teacher": freeze_teacher or None,
            "init": init,
            "drop_class": drop_class or None,
            "unlabeled": unlabeled,
            "unlabeled_max": unlabeled_max,
            "device": device,
            "model": _model_overrides(backbone, backbone_weights, teacher_weights, size, decoder, student_width),
            "train": _train_overrides(steps, lr, seed, train, augment, precision, norm_adapt),
        },
        flag_names=True,
        command="distill",
    )
    if unlabeled_max is not None and cfg.unlabeled is None:
        raise ConfigError("--unlabeled-max only applies with --unlabeled POOL; add the pool or drop it.")
    with torchrun_group(cfg.device) as main:
        result = api.distill(
            cfg,
            quiet=quiet or not main,
            overwrite=overwrite,
            engine=engine,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
        )
    if not main:
        return
    say = _say(quiet)
    say(f"student: {result.student_dir}  ({result.student_parameters:,} parameters, {result.student_mb:.1f} MB)")
    if result.teacher_dir is not None:
        say(f"teacher: {result.teacher_dir}")
    init = result.stats.get("init")
    if init:
        say(
            f"continued from {init['run']}: kept {', '.join(init['kept']) or 'no class'}; new "
            f"{', '.join(init['new']) or 'none'}; dropped {', '.join(init['dropped']) or 'none'}"
        )
        if init.get("moved"):
            # The folder lists its classes in another order than the run did: masks predicted by the two differ.
            moved = ", ".join(f"{name} {ids[0]}→{ids[1]}" for name, ids in init["moved"].items())
            say(
                f"note: class ids (mask values and colours) differ from {init['run']}'s: {moved}; the new model's "
                "masks follow this folder's class order."
            )
    pool = result.stats.get("pool")
    low, high = pool.get("crop_gain", (1.0, 1.0)) if pool else (1.0, 1.0)
    if low < 1 or high > 1:
        shift = " and ".join(w for w, on in (("darker", low < 1), ("brighter", high > 1)) if on)
        say(
            f"unlabeled pool: its images are {shift} than the supports: the student's crop views of the supports "
            f"were scaled {low:.2f}-{high:.2f}x in brightness (train.pool_brightness)"
        )
    if pool and not pool["used"]:
        say(f"unlabeled pool: {pool['reason']}.")
    elif pool:
        scores = pool["teacher_leave_one_out"]
        untrusted = [c for c in scores if c not in pool["trusted"]]
        if untrusted:
            # The leave-one-out IoU the trust was decided on (the teacher before the pool phase; the per-class check
            # below measures the final one), or why a class has none.
            shown = ", ".join(
                f"{c} {scores[c]:.2f}" if scores[c] is not None else f"{c} none (in one support)" for c in untrusted
            )
            if pool["labeller"] == "student":
                say(
                    f"unlabeled pool: the teacher is trusted with no class (its leave-one-out IoU after the support "
                    f"phase {shown}; {pool['min_iou']} needed): the student's own labels teach every class, without "
                    "the teacher's maps"
                )
            else:
                say(
                    f"unlabeled pool: the teacher's labels and maps not used for {', '.join(untrusted)} (its "
                    f"leave-one-out IoU after the support phase {shown}; {pool['min_iou']} needed)"
                )
        skipped = f", {len(pool['skipped'])} unreadable skipped" if pool["skipped"] else ""
        if pool.get("copies_left_out"):
            skipped += f", {pool['copies_left_out']} copies of other pool or support images left out"
        if pool.get("masks_left_out"):
            skipped += f", {pool['masks_left_out']} mask files of a labelled folder left out"
        say(
            f"unlabeled pool: {pool['images']} of {pool['pool_size']} images labelled by "
            f"{LABELLER_WORDS[pool['labeller']]} in "
            f"{pool['label_seconds']:.0f} s ({100 * pool['labelled_fraction']:.0f} % of the pixels confident"
            f"{skipped}); {pool['support_steps']} steps on the supports, then {pool['pool_steps']} with the pool"
        )
    polish = result.stats.get("polish_steps")
    say(
        f"trained {result.stats['steps']} steps ({result.stats['stop_reason']})"
        f"{f', then the student alone {polish} steps' if polish else ''} in {result.stats['seconds']:.0f} s"
        f"{_precision_words(result.stats)}"
    )
    _say_views_left_out(result.stats, say)
    if result.stats["steps"] == 0 and not init:  # a continued run's student at 0 steps is the run's
        say(
            "note: 0 steps: the student is untrained and predicts nothing useful; adapt --steps 0 gives the "
            "training-free teacher baseline."
        )
    if result.check is not None:
        frozen = cfg.teacher if result.teacher_dir is None else None
        _print_support_check(result.check, say, result.run_dir, frozen, quiet)


# How the run's summary line names each pool labeller (train.pool_labeller).
LABELLER_WORDS = {
    "teacher": "the teacher",
    "student": "the student",
    "mean": "teacher and student (mean)",
    "agree": "teacher and student (where they agree)",
}


def _precision_words(stats: dict) -> str:
    """The summary's words for where the run trained and, in bfloat16 mixed precision, in what arithmetic (float32
    goes unsaid)."""
    device = f" on {stats['device']}" if stats.get("device") else ""
    return device + (", bfloat16 mixed precision" if stats.get("precision") == "bfloat16" else "")


def _print_support_check(
    check, say: Callable[[str], None], run_dir: Path, frozen_teacher: Path | None = None, quiet: bool = False
) -> None:
    """The per-class table of distill's support check, then one warning line per dead-looking class and, after
    them (not under ``quiet``: errors and warnings only), where to find the images to add and how to rerun with
    them (stderr). ``frozen_teacher``: the run distilled from that teacher and wrote none of its own, so ``--init``
    (which needs one) cannot continue it."""

    def fmt(value: float | None) -> str:
        return "  -  " if value is None else f"{value:.2f}"

    say(
        "per-class check on the support folder (leave-one-out: teacher on each support with the others; "
        "fit: student on its training images):"
    )
    width = max(len(c.name) for c in check.classes)
    for c in check.classes:
        say(f"  {c.name:<{width}}  in {c.supports:>3} supports  leave-one-out {fmt(c.leave_one_out)}  fit {fmt(c.fit)}")
    if check.note:
        say(f"  ({check.note})")
    warnings = check.warnings()
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    if warnings and not quiet:
        again = (
            f"--init {run_dir} continues this run"
            if frozen_teacher is None
            else (f"--teacher {frozen_teacher} --freeze-teacher distills from the same teacher")
        )
        # On the macaque example suggest's top 5 images lifted its two rarest structures most (docs/benchmarks.md,
        # "Which images to label").
        typer.echo(
            f"hint: `fsdistill suggest UNLABELED_DIR --model {run_dir}` ranks unlabeled images by what labelling "
            f"them would teach this run; add the top ones with their masks and rerun distill ({again})",
            err=True,
        )
