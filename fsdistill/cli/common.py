"""What every command shares: the typer app, option types, error handling, console output."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from fsdistill.errors import ConfigError, DataError, FsdistillError


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
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_repeated_paths(self, args)
        return super().parse_args(ctx, args)


def _refuse_repeated_paths(command: Any, args: list[str]) -> None:
    """A path option given twice (``--unlabeled a --unlabeled b``): click keeps the last, so the first folder was
    dropped in silence (the user meant both). Refused as a usage error (exit 2); repeatable options are left
    alone."""
    paths, takes_value = {}, set()
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or getattr(param, "is_flag", False):
            continue
        takes_value.update(param.opts)
        if set(param.opts) & PATH_OPTIONS and not param.multiple:
            paths.update(dict.fromkeys(param.opts, param.opts[0]))
    given: dict[str, list[str]] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        name, eq, value = token.partition("=")
        if token.startswith("-") and not token.startswith("--") and len(token) > 2:
            # Short options clustered (-qo out) or with their value glued on (-oout): the first that takes a
            # value takes the rest of the token, or else the next one.
            for at in range(1, len(token)):
                if f"-{token[at]}" in takes_value:
                    name, value = f"-{token[at]}", token[at + 1 :] or next(tokens, "")
                    break
        elif name in takes_value and not eq:
            value = next(tokens, "")  # the option's value, never read as an option itself
        if name in paths:
            given.setdefault(paths[name], []).append(value)
    for option, values in given.items():
        if len(values) > 1:
            raise typer.BadParameter(
                f"was given {len(values)} times ({', '.join(values)}); it takes one path (the last would be used "
                "alone)",
                param_hint=f"'{option}'",
            )


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


def non_empty_text(value: str) -> str:
    """A path given as text (an object-store URI may be one): an empty one (an unset shell variable, ``--out
    "$RUN"``) is refused, not read as the current folder (a run written into it, a folder scanned from it); a
    leading ``~`` the shell left (quoted, ``--out=~/x``) is the home folder, not a folder named "~"."""
    if not str(value).strip():
        raise typer.BadParameter("is empty; give a path (an unset shell variable?)")
    if str(value) == "-":  # standard input or output in many tools; here it named a file or folder "-"
        raise typer.BadParameter(
            "is '-': fsdistill reads and writes files, not standard input or output; give a path (/dev/stdout for "
            "the terminal)"
        )
    return os.path.expanduser(str(value))


def non_empty_path(value: str) -> Path:
    """A path option's value, refused when empty, ``~`` expanded (see :func:`non_empty_text`)."""
    return Path(non_empty_text(value))


# Names of the options that take one path (or URI): given twice, refused (see _refuse_repeated_paths).
PATH_OPTIONS: set[str] = set()


def path_option(*names: str, parser: Callable[[str], Any] = non_empty_path, **kwargs: Any) -> Any:
    """A path option: empty values refused, the help naming it <path> (as typer shows a Path), one value only."""
    PATH_OPTIONS.update(name for name in names if name.startswith("-"))
    return typer.Option(*names, parser=parser, metavar=kwargs.pop("metavar", "<path>"), **kwargs)


# Path arguments: empty values refused.
path_argument = functools.partial(typer.Argument, parser=non_empty_path)

# Option types that several commands share.
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu).")]
# adapt / distill: None leaves the --config file's device: (default auto) in place.
TrainDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu). Default: the --config's, or auto."
    ),
]
# Seeds from 0 to 2^32 - 1: every generator takes them (numpy's legacy seed stops there; larger ones overflowed).
SEED_MAX = 2**32 - 1
SeedOpt = Annotated[int | None, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed (default 0).")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or summaries: errors and warnings only.")
]
InferSeedOpt = Annotated[
    int | None,
    typer.Option("--seed", min=0, max=SEED_MAX, help="Accepted like every command's (inference is deterministic)."),
]
ConfigOpt = Annotated[Path | None, path_option("--config", help="YAML file of options (flags override it).")]
BackboneOpt = Annotated[
    str | None, typer.Option("--backbone", help="efficientnet-lite0 (default, offline), resnet50, swin-b.")
]
BackboneWeightsOpt = Annotated[
    Path | None, path_option("--backbone-weights", help="Local .pth/.safetensors backbone weights (no download).")
]
TeacherWeightsOpt = Annotated[
    Path | None, path_option("--teacher-weights", help="Official DCAMA/DistillFSS checkpoint to start from.")
]
# Typer cannot show defaults of options whose default is None (None lets --config YAML values through), so the
# help texts say them; tests/test_first_hour.py checks them against config.py. No square brackets: typer's rich
# markup reads them as tags and dropped "[default: ...]" from the help.
_AUTO_STEPS = "default: automatic from the support folder, see README"
AdaptStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps", help=f"Optimiser steps ({_AUTO_STEPS}). 0 = the untrained teacher (training-free baseline)."
    ),
]
DistillStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help=f"Optimiser steps ({_AUTO_STEPS}; with --unlabeled, of each phase: supports, then pool). 0 = no "
        "training: the student is written untrained and predicts nothing useful (a quick check of the pipeline); "
        "for the training-free baseline use adapt --steps 0.",
    ),
]
LrOpt = Annotated[float | None, typer.Option("--lr", help="AdamW learning rate (default 3e-3).")]
SizeOpt = Annotated[
    int | None, typer.Option("--size", help="Square input size in pixels, a multiple of 32 (default 384).")
]
OutRunOpt = Annotated[Path | None, path_option("--out", help="Run folder (default runs/<date>-<time>).")]
SupportOpt = Annotated[
    Path | None,
    path_option(
        "--support",
        help="Support folder (images + masks, or an annotation tool's export: COCO, CVAT, Label Studio; a .zip is "
        "unpacked to a cache); required unless the --config YAML sets support:.",
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the run already in --out (refused without it).")
]
TrainOpt = Annotated[
    str | None,
    typer.Option(
        "--train",
        help="Which parts of the teacher learn from your images, comma-separated (default mapper,merge,mixer): "
        "mapper and merge turn the raw image-to-support matches into masks, attention is the matching itself, "
        "mixer draws the final mask. The backbone's weights never change (see --norm-adapt).",
    ),
]
DecoderOpt = Annotated[
    str | None,
    typer.Option(
        "--decoder",
        help="light (default: fast; its per-class part still grows with the classes: the student measured 1.23x the "
        "bare backbone's time at 1 class, 2.5x at 20, 2 threads), shared (for many classes: narrow per-class work at "
        "stride 8 only, ConvDist groups shared beyond 4 classes; measured 1.14-1.19x at 1 class, 1.3x at 20, 1.5x at "
        "50, but less accurate on small structures, see docs/benchmarks.md) or dcama (the paper's, ~11 GFLOP per "
        "class at 384 px).",
    ),
]
AugmentOpt = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help="Cache each support in its four flip views (default: distill while they fit in 2 GiB, adapt off).",
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto (default: bfloat16 mixed precision where the device computes bfloat16 in hardware, a CUDA GPU "
        "or a CPU with AMX / AVX-512 BF16; else float32), float32 or bfloat16.",
    ),
]
NormAdaptOpt = Annotated[
    float | None,
    typer.Option(
        "--norm-adapt",
        help="How far the frozen backbone's normalisation statistics move from ImageNet's towards your images', "
        "0 to 1 (default 0.5, or 0 with --teacher-weights: published weights behave as published; 0 = ImageNet's). "
        "Its weights never change.",
    ),
]


# The Ray engine's options, shared by predict, suggest and distill.
def engine_option(ray_does: str) -> Any:
    """The ``--engine`` option of a command; ``ray_does``: what ``--engine ray`` does there."""
    return typer.Option("--engine", help=f"local | ray: ray {ray_does} (pip install 'fsdistill\\[ray]').")


RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --engine ray: the cluster to join (auto, or ray://HOST:10001; default: a new local one).",
    ),
]
GpusPerWorkerOpt = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", min=0, help="With --engine ray: GPUs per actor (default 0; 0.5 shares one)."),
]
ModelOpt = Annotated[
    Path | None, path_option("--model", help="Run folder or artifact folder (default: newest run under ./runs).")
]


def _say(quiet: bool) -> Callable[[str], None]:
    """A command's printer of results on stdout, silent under --quiet."""
    return (lambda text: None) if quiet else typer.echo


# What Ctrl-C leaves behind and how to go on, per command ("": the commands that write only when complete).
_INTERRUPTED = {
    "": "nothing half-written was left (outputs are written only when complete); re-run the same command to start "
    "again.",
    "predict": "the masks written so far are kept; re-run the same command to go on where it stopped (--overwrite "
    "would redo every image).",
    "profile": 'profile.json and profile.csv hold the cells measured so far ("complete": false; stopped before the '
    "first cell, an earlier profile in --out is left as it was); re-run the same command for the whole grid.",
}


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
        library_log = logging.getLogger("fsdistill")
        handler = _LibraryLogHandler(quiet=bool(kwargs.get("quiet")))
        library_log.addHandler(handler)
        try:
            with warnings.catch_warnings():
                _quiet_pillow()
                return fn(*args, **kwargs)
        except FsdistillError as exc:
            if not getattr(exc, "said_by_main", False):  # under torchrun, rank 0's error copied to the others
                typer.echo(f"error: {_rank_note()}{exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {_INTERRUPTED.get(fn.__name__, _INTERRUPTED[''])}", err=True)
            raise typer.Exit(130) from None
        finally:
            library_log.removeHandler(handler)
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    return wrapper


def _quiet_pillow() -> None:
    """Keep Pillow's warnings about images it reads anyway off stderr, where they came as raw library lines (with
    their source line) in every command: a "decompression bomb" between its warning and error sizes (89–179 Mpx;
    above, the image is refused in a sentence), "Corrupt EXIF data" and its kind (four lines per support in
    distill; such an image is read, its broken EXIF block counting as no rotation). Set for the command's run (the
    library leaves a Python caller's warnings alone)."""
    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class _LibraryLogHandler(logging.StreamHandler):
    """The library's log warnings on stderr as ``warning: …`` lines (a ``note: …`` as it is, and not under
    ``--quiet``: errors and warnings only); without it they came out bare, by Python's last-resort handler."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.quiet and record.getMessage().startswith("note: "))

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if text.startswith(("note: ", "warning: ")) else f"warning: {text}"


def _rank_note() -> str:
    """``rank R: `` in a process that torchrun started as rank R > 0, else nothing: each process reports its own
    errors (one may fail alone, on a node without the data, say), and the rank tells the copies apart."""
    rank = os.environ.get("RANK", "0")
    return f"rank {rank}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") and rank != "0" else ""


def command(fn: Callable | None = None, *, torchrun: bool = False) -> Callable:
    """Register a guarded command under its function name. ``torchrun``: it trains data-parallel under torchrun;
    the others refuse to run as several torchrun processes, which would each do the whole job (and print it)."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def one_process_only(*args: Any, **kwargs: Any) -> Any:
            from fsdistill.distributed import launch_from_env

            if not torchrun and launch_from_env() is not None:
                raise ConfigError(
                    f"{fn.__name__} does not run under torchrun (only adapt and distill train data-parallel); run "
                    "it as one process (predict and suggest split their images with --shard I/N or --engine ray)."
                )
            return fn(*args, **kwargs)

        return app.command(cls=_Command)(_guarded(one_process_only))

    return register(fn) if fn is not None else register


def model_command(fn: Callable | None = None, *, torchrun: bool = False) -> Callable:
    """Register a guarded command that runs models, after :func:`fsdistill.runtime.retain_freed_memory` and
    :func:`fsdistill.runtime.flush_denormals`; ``torchrun`` as for :func:`command`."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def set_up_then_run(*args: Any, **kwargs: Any) -> Any:
            from fsdistill.runtime import flush_denormals, retain_freed_memory

            retain_freed_memory()
            flush_denormals()
            return fn(*args, **kwargs)

        return command(set_up_then_run, torchrun=torchrun)

    return register(fn) if fn is not None else register


@contextmanager
def torchrun_group(device: str) -> Iterator[bool]:
    """The process group of a torchrun launch for the block (nothing in a plain run); yields whether this process
    reports (rank 0, or the only process). The other ranks' library warnings are silenced: rank 0 says them."""
    import logging

    from fsdistill.distributed import launch_from_env, process_group

    with process_group(launch_from_env(), device) as launch:
        main = launch is None or launch.rank == 0
        if not main:
            logging.getLogger("fsdistill").setLevel(logging.ERROR)
        yield main


def _train_overrides(
    steps: int | None,
    lr: float | None,
    seed: int | None,
    train: str | None,
    augment: bool | None,
    precision: str | None = None,
    norm_adapt: float | None = None,
) -> dict[str, Any]:
    groups = [g.strip() for g in train.split(",") if g.strip()] if train is not None else None
    if groups == []:  # --train "" (an unset shell variable, say) silently meant the default groups
        raise ConfigError(
            "--train got no group names; list some of mapper,merge,attention,mixer, or leave --train out for the "
            "default mapper,merge,mixer."
        )
    return {
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "train": groups,
        "augment": augment,
        "precision": precision,
        "norm_adapt": norm_adapt,
    }


def _bar(desc: str, quiet: bool):
    """An image progress bar whose total the API reports, once it has found the images, to ``bar.reset``."""
    from fsdistill.runtime import progress

    return progress(desc=desc, unit="img", quiet=quiet)


def check_json_target(path: Path | None) -> None:
    """Refuse a ``--json`` file that cannot be written (a folder, an unwritable place) before the command's work."""
    from fsdistill.runtime import ensure_writable_file

    if path is not None:
        ensure_writable_file(path, "--json", "report.json")


def _write_json(path: Path, data: dict) -> None:
    from fsdistill.runtime import write_atomic

    check_json_target(path)
    try:
        write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:
        raise DataError(
            f"Cannot write {path} ({exc.strerror or type(exc).__name__}); choose another --json file."
        ) from None


def _model_overrides(backbone, backbone_weights, teacher_weights, size, decoder, student_width=None) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "backbone_weights": backbone_weights,
        "teacher_weights": teacher_weights,
        "size": size,
        "decoder": decoder,
        "student_width": student_width,
    }


def _model_announcer(bar, model: Path | None, quiet: bool) -> Callable[[str], None]:
    """The ``on_model`` callback of predict and suggest: without --model the newest run is used, so say which
    (above the progress bar), or the outputs cannot be traced to a model."""

    def say_model(path: str) -> None:
        if model is None and not quiet:
            bar.write(f"model: {path} (newest run under ./runs; pass --model to choose)", file=sys.stderr)

    return say_model


def _exit_on_failures(failed: list[tuple[str, str]]) -> None:
    """One ``error:`` line per image that could not be read, then exit 2 (predict and suggest)."""
    for _, reason in failed:
        typer.echo(f"error: {reason}", err=True)
    if failed:
        raise typer.Exit(2)
