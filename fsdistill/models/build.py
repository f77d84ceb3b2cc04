"""Build teachers and students from a :class:`~fsdistill.config.ModelCfg`, save them as artifacts, load them back.

An artifact stores the ``ModelCfg`` and the backbone spec its model was built from (:mod:`fsdistill.checkpoint`
writes the files). A teacher artifact also stores its support set as resized uint8 images and masks: smaller than
cached features, and not tied to one feature layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from fsdistill.checkpoint import load_artifact, resolve_model_dir, save_artifact
from fsdistill.config import ModelCfg
from fsdistill.errors import CheckpointError
from fsdistill.models.backbone import Backbone, create_backbone
from fsdistill.models.backbone_specs import BackboneSpec
from fsdistill.models.decoder import DECODERS, DCAMADecoder, LightDecoder, SharedDecoder
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
    "parameter_count",
]

# The decoder of artifacts whose stored config names none (see _stored_model_cfg).
LEGACY_DECODER = "light"
SUPPORT_IMAGES_KEY = "support.images"
SUPPORT_MASKS_KEY = "support.masks"


def build_decoder(
    spec: BackboneSpec, kind: str, width: int | None = None, mixer_widths: tuple[int, int, int] | None = None
) -> DCAMADecoder | LightDecoder | SharedDecoder:
    """A fresh decoder for a backbone of ``spec``: built once, given to the teacher and shared with its student.

    Args:
        kind: "dcama" (the paper's), "light" or "shared" (see :mod:`fsdistill.models.decoder`).
        width, mixer_widths: ``ModelCfg.decoder_width`` / ``mixer_widths``; None = that decoder's defaults.
    """
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {sorted(DECODERS)}")
    sizes = {k: v for k, v in (("width", width), ("mixer", mixer_widths)) if v is not None}
    return DECODERS[kind](
        num_layers=tuple(spec.num_blocks[lvl] for lvl in ATTENTION_LEVELS),
        skip_channels=(spec.channels[0], spec.channels[1]),
        **sizes,
    )


def build_teacher(cfg: ModelCfg, num_classes: int, pretrained: bool = True) -> DCAMATeacher:
    """A teacher with a frozen backbone (pretrained weights unless ``pretrained=False``) and a fresh head."""
    backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, pretrained=pretrained)
    backbone.check_size(cfg.size, cfg.size)
    return _teacher(cfg, backbone, num_classes)


def _teacher(cfg: ModelCfg, backbone: Backbone, num_classes: int) -> DCAMATeacher:
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
    """Prepare, in place, a model that will only run inference on ``device``: batch norms folded
    (:meth:`~fsdistill.models.backbone.Backbone.fold_batchnorm`) and the memory layout of a ``kind`` model
    (:func:`fsdistill.runtime.inference_memory_format`), the same for predict, evaluate and profile. Never save
    a model prepared this way: its state-dict keys change. Returns ``model``."""
    backbone = model if isinstance(model, Backbone) else model.backbone
    backbone.fold_batchnorm()
    return model.to(memory_format=inference_memory_format(device, kind))


def build_student(
    teacher: DCAMATeacher, width: int | None, refiner: bool, refiner_width: int | None = None
) -> DistilledStudent:
    """A student sharing the teacher's backbone and decoder (joint training, as the paper)."""
    return DistilledStudent(teacher.backbone, teacher.decoder, teacher.num_classes, width, refiner, refiner_width)


@dataclass
class LoadedModel:
    """A model rebuilt from an artifact, with everything needed to preprocess and label its output."""

    kind: str  # "teacher" | "student"
    path: Path
    model: nn.Module
    config: dict[str, Any]
    model_cfg: ModelCfg  # what the model was built from (an adapted teacher's, with a student's width)
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

    def to(self, device: torch.device) -> LoadedModel:
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
        """B×3×size×size uint8 images → B×(N+1)×h×w logits at the model's output stride (teacher: with its
        stored supports); the model's backbone normalises them."""
        if self.kind == "teacher":
            return self.model.predict(images, self.support_features())
        return self.model.predict(images)


def parameter_count(model: nn.Module) -> int:
    """The model's parameters (its weights, not the buffers such as BatchNorm statistics): the number ``distill``
    prints, the artifact records and ``profile`` reports."""
    return sum(p.numel() for p in model.parameters())


def save_model(
    directory: Path,
    model: DCAMATeacher | DistilledStudent,
    model_cfg: ModelCfg,
    *,
    class_names: list[str],
    palette: list[tuple[int, int, int]],
    train_config: dict[str, Any],
    support_info: dict[str, Any],
    training: dict[str, Any] | None = None,
    support_images: torch.Tensor | None = None,
    support_masks: torch.Tensor | None = None,
) -> Path:
    """Write a teacher or student artifact (atomic); only a teacher's stores attention weights and supports.

    Args:
        model_cfg: the config ``model`` was built from (a student's width included), stored so that
            :func:`load_model` builds the same modules; its ``size`` is the artifact's input size.
        support_images, support_masks: a teacher's S×3×size×size and S×size×size uint8 support set.
    """
    kind = "teacher" if isinstance(model, DCAMATeacher) else "student"
    _check_built_from(model, model_cfg, class_names)
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
        "input_size": model_cfg.size,
        "class_names": list(class_names),
        "palette": [list(c) for c in palette],
        "ignore_index": 255,
        "model_cfg": model_cfg.model_dump(mode="json"),
        "train_config": train_config,
        "support": support_info,
        "training": training or {},
        "versions": library_versions(),
        "parameters": parameter_count(model),
    }
    return save_artifact(Path(directory), tensors, config)


def _check_built_from(model: DCAMATeacher | DistilledStudent, cfg: ModelCfg, class_names: list[str]) -> None:
    """Raise ValueError when ``cfg`` cannot be the config ``model`` was built from: loading would build another
    module (caught only then) or, for the settings without parameters, silently run another model."""
    found = {
        "backbone": model.backbone.spec.name,
        "decoder": next(name for name, cls in DECODERS.items() if isinstance(model.decoder, cls)),
        "classes": model.num_classes,
    }
    wanted = {"backbone": cfg.backbone, "decoder": cfg.decoder, "classes": len(class_names) - 1}
    if isinstance(model, DCAMATeacher):
        block = model.blocks[0]
        found.update(heads=block.heads, use_pe=block.use_pe, qk_norm=block.qk_norm, voting=model.voting)
        wanted.update(heads=cfg.heads, use_pe=cfg.use_pe, qk_norm=cfg.qk_norm, voting=cfg.voting)
    else:
        found["student_width"], wanted["student_width"] = model.width_arg, cfg.student_width or None
        found["refiner"], wanted["refiner"] = model.refiner is not None, cfg.refiner
    wrong = [f"{k} {found[k]!r} (config: {wanted[k]!r})" for k in found if found[k] != wanted[k]]
    if wrong:
        raise ValueError(f"the model was not built from this ModelCfg: {', '.join(wrong)}")


def load_model(path: Path | None, kind: str | None = None) -> LoadedModel:
    """Load an artifact directory, or the ``kind`` (default: student) artifact of a run directory (None: the
    newest run under ./runs; see :func:`fsdistill.checkpoint.resolve_model_dir`)."""
    directory = resolve_model_dir(path, kind)
    tensors, config = load_artifact(directory)
    if config["kind"] not in ("teacher", "student"):
        raise CheckpointError(f"{directory} holds an unknown model kind '{config['kind']}'.")
    spec = BackboneSpec.from_dict(config["backbone"])
    cfg = _stored_model_cfg(config, directory)
    num_classes = len(config["class_names"]) - 1
    # The backbone from its spec (it may carry timm overrides a ModelCfg cannot name), the rest from the config.
    backbone = create_backbone(spec.name, pretrained=False, **spec.model_args)
    # Its weights are the artifact's: the artifact's record of where they came from stands (a continued run or an
    # artifact saved again recorded "random init").
    backbone.spec = replace(backbone.spec, source=spec.source)
    if config["kind"] == "teacher":
        model: nn.Module = _teacher(cfg, backbone, num_classes)
    else:
        decoder = build_decoder(spec, cfg.decoder, cfg.decoder_width, cfg.mixer_widths)
        # The refiner's width as written (its projection's rows): a decoder's default may have changed since.
        refiner = tensors.get("refiner.proj.weight")
        refiner_width = None if refiner is None else refiner.shape[0]
        model = DistilledStudent(backbone, decoder, num_classes, cfg.student_width, cfg.refiner, refiner_width)
    support_images = tensors.pop(SUPPORT_IMAGES_KEY, None)
    support_masks = tensors.pop(SUPPORT_MASKS_KEY, None)
    if cfg.decoder == "shared" and "decoder.skip_proj.weight" in tensors:
        # The shared decoder's first layout (a convex upsampling stage fed by skip_proj) was replaced, not kept.
        raise CheckpointError(
            f"{directory} was written with the earlier layout of the shared decoder, which this fsdistill no longer "
            "builds; re-run fsdistill adapt / distill to make it again."
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        # torch's first line is a header ("Error(s) in loading state_dict for ..."); the next names the tensor.
        lines = [line.strip().rstrip(".") for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{directory}/model.safetensors does not fit its config.json ({detail}).") from None
    model.eval()
    if config["kind"] == "teacher" and (support_images is None or support_masks is None):
        raise CheckpointError(f"{directory} is a teacher artifact without its support set; re-run fsdistill adapt.")
    return LoadedModel(config["kind"], directory, model, config, cfg, support_images, support_masks)


def _stored_model_cfg(config: dict[str, Any], directory: Path) -> ModelCfg:
    """The ModelCfg an artifact was built from: its ``model_cfg``, or for an artifact written before that was
    stored (fsdistill 0.1.0 development builds), the same settings rebuilt from its ``model_args``."""
    try:
        if "model_cfg" in config:
            settings = dict(config["model_cfg"])
        else:
            settings = {k: v for k, v in config["model_args"].items() if k in ModelCfg.model_fields}
            settings.update(backbone=config["backbone"]["name"], size=config["input_size"])
        # A config that names no decoder was written when the light decoder was the only default: build that one,
        # never whatever the default is today (its weights would not fit another decoder).
        settings.setdefault("decoder", LEGACY_DECODER)
        settings.setdefault("refiner", False)  # nor a refiner: written before the student had one
        return ModelCfg.model_validate(settings)
    except (KeyError, ValidationError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        raise CheckpointError(
            f"{directory}/config.json does not describe a model this fsdistill can build ({reason}); re-run the "
            "command that made it."
        ) from None
