"""Build teachers and students from configs, save them as artifacts, and load artifacts back.

The artifact's ``config.json`` is enough to rebuild the module; the weights come from ``model.safetensors``.
A teacher artifact also stores its support set (resized images and masks, uint8) because the teacher needs
supports at inference: images are smaller than cached features for every backbone (Swin-B stage-3 features of
one support are ~20 MB, its resized image 0.4 MB) and do not tie the artifact to one feature layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fsdistill.checkpoint import CONFIG_FILE, WEIGHTS_FILE, is_artifact, load_artifact, recover_artifact, save_artifact
from fsdistill.config import ModelCfg
from fsdistill.errors import CheckpointError
from fsdistill.models.backbone import Backbone, create_backbone
from fsdistill.models.backbone_specs import BackboneSpec
from fsdistill.models.decoder import DECODERS, DCAMADecoder, LightDecoder
from fsdistill.models.student import DistilledStudent
from fsdistill.models.teacher import ATTENTION_LEVELS, DCAMATeacher, SupportFeatures
from fsdistill.runtime import inference_memory_format, library_versions

__all__ = [
    "build_decoder",
    "build_teacher",
    "build_student",
    "for_inference",
    "LoadedModel",
    "save_model",
    "load_model",
    "resolve_model_dir",
]

SUPPORT_IMAGES_KEY = "support.images"
SUPPORT_MASKS_KEY = "support.masks"


def build_decoder(
    spec: BackboneSpec, kind: str, width: int | None = None, mixer_widths: tuple[int, int, int] | None = None
) -> DCAMADecoder | LightDecoder:
    """A fresh decoder for a backbone of ``spec``: built once, given to the teacher and shared with its student.

    Args:
        kind: "dcama" (the paper's) or "light" (see :mod:`fsdistill.models.decoder`).
        width, mixer_widths: ``ModelCfg.decoder_width`` / ``mixer_widths``; None = that decoder's defaults.
    The decoder reads the block maps of the attention levels (stages 2–4) and the last maps of levels 0 and 1.
    """
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {sorted(DECODERS)}")
    sizes: dict = {}
    if width is not None:
        sizes["width"] = width
    if mixer_widths is not None:
        sizes["mixer"] = tuple(mixer_widths)
    return DECODERS[kind](
        num_layers=tuple(spec.num_blocks[lvl] for lvl in ATTENTION_LEVELS),
        skip_channels=(spec.channels[0], spec.channels[1]),
        **sizes,
    )


def build_teacher(cfg: ModelCfg, num_classes: int, pretrained: bool = True) -> DCAMATeacher:
    """A teacher with a frozen backbone (pretrained weights unless ``pretrained=False``) and a fresh head."""
    backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, pretrained=pretrained)
    backbone.check_size(cfg.size, cfg.size)
    return DCAMATeacher(
        backbone,
        build_decoder(backbone.spec, cfg.decoder, cfg.decoder_width, cfg.mixer_widths),
        num_classes,
        heads=cfg.heads,
        use_pe=cfg.use_pe,
        attn_dropout=cfg.attn_dropout,
        voting=cfg.voting,
        qk_norm=cfg.qk_norm,
    )


def for_inference(model: nn.Module, device: torch.device, kind: str) -> nn.Module:
    """Prepare, in place, a model that will only run inference on ``device``: its backbone's batch norms folded
    into their convs (:meth:`~fsdistill.models.backbone.Backbone.fold_batchnorm`) and the memory layout predict
    runs a ``kind`` model in (:func:`fsdistill.runtime.inference_memory_format`). Predict, evaluate and profile
    all prepare their models here, so profile times what predict runs. Never save a model prepared this way:
    its state-dict keys change. Returns ``model``."""
    backbone = model if isinstance(model, Backbone) else model.backbone
    backbone.fold_batchnorm()
    return model.to(memory_format=inference_memory_format(device, kind))


def build_student(teacher: DCAMATeacher, width: int | None) -> DistilledStudent:
    """A student sharing the teacher's backbone and decoder (joint training, as the paper)."""
    return DistilledStudent(teacher.backbone, teacher.decoder, teacher.num_classes, width)


@dataclass
class LoadedModel:
    """A model rebuilt from an artifact, with everything needed to preprocess and label its output."""

    kind: str  # "teacher" | "student"
    path: Path
    model: nn.Module
    config: dict[str, Any]
    support_images: torch.Tensor | None = None  # teacher: S×3×H×W uint8
    support_masks: torch.Tensor | None = None  # teacher: S×H×W uint8
    _support_cache: SupportFeatures | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.config["palette"]]

    @property
    def size(self) -> int:
        return int(self.config["input_size"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.config["backbone"]["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.config["backbone"]["std"])

    def to(self, device: torch.device) -> "LoadedModel":
        self.model.to(device)
        self._support_cache = None
        return self

    def support_features(self) -> SupportFeatures:
        """Teacher only: backbone features of the stored supports, computed once and kept."""
        if self.kind != "teacher":
            raise CheckpointError(f"{self.path} is a {self.kind}; only a teacher has a support set.")
        if self._support_cache is None:
            device = next(self.model.parameters()).device
            feats = self.model.backbone.encode_batched(self.support_images)
            self._support_cache = self.model.prepare_support(feats, self.support_masks.to(device))
        return self._support_cache

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×size×size uint8 images → B×(N+1)×h×w logits at the model's output stride (teacher: with its stored
        supports); the model's backbone normalises them."""
        if self.kind == "teacher":
            return self.model.predict(images, self.support_features())
        return self.model.predict(images)


def _model_args(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, DCAMATeacher):
        block = model.blocks[0]
        return {
            "num_classes": model.num_classes,
            "heads": block.heads,
            "use_pe": block.use_pe,
            "attn_dropout": block.dropout,
            "voting": model.voting,
            "qk_norm": block.qk_norm,
            **model.decoder.arguments(),
        }
    assert isinstance(model, DistilledStudent)
    return {"num_classes": model.num_classes, "student_width": model.width_arg, **model.decoder.arguments()}


def stored_parameters(tensors: dict[str, torch.Tensor]) -> int:
    """Numbers an artifact stores for its model (weights and buffers; a teacher's support images not counted)."""
    return sum(t.numel() for k, t in tensors.items() if not k.startswith("support."))


def save_model(
    directory: Path,
    model: DCAMATeacher | DistilledStudent,
    *,
    class_names: list[str],
    palette: list[tuple[int, int, int]],
    input_size: int,
    train_config: dict[str, Any],
    support_info: dict[str, Any],
    training: dict[str, Any] | None = None,
    support_images: torch.Tensor | None = None,
    support_masks: torch.Tensor | None = None,
) -> Path:
    """Write a teacher or student artifact (atomic). The student's holds no attention weights and no supports."""
    kind = "teacher" if isinstance(model, DCAMATeacher) else "student"
    tensors = dict(model.state_dict())
    if kind == "teacher":
        if support_images is None or support_masks is None:
            raise ValueError("a teacher artifact needs its support images and masks")
        tensors[SUPPORT_IMAGES_KEY] = support_images.to(torch.uint8)
        tensors[SUPPORT_MASKS_KEY] = support_masks.to(torch.uint8)
    spec: BackboneSpec = model.backbone.spec
    config = {
        "kind": kind,
        "created": datetime.now().isoformat(timespec="seconds"),
        "backbone": spec.to_dict(),
        "input_size": input_size,
        "class_names": list(class_names),
        "palette": [list(c) for c in palette],
        "ignore_index": 255,
        "model_args": _model_args(model),
        "train_config": train_config,
        "support": support_info,
        "training": training or {},
        "versions": library_versions(),
        "parameters": stored_parameters(tensors),
    }
    return save_artifact(Path(directory), tensors, config)


def load_model(path: Path, kind: str | None = None) -> LoadedModel:
    """Load an artifact directory, or the ``kind`` (default: student, else teacher) artifact of a run directory."""
    directory = resolve_model_dir(path, kind)
    tensors, config = load_artifact(directory)
    spec = BackboneSpec.from_dict(config["backbone"])
    args = config["model_args"]
    backbone = create_backbone(spec.name, pretrained=False, **spec.model_args)
    decoder = build_decoder(spec, args.get("decoder", "dcama"), args.get("decoder_width"), args.get("mixer_widths"))
    if config["kind"] == "teacher":
        model: nn.Module = DCAMATeacher(
            backbone,
            decoder,
            args["num_classes"],
            heads=args["heads"],
            use_pe=args["use_pe"],
            attn_dropout=args["attn_dropout"],
            voting=args["voting"],
            qk_norm=args.get("qk_norm"),
        )
    elif config["kind"] == "student":
        model = DistilledStudent(backbone, decoder, args["num_classes"], args.get("student_width"))
    else:
        raise CheckpointError(f"{directory} holds an unknown model kind '{config['kind']}'.")
    support_images = tensors.pop(SUPPORT_IMAGES_KEY, None)
    support_masks = tensors.pop(SUPPORT_MASKS_KEY, None)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{directory}/model.safetensors does not fit its config.json ({first}).") from None
    model.eval()
    if config["kind"] == "teacher" and (support_images is None or support_masks is None):
        raise CheckpointError(f"{directory} is a teacher artifact without its support set; re-run fsdistill adapt.")
    return LoadedModel(config["kind"], directory, model, config, support_images, support_masks)


def _newest_run(root: Path, kind: str) -> Path | None:
    """The newest run folder under ``root`` that holds a complete ``kind`` artifact, or None."""
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    runs = [p for p in runs if is_artifact(recover_artifact(p / kind))]
    return max(runs, key=lambda p: (p.stat().st_mtime, p.name)) if runs else None


def _missing_part(directory: Path) -> str:
    """What keeps ``directory`` from being an artifact, for messages: the folder or the first missing file."""
    if not directory.is_dir():
        return f"{directory} is missing"
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            return f"{directory / name} is missing"
    return f"{directory} is incomplete"


def resolve_model_dir(path: Path | None, kind: str | None = None) -> Path:
    """Artifact dir as given; a run dir → its ``kind`` artifact (None: ``student/``); None → the newest run under
    ./runs that has one.

    A run folder never falls back to its teacher when the student is asked for (or ``kind`` is None): the teacher
    is a different, support-based model, so using it silently would report its results as the student's (a run
    whose ``student/`` was deleted evaluated its teacher with exit 0). Callers ask for ``kind="teacher"`` only
    when the user did (``evaluate --teacher``). An artifact folder given directly is used as it is.

    Raises:
        CheckpointError: no such folder, or a run without a complete ``kind`` artifact (the message names the
            missing folder or file).
    """
    wanted = kind or "student"
    if path is None:
        newest = _newest_run(Path("runs"), wanted)
        if newest is None:
            raise CheckpointError("No model given and no run found under ./runs; run fsdistill distill first or pass --model.")
        path = newest
    path = Path(path)
    recover_artifact(path)
    if is_artifact(path):
        if kind is not None:
            found = json.loads((path / "config.json").read_text()).get("kind")
            if found != kind:
                raise CheckpointError(f"{path} holds a {found} model, but a {kind} is needed here.")
        return path
    if is_artifact(recover_artifact(path / wanted)):
        return path / wanted
    if not path.exists():
        raise CheckpointError(f"Model folder {path} does not exist; pass a run or artifact folder to --model.")
    if wanted == "student" and (path / "teacher").exists():
        raise CheckpointError(
            f"{path} has no usable student ({_missing_part(path / 'student')}); re-run fsdistill distill, or evaluate "
            "the run's teacher with evaluate --teacher (it is never used in the student's place)."
        )
    raise CheckpointError(f"{path} holds no {wanted} artifact (model.safetensors + config.json); pass a run folder.")
