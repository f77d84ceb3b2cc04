"""The ``fsdistill`` command line: parse options, call ``fsdistill.api``, print results.

The only module that imports typer or prints. Exit codes: 0 success, 2 a user error (one sentence on stderr, no
traceback), 1 an internal error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from fsdistill import __version__
from fsdistill.cli.common import app

# Importing the command modules registers their commands; help lists them in this order.
# isort: off
from fsdistill.cli import training  # noqa: E402, F401  check, adapt, distill
from fsdistill.cli import inference  # noqa: E402, F401  predict, evaluate, profile, export
# isort: on

__all__ = ["app", "main"]


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
    _set_help_width()
    if _another_torchrun_rank():
        _run_quietly_parsed()
    app()


def _another_torchrun_rank() -> bool:
    """Whether this process is one of a torchrun launch other than rank 0 (a hand-set WORLD_SIZE without the rest
    of a launch is none: no rank 0 would print this process's usage errors)."""
    from fsdistill.distributed import launch_from_env
    from fsdistill.errors import ConfigError

    try:
        launch = launch_from_env()
    except ConfigError:
        return False
    return launch is not None and launch.rank != 0


def _run_quietly_parsed() -> None:
    """Run the command line in a torchrun process of rank > 0: a usage error (a bad flag) ends it with the code
    rank 0 gives it, which prints the error once (every process parses the same arguments)."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        # By class name: recent typer releases carry their own copy of click, whose classes are not click's.
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in kinds:
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if "Abort" in kinds:
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _set_help_width() -> None:
    """Help and usage errors are drawn by rich at the terminal's width: ``COLUMNS=0`` (set by some CI runners) made
    them empty, and off a terminal (80 columns: a CI log, a file) option defaults were cut with "…". A width below
    40 counts as unset, and with neither stdout nor stderr a terminal they are 120 wide, unless ``TERMINAL_WIDTH``
    or ``COLUMNS`` says."""
    from typer import rich_utils

    columns = os.environ.get("COLUMNS", "")
    if columns and (not columns.isdigit() or int(columns) < 40):
        del os.environ["COLUMNS"]
    off_a_terminal = not sys.stdout.isatty() and not sys.stderr.isatty()  # help on stdout, usage errors on stderr
    if rich_utils.MAX_WIDTH is None and "COLUMNS" not in os.environ and off_a_terminal:
        rich_utils.MAX_WIDTH = 120
