"""Helpers shared by the speed benchmarks (run as scripts from this folder, which is then on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

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
