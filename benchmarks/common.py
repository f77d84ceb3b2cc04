"""Helpers shared by the benchmarks (run as scripts from this folder, which is then on ``sys.path``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fsdistill.config import ModelCfg
from fsdistill.errors import FsdistillError
from fsdistill.models.build import build_student, build_teacher, save_model
from fsdistill.runtime import write_atomic


def random_student(directory: Path, cfg: ModelCfg) -> Path:
    """A one-class student artifact of ``cfg`` with random head weights: what speed depends on, without training."""
    student = build_student(build_teacher(cfg, 1), cfg.student_width, cfg.refiner)
    return save_model(
        directory,
        student,
        cfg,
        class_names=["background", "foreground"],
        palette=[(0, 0, 0), (255, 0, 0)],
        train_config={},
        support_info={},
        training={},
    )


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON in ``path``, written atomically: a benchmark killed while writing its results
    leaves the previous file whole (``--merge`` and readers of the docs read these files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=float) + "\n")


def write_results(out: Path, report: dict[str, Any], table: str) -> None:
    """``out/results.json`` (the report) and ``out/results.md`` (its markdown ``table``), then the table printed."""
    write_json(out / "results.json", report)
    write_atomic(out / "results.md", table)
    print(table)


def fail(message: str) -> NoReturn:
    """End the script as argparse ends a usage error: ``error: <message>`` on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main`` as its ``__main__`` does: fsdistill's user errors (a missing folder, a bad option
    value, an unreadable model) end in their one sentence and exit status 2 instead of a traceback."""
    try:
        main()
    except FsdistillError as exc:
        fail(str(exc))
