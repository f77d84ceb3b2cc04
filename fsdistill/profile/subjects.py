"""What ``profile`` measures: the models of each ways value (random or a run's) and their random inputs and supports."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsdistill.config import ModelCfg
from fsdistill.profile.measure import _sync


def _random_images(n: int, size: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def _random_masks(ways: int, shots: int, size: int, gen: torch.Generator) -> Tensor:
    """ways·shots × size × size class ids, way-major: support i shows class i // shots + 1 as random blobs."""
    cells = max(2, size // 32)
    coarse = torch.rand(ways * shots, 1, cells, cells, generator=gen) > 0.6
    coarse[:, :, cells // 2, cells // 2] = True  # never an empty mask
    blobs = torch.nn.functional.interpolate(coarse.float(), size=(size, size), mode="nearest")[:, 0].bool()
    ids = torch.arange(ways).repeat_interleave(shots) + 1
    return (blobs.long() * ids[:, None, None]).to(torch.uint8)


@dataclass
class _Models:
    """The models of one ways value (teacher and/or student share the backbone in random mode)."""

    ways: int
    backbone: nn.Module
    teacher: nn.Module | None
    student: nn.Module | None
    _pair: tuple[nn.Module | None, nn.Module] | None = None

    def inference_pair(self, device: torch.device) -> tuple[nn.Module | None, nn.Module]:
        """(student, backbone) as predict runs them on ``device`` (:func:`fsdistill.models.build.for_inference`),
        copied on first use: the teacher shares the backbone and runs it as it is."""
        from fsdistill.models.build import for_inference

        if self._pair is None:
            if self.student is not None:
                student = for_inference(copy.deepcopy(self.student), device, "student")
                self._pair = (student, student.backbone)
            else:
                self._pair = (None, for_inference(copy.deepcopy(self.backbone), device, "student"))
        return self._pair


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tensors_mb(tensors: list[Tensor]) -> float:
    """MB of the distinct ``tensors`` (one listed twice counts once)."""
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values()) / 2**20


def _weights_mb(module: nn.Module) -> float:
    return _tensors_mb([*module.parameters(), *module.buffers()])


def _support_mb(support: Any) -> float:
    return _tensors_mb(
        [m for maps in support.feats.values() for m in maps] + [*support.masks.values(), support.present]
    )


class _RandomFactory:
    """Random-weight teacher + student per ways value; the teacher weights are shared across ways values."""

    def __init__(self, cfg: ModelCfg, max_ways: int, device: torch.device) -> None:
        from fsdistill.models.build import build_teacher

        self.cfg, self.device = cfg, device
        self.base = build_teacher(cfg, max_ways, pretrained=False).to(device).eval()

    def models(self, ways: int) -> _Models:
        from fsdistill.models.build import build_student, build_teacher

        if ways == self.base.num_classes:
            teacher = self.base
        else:
            teacher = build_teacher(self.cfg, ways, pretrained=False)
            teacher.backbone = self.base.backbone  # one backbone for every ways value (and for the support cache)
            with contextlib.suppress(RuntimeError):  # per-class parameters would not fit; random weights time alike
                teacher.load_state_dict(self.base.state_dict())
            teacher = teacher.to(self.device).eval()
        student = build_student(teacher, self.cfg.student_width).to(self.device).eval()
        return _Models(ways, teacher.backbone, teacher, student)


def _load_run(path: Path, device: torch.device) -> tuple[_Models, dict[str, Any]]:
    """Teacher and/or student of a run (or one artifact) → models, plus size/classes/backbone info."""
    from fsdistill.checkpoint import resolve_model_dir
    from fsdistill.errors import CheckpointError
    from fsdistill.models.build import load_model

    loaded = {}
    path = Path(path)
    for kind in ("teacher", "student"):
        try:
            directory = resolve_model_dir(path, kind)
        except CheckpointError:
            continue
        loaded[kind] = load_model(directory, kind)
    if not loaded:
        resolve_model_dir(path)  # raises the usual "no artifact" message
        raise CheckpointError(f"{path} holds no teacher or student artifact; pass a run folder to --model.")
    first = next(iter(loaded.values()))
    sizes = {m.size for m in loaded.values()}
    classes = {len(m.class_names) - 1 for m in loaded.values()}
    if len(sizes) > 1 or len(classes) > 1:
        raise CheckpointError(f"The teacher and student of {path} disagree on size or classes; profile one artifact.")
    models = {kind: m.model.to(device).eval() for kind, m in loaded.items()}
    teacher, student = models.get("teacher"), models.get("student")
    backbone = (student or teacher).backbone
    info = {
        "size": first.size,
        "ways": classes.pop(),
        "backbone": first.config["backbone"]["name"],
        "class_names": first.class_names,
        "artifacts": {k: str(m.path) for k, m in loaded.items()},
    }
    return _Models(info["ways"], backbone, teacher, student), info


class _Supports:
    """W×S random supports; their features are encoded once (cache mode) and sliced per cell."""

    def __init__(self, ways: int, shots: int, size: int, gen: torch.Generator, device: torch.device) -> None:
        self.ways, self.shots, self.device = ways, shots, device
        self.images = _random_images(ways * shots, size, gen).to(device)
        self.masks = _random_masks(ways, shots, size, gen).to(device)
        self.full = None  # SupportFeatures of all W×S supports (num_classes = W)
        self.encode_ms: float | None = None

    def index(self, ways: int, shots: int) -> list[int]:
        return [c * self.shots + j for c in range(ways) for j in range(shots)]

    def encode(self, teacher: nn.Module) -> None:
        with torch.no_grad():
            t0 = time.perf_counter()
            feats = teacher.backbone.encode_batched(self.images)
            self.full = teacher.prepare_support(feats, self.masks)
            _sync(self.device)
            self.encode_ms = (time.perf_counter() - t0) * 1000.0

    def cell(self, ways: int, shots: int) -> Any:
        """SupportFeatures of a cell for a ``ways``-class teacher (a view when it is a prefix: no copy)."""
        from fsdistill.models.teacher import SupportFeatures

        full = self.full
        n = ways * shots
        if shots == self.shots:  # way-major order: the first ways·S supports
            pick = lambda t: t[:n]  # noqa: E731
        else:
            index = torch.tensor(self.index(ways, shots), device=self.device)
            pick = lambda t: t.index_select(0, index)  # noqa: E731
        return SupportFeatures(
            feats={lvl: [pick(m) for m in maps] for lvl, maps in full.feats.items()},
            masks={lvl: pick(m)[:, :ways] for lvl, m in full.masks.items()},
            present=pick(full.present)[:, :ways],
        )

    def raw(self, ways: int, shots: int) -> tuple[Tensor, Tensor]:
        index = torch.tensor(self.index(ways, shots), device=self.device)
        return self.images.index_select(0, index), self.masks.index_select(0, index)
