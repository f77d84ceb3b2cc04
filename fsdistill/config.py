"""Typed run configurations: defaults, then a YAML file, then command-line flags.

``extra="forbid"`` everywhere, so a misspelt key is an error rather than an ignored setting.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fsdistill.errors import ConfigError

if TYPE_CHECKING:
    from fsdistill.train.budget import PlateauStop

__all__ = [
    "TRAINABLE_GROUPS",
    "ModelCfg",
    "TrainCfg",
    "AdaptCfg",
    "DistillCfg",
    "load_config",
]

# Memory the supports' cached features may take in all four flip views when augmentation is automatic
# (TrainCfg.augment None); larger folders are cached in one view (Lite0 at 384 px: ~4.7 MB per image and view).
FLIP_VIEW_BYTES = 2 * 2**30

# Parameter groups of the teacher that can be fine-tuned, named as in the paper (reference.md §3):
# mapper = ConvMapper conv1–3, merge = ConvMerge conv4/5, attention = the DCAMA q/k projections,
# mixer = the final mixer1–3 (plus the coarse-prior scale that our decoder adds).
TRAINABLE_GROUPS = ("mapper", "merge", "attention", "mixer")


# Half-way, not all the way: all the way lifted brain at one support by 0.09 but cost macaque at five 0.07; half-way
# kept most of the gain without the loss (docs/benchmarks.md, "The training recipe and why").
DEFAULT_NORM_ADAPT = 0.5


class _Strict(BaseModel):
    # No inf or NaN: a learning rate of inf trained into a NaN loss; "no limit" is null where a field allows it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse what pydantic would quietly convert: a boolean where a number goes (``steps: yes`` was 1 step)
        and an empty path (``support: ""`` was the current folder)."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        kinds = set(get_args(annotation)) or {annotation}
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ValueError(f"expected a number, got {value}")
        if isinstance(value, str) and not value.strip() and Path in kinds:
            raise ValueError("is empty; give a path")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _sane_numbers(cls, value: Any) -> Any:
        """Refuse integers beyond 2^53 once converted (``steps: 0xfff...`` or a quoted 30-digit number passed, and
        the run's own config.resolved.yaml could not be read back, or writing it failed)."""
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            raise ValueError("is too large a number")
        return value


class ModelCfg(_Strict):
    """Architecture of the teacher (and of the student's shared decoder)."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: Path | None = None
    teacher_weights: Path | None = None
    size: int = Field(384, ge=64, le=2048, description="square input size in pixels (images are resized to it)")
    heads: int = Field(8, ge=1)
    use_pe: bool = True
    attn_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    voting: int = Field(50, ge=1, description="support images per attention chunk (one softmax) at inference")
    qk_norm: float | None = Field(
        2.0,
        gt=0,
        description="cosine-attention temperature (scale of the cosine similarities before the softmax); None = the "
        "reference's raw scaled dot product",
    )
    decoder: Literal["dcama", "light", "shared"] = Field(
        "light",
        description="light = one conv per block, per-class work at stride >= 4 (fast, though its cost still grows "
        "with the number of classes); shared = narrow per-class work at stride >= 8 only, the merged logits "
        "refined once per image, ConvDist groups shared beyond 4 classes (for many classes: its cost stays near "
        "the backbone's); dcama = the paper's decoder (the default with --teacher-weights)",
    )
    decoder_width: int | None = Field(
        None,
        ge=8,
        description="ConvMapper/ConvMerge channels; None = the decoder's default (dcama 128, light 32, shared 8)",
    )
    mixer_widths: tuple[int, int, int] | None = Field(
        None,
        description="mixer channels; None = the decoder's default (dcama 128, 64, 16; light 16, 16, 16; "
        "shared 8, 8, 8)",
    )
    student_width: int | None = Field(
        8,
        ge=0,
        description="ConvDist width per class: W > 0 = a 1x1 bottleneck to W channels before the 3x3 conv; "
        "0 or null = the paper's Conv3x3(C->C) on the backbone's C channels",
    )
    refiner: bool = Field(
        True,
        description="student: end in one class-shared stride-4 stage that refines the merged logits from the query "
        "features (its cost per image does not grow with the classes); light and shared decoders only",
    )

    @model_validator(mode="after")
    def _groupnorm_divisible(self) -> ModelCfg:
        if self.teacher_weights is not None and "decoder" not in self.model_fields_set:
            # Official checkpoints hold the paper's decoder: follow them unless a decoder was asked for.
            self.__dict__["decoder"] = "dcama"
        if self.decoder == "dcama" and self.refiner:
            if "refiner" in self.model_fields_set:
                raise ValueError("the refiner works with the light and shared decoders, not dcama; set refiner: false")
            self.__dict__["refiner"] = False  # the paper's decoder ends at full resolution
        # GroupNorm(4) runs on width/8 channels in the paper's mapper and on the width itself in the light one (the
        # shared decoder has none).
        multiple = {"dcama": 32, "light": 4}.get(self.decoder)
        if multiple and self.decoder_width is not None and self.decoder_width % multiple:
            raise ValueError(
                f"decoder_width must be a multiple of {multiple} for the {self.decoder} decoder, got {self.decoder_width}"
            )
        return self

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"size must be a multiple of 32, got {value}")
        return value


class TrainCfg(_Strict):
    """Optimisation shared by adapt and distill."""

    steps: int | None = Field(
        None,
        ge=0,
        description="optimiser steps of `episodes_per_step` episodes each; None = automatic: train until every "
        "class has been in `queries_per_class` queries and the training loss stops falling (fsdistill.train.budget), "
        "within `min_steps`..`max_steps` and `max_minutes`",
    )
    min_steps: int = Field(100, ge=1, description="automatic budget: never fewer steps")
    max_steps: int = Field(2000, ge=1, description="automatic budget: never more steps")
    max_minutes: float | None = Field(30.0, gt=0, description="automatic budget: wall-time cap of the training loop")
    queries_per_class: int = Field(
        60, ge=0, description="automatic budget: training queries that must show each class before it may stop"
    )
    lr: float = Field(3e-3, gt=0)
    student_lr: float = Field(
        1e-2,
        gt=0,
        description="learning rate of the student's ConvDist blocks: their zero-initialised output layer moves at a "
        "speed proportional to the block width, so a narrow student needs a larger step than the teacher's decoder; "
        "blocks whose classes share G hidden groups (the shared decoder's) read G times as many channels per class "
        "and train at student_lr / G",
    )
    weight_decay: float = Field(0.01, ge=0)
    focal_gamma: float = Field(
        2.0, ge=0, description="focusing exponent of the focal loss (the paper's 2; 0 = cross-entropy)"
    )
    dice_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the soft Dice term added to the focal loss of teacher and student (0 = focal only)",
    )
    mse_weight: float = Field(
        1.0, ge=0, description="weight of the distillation MSE between the student's and the teacher's coarse maps"
    )
    # The student fits its few supports exactly and carries their texture into held-out images as false positives;
    # dropping whole channels of its ConvDist inputs measured ahead on all three cases (docs/benchmarks.md).
    convdist_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="distill: while training, each channel of the student's ConvDist input maps is dropped with "
        "this probability (channel dropout, against memorising the supports; never at inference); 0 = off",
    )
    # One episode and a student batch of 4 per step (docs/benchmarks.md, "The training recipe and why"): an episode
    # costs a teacher attention pass, a batch image only the student's head.
    episodes_per_step: int = Field(1, ge=1, description="leave-one-out episodes (query images) per optimiser step")
    student_batch: int = Field(
        4,
        ge=0,
        description="distill: support images per step on which the student also trains with their masks "
        "alone (no teacher, no episode; class-balanced like the queries); 0 = episodes only",
    )
    max_shots: int = Field(
        3,
        ge=1,
        description="support images per training episode (at most); distill --unlabeled labels each pool image "
        "against its this many most similar supports (and one for each class they miss)",
    )
    # A student phase of its own: the shared decoder had settled where it also serves the teacher (docs/benchmarks.md).
    polish_steps: int = Field(
        150,
        ge=0,
        description="distill: steps the student then trains alone on the supports (batches of `student_batch`, its "
        "own copy of the decoder; the teacher is left as it is); 0 = none",
    )
    # mean: docs/benchmarks.md, "Unlabeled pool".
    pool_labeller: Literal["teacher", "student", "mean", "agree"] = Field(
        "mean",
        description="distill --unlabeled: who labels the pool after the support phase: the adapted teacher (against "
        "all supports), the student (self-training), their mean (the student alone where the teacher is trusted with no "
        "class), or both where they agree",
    )
    pool_threshold: float = Field(
        0.7, ge=0, le=1, description="distill --unlabeled: pool pixels whose label probability is lower are ignored"
    )
    pool_min_iou: float = Field(
        0.5,
        ge=0,
        le=1,
        description="distill --unlabeled: the pool teaches a class only when the teacher's leave-one-out IoU of it "
        "on the supports reaches this (else it would teach its mistakes); no class there: the student labels the "
        "pool alone (labeller mean), or the pool is not used (teacher, agree)",
    )
    pool_batch: int = Field(4, ge=1, description="distill --unlabeled: pool images per step the student trains on")
    pool_weight: float = Field(1.0, ge=0, description="distill --unlabeled: weight of the pool images' loss")
    # docs/benchmarks.md, "Unlabeled pool": nuclei K = 2 pool student +0.014 (its dim-support draw +0.080); others as before.
    pool_brightness: bool = Field(
        True,
        description="distill --unlabeled: where the pool's images are at least 1.25x brighter (or darker) than the "
        "supports (99th-percentile pixel values), the student's crop views of the supports are brightened (or "
        "darkened) over that range, up to 2x: dim supports otherwise leave it blind to the brighter objects it will "
        "segment",
    )
    # The paper's default is mapper + mixer; adding merge measured better on the benchmarks (docs/benchmarks.md).
    train: list[str] = Field(default_factory=lambda: ["mapper", "merge", "mixer"])
    # The four flip views: student +0.012 mIoU over 16 accuracy cells of the three cases, two seeds, 15 ahead; the
    # teacher adapted alone −0.006, macaque's −0.07 (docs/benchmarks.md, "The training recipe and why"). Bounded by
    # memory since a folder's cached features grow fourfold.
    augment: bool | None = Field(
        None,
        description="cache each support image in its four flip views (horizontal, vertical, both), encoded by the "
        "backbone, for episodes and the student's batches; None = automatic: distill where those cached features "
        f"fit in {FLIP_VIEW_BYTES / 2**30:g} GiB (up to ~100 images for efficientnet-lite0 at 384 px), adapt never, "
        "a single support image always",
    )
    flip_features: bool = Field(
        True,
        description="distill: the student's support and pool batches in random flip views, made by flipping their "
        "cached features with their targets",
    )
    # Zoomed-in views of the supports: measured ahead on all three example cases (docs/benchmarks.md, "The training
    # recipe and why"), most where the supports are fewest.
    crop_views: int = Field(
        4,
        ge=0,
        description="distill: random crops of each support image (rescaled to the input size and encoded once, when "
        "training starts); half the images of the student's supervised batches are one of them; 0 = off",
    )
    crop_min_area: float = Field(
        0.35, gt=0, le=1, description="distill: the smallest share of a support image's area a crop view covers"
    )
    # Class-centred crops: measured ahead on macaque's small structures and level on nuclei and brain
    # (docs/benchmarks.md, "The training recipe and why").
    crop_centre: Literal["class", "uniform"] = Field(
        "class",
        description="distill: where a crop view lies: class = around a pixel of one of the classes its image shows, "
        "background included, each as likely as any other (a 0.2 % structure is zoomed in on as often as a large "
        "one); uniform = anywhere in the image",
    )
    norm_adapt: float | None = Field(
        None,
        ge=0,
        le=1,
        description="adapt / distill with a new teacher: move the frozen backbone's BatchNorm statistics this share "
        "of the way from the pretrained (ImageNet) ones to the support images' (the weights stay frozen); 0 = the "
        "pretrained ones; None = 0.5, or 0 with published teacher weights (they behave as published). A teacher "
        "given with --teacher or --init keeps the statistics it was adapted with",
    )
    # bfloat16 autocast where the hardware computes it: a distill step ~12 % faster than float32 on a CPU with AMX
    # (both channels-last), the accuracy of float32 on the three example cases (docs/benchmarks.md, "Training speed").
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="arithmetic of the training steps' forward passes: bfloat16 = mixed precision (convolutions and "
        "matrix products in bfloat16; weights, optimiser and losses in float32); auto = bfloat16 where the device "
        "computes it in hardware (a CUDA GPU that supports it, a CPU with AMX or AVX-512 BF16), else float32",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed (0 to 2^32 - 1)")

    def norm_adapt_weight(self, published_weights: bool) -> float:
        """``norm_adapt`` resolved: None is :data:`DEFAULT_NORM_ADAPT`, or 0 for a teacher built from published
        weights (``--teacher-weights``)."""
        if self.norm_adapt is not None:
            return self.norm_adapt
        return 0.0 if published_weights else DEFAULT_NORM_ADAPT

    def budget(self, continued: bool = False) -> PlateauStop:
        """The automatic stop rule (``steps`` None); ``continued``: from a trained run, stop at the floors, not at
        the loss plateau."""
        from fsdistill.train.budget import PlateauStop

        return PlateauStop(
            min_steps=self.min_steps,
            max_steps=self.max_steps,
            max_seconds=None if self.max_minutes is None else 60.0 * self.max_minutes,
            queries_per_class=self.queries_per_class,
            plateau=not continued,
        )

    @field_validator("train")
    @classmethod
    def _known_groups(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(TRAINABLE_GROUPS))
        if unknown:
            raise ValueError(f"unknown trainable group(s) {unknown}; choose from {list(TRAINABLE_GROUPS)}")
        if not value:
            raise ValueError(f"no group to train; choose at least one of {list(TRAINABLE_GROUPS)}")
        return value

    @model_validator(mode="after")
    def _step_bounds(self) -> TrainCfg:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps})")
        if self.polish_steps and not self.student_batch and "polish_steps" in self.model_fields_set:
            # The polish phase trains on batches of student_batch images: with none it would be skipped silently.
            raise ValueError(
                f"polish_steps ({self.polish_steps}) needs student_batch of 1 or more (the polish phase trains on "
                "batches of that many supports); set student_batch, or polish_steps: 0"
            )
        return self


class AdaptCfg(_Strict):
    """``fsdistill adapt``: TransferFSS fine-tuning of the teacher."""

    support: Path
    out: Path | None = None
    model: ModelCfg = Field(default_factory=ModelCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    device: str = "auto"


class DistillCfg(_Strict):
    """``fsdistill distill``: joint teacher + ConvDist student training (or student only from a given teacher)."""

    support: Path
    out: Path | None = None
    teacher: Path | None = None
    freeze_teacher: bool = False
    init: Path | None = Field(
        None,
        description="continue from this run (its teacher and student) on a grown support folder: classes matched "
        "by name, new classes get fresh ConvDist blocks; the run's model settings are kept",
    )
    drop_class: list[str] = Field(
        default_factory=list, description="with init: classes of the run that the support folder no longer has"
    )
    unlabeled: Path | None = Field(
        None,
        description="a folder of unlabeled images of the same kind: after the support phase the teacher labels "
        "them and the student also trains on them (see train.pool_*)",
    )
    unlabeled_max: int = Field(
        200, ge=1, description="at most this many pool images are used (a random sample of a larger pool)"
    )
    model: ModelCfg = Field(default_factory=ModelCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    device: str = "auto"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, recursively; None in ``override`` means "not given" and keeps ``base``."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict):
            if merged.get(key) is not None and not isinstance(merged[key], dict):
                continue  # a section given as a scalar or a list (`train: [mapper]`): kept, so validation names it
            merged[key] = _deep_merge(merged.get(key) or {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def _given(overrides: dict[str, Any], loc: tuple) -> bool:
    """Whether ``overrides`` sets the field at ``loc`` (a pydantic error location) to a value (None = not given);
    a section (``train``: a check across its fields) is never a flag's, though the flags fill it with Nones."""
    node: Any = overrides
    for part in loc:
        if not isinstance(node, dict) or node.get(part) is None:
            return False
        node = node[part]
    return not isinstance(node, dict)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently: a second
    ``train:`` section dropped the first's options)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"sets {key!r} twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping of options ({} for an empty file).

    Raises:
        ConfigError: a folder or a missing file, unreadable bytes, invalid YAML, a YAML tag or value it cannot
            build, a key given twice, or a file that is not a mapping.
    """
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; pass a YAML file to --config.")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass an existing YAML file to --config.")
    try:
        # Bytes, not text: PyYAML reads the UTF-16 a Windows editor or shell may have written (by its BOM).
        data = yaml.load(path.read_bytes(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"Config file {path} {exc}.") from None
    except yaml.constructor.ConstructorError as exc:  # valid syntax that builds no plain value
        problem = str(exc.problem or exc)
        if "constructor for the tag" in problem:  # !!python/object and the like: never built
            raise ConfigError(
                f"Config file {path} uses a YAML tag fsdistill does not read ({problem.split(' ')[-1]}); give plain "
                "values."
            ) from None
        raise ConfigError(f"Config file {path} cannot be read as options ({problem}); give plain values.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise ConfigError(
            f"Config file {path} holds a value fsdistill cannot read ({str(exc).split(';')[0]})."
        ) from None
    except TypeError as exc:  # a list or mapping as a key ("? [a, b]"): unhashable
        raise ConfigError(f"Config file {path} uses a list or mapping as an option name ({exc}).") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path} ({exc.strerror or exc}); check its permissions.") from None
    data = {} if data is None else data  # an empty file (or comments only): no options
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option names to values.")
    return data


def load_config(
    cls: type[_Strict],
    yaml_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    flag_names: bool = False,
    command: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Any:
    """Build ``cls`` from its defaults, then ``yaml_path`` (or ``data``), then the non-None ``overrides`` (nested
    dicts).

    Args:
        flag_names: the overrides came from command-line flags: a bad value there is named by its flag (``--steps``),
            not by its config key (``train.steps``).
        command: the command being run; a YAML's ``command:`` key (a run's own ``config.resolved.yaml`` has one)
            must name it.
        data: the YAML's content given as a mapping (the Python API's ``fsdistill.distill({...})``): read as the file
            is, an explicit None included (``student_width: None`` is the paper's width, not "not given").

    Raises:
        ConfigError: unreadable YAML, an unknown key, a value out of range, a ``command:`` of another command, or
            a required option given neither as a flag nor in the YAML.
    """
    if yaml_path is not None:
        where, data = f"Config file {yaml_path} is", _read_yaml(Path(yaml_path))
    else:
        where, data = "The options are", copy.deepcopy(dict(data)) if data is not None else {}
    # A run's own config.resolved.yaml names its command; the class says which one is being run.
    command = command or {AdaptCfg: "adapt", DistillCfg: "distill"}.get(cls)
    if "command" in data and command is not None:
        recorded = data.pop("command")
        if recorded != command:
            raise ConfigError(
                f"{where} for fsdistill {recorded} (command: {recorded}); run it with fsdistill "
                f"{recorded}, or delete its command: line to use its options with {command}."
            )
    data = _deep_merge(data, overrides or {})
    # `support: null` (or `~`) is not given: said as such, not as a path that is not a valid path.
    required = {name for name, field in cls.model_fields.items() if field.is_required()}
    data = {k: v for k, v in data.items() if v is not None or k not in required}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        missing = [e["loc"][0] for e in exc.errors() if e["type"] == "missing" and len(e["loc"]) == 1]
        if missing:
            name = missing[0]
            raise ConfigError(
                f"No {name} given; pass --{name}{' DIR' if name == 'support' else ''}, or set {name}: in the "
                "--config YAML file."
            ) from None
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if isinstance(p, str))  # list indices (train.train.0) name no flag
        if flag_names and loc and _given(overrides or {}, loc):
            value = err.get("input")
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            msg = str(err["msg"]).removeprefix("Value error, ")
            flag = "--" + loc[-1].replace("_", "-")  # the CLI names each flag after its field's last key
            raise ConfigError(f"Invalid {flag} {shown}: {msg}.") from None
        source = f" (from {yaml_path}{' and flags' if flag_names else ''})" if yaml_path else ""
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "model_type":  # `train: [mapper, attention]`, `model: resnet50`
            hint = " (the groups to train go under it: train: then train: [mapper, merge, mixer])"
            raise ConfigError(
                f"Invalid configuration{source}: {where} must be a section of options, one `name: value` per "
                f"indented line below `{where}:`{hint if where == 'train' else ''}."
            ) from None
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1 and "." in str(err["loc"][0]):
            section, _, key = str(err["loc"][0]).partition(".")
            raise ConfigError(
                f"Invalid configuration{source}: {where} is not an option; options in a section are nested: "
                f"{{'{section}': {{'{key}': ...}}}} (in YAML, {key}: indented under {section}:)."
            ) from None
        raise ConfigError(
            f"Invalid configuration{source}: {where}: {str(err['msg']).removeprefix('Value error, ')}."
        ) from None
