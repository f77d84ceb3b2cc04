"""Helpers shared by the benchmarks (run as scripts from this folder, which is then on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsdistill.config import ModelCfg
from fsdistill.models.build import build_student, build_teacher, save_model


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


def write_results(out: Path, report: dict[str, Any], table: str) -> None:
    """``out/results.json`` (the report) and ``out/results.md`` (its markdown ``table``), then the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "results.md").write_text(table)
    print(table)
