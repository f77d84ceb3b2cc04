"""Frozen timm backbones that return one feature map per block (DCAMA's multi-layer taps).

DCAMA correlates query and support features at every block of stages 2–4, so timm's ``features_only`` (one map
per stage) is not enough: each family walks its timm model block by block. The backbone takes uint8 images and
normalises them itself (:meth:`Backbone.encode`), so no caller repeats the mean/std arithmetic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsdistill.data.transforms import normalize_coefficients
from fsdistill.errors import ConfigError
from fsdistill.models.backbone_specs import DEFAULT_BACKBONE, BackboneSpec, backbone_spec
from fsdistill.models.backbone_weights import create_timm_model

__all__ = [
    "Backbone",
    "EfficientNetBackbone",
    "ResNetBackbone",
    "SwinBackbone",
    "cat_features",
    "create_backbone",
    "load_classifier",
]

# Lite0: blocks[i] of timm's model is stage i. Stage 3 (stride 16, 80 ch) is skipped so that every level has a
# single channel count; stage 6 (320 ch, one block) and conv_head are never run.
_LITE0_TAP_STAGES = (1, 2, 4, 5)


def cat_features(parts: list[list[list[Tensor]]]) -> list[list[Tensor]]:
    """Block-level features of several batches (see :meth:`Backbone.forward`) → those of one batch."""
    return [[torch.cat(maps) for maps in zip(*levels)] for levels in zip(*parts)]


class Backbone(nn.Module):
    """A frozen timm model walked block by block.

    It never trains: no gradients, and eval mode even when a parent calls ``.train()`` (BatchNorm and drop-path in
    train mode would shift the pretrained features). Layers after the last tap are removed, so the state dict
    holds only what the taps use.
    """

    spec: BackboneSpec
    input_scale: Tensor
    input_shift: Tensor

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
        # 1×3×1×1 each, x·scale + shift = (x/255 - mean)/std. Not persistent: normalisation lives in the spec
        # (config.json), not in the weights.
        scale, shift = normalize_coefficients(spec.mean, spec.std)
        self.register_buffer("input_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Ignore ``mode``: a frozen backbone is always in eval mode."""
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """B×3×H×W uint8 RGB → B×3×H×W float32 normalised with ``spec.mean``/``spec.std``, in the memory layout
        of ``images`` (a channels-last batch stays channels-last, see :meth:`forward`)."""
        if images.dtype != torch.uint8:
            raise TypeError(
                f"expected uint8 images, got {images.dtype}; call the backbone itself on normalised float images"
            )
        return images.float().mul_(self.input_scale).add_(self.input_shift)

    def encode(self, images: Tensor) -> list[list[Tensor]]:
        """B×3×H×W uint8 RGB → block-level features (see :meth:`forward`): normalised here, then tapped."""
        return self(self.preprocess(images))

    @torch.no_grad()
    def encode_batched(self, images: Tensor, batch_size: int = 8) -> list[list[Tensor]]:
        """S×3×H×W uint8 on any device → :meth:`encode` of all S images, ``batch_size`` at a time on the backbone's
        device: 4 levels of block maps, each S×C×h×w (support sets larger than one batch fit in memory)."""
        device = self.input_scale.device
        return cat_features(
            [self.encode(images[i : i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)]
        )

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
        """B×3×H×W float, normalised with ``spec.mean``/``spec.std`` (uint8 images: :meth:`encode`) → block-level
        features: 4 lists (levels at strides 4, 8, 16, 32); level ``l`` holds ``spec.num_blocks[l]`` maps, each
        B×``spec.channels[l]``×H/s×W/s, in the memory layout of ``x`` (channels-last or NCHW contiguous)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a B×3×H×W batch, got shape {tuple(x.shape)}")
        self.check_size(x.shape[-2], x.shape[-1])
        # A channels-last batch keeps its layout, so a channels-last head does not copy every tap twice.
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return [[m.contiguous(memory_format=layout) for m in level] for level in self._taps(x)]

    @torch.no_grad()
    def adapt_norm_stats(self, images: Tensor, weight: float, batch_size: int = 8) -> int:
        """Move every BatchNorm's running statistics ``weight`` of the way from the pretrained (ImageNet) ones to
        those of ``images`` (S×3×H×W uint8, the user's images at the model's input size): per channel,
        ``(1 - weight)·pretrained + weight·measured`` for the mean and the variance.

        The weights stay frozen; only the per-channel statistics each BN normalises with move towards the user's
        domain (AdaBN, Li et al. 2016), so that features of, say, MRI slices are not normalised as photographs.
        The statistics are measured layer by layer on the images as the adapted layers before them see them (BN in
        training mode: each layer normalises a batch with its own statistics), ``batch_size`` images at a time,
        averaged over the batches. ``weight`` 0 changes nothing. Returns the number of BatchNorm layers moved (0
        for a backbone without BatchNorm, e.g. Swin's LayerNorm).
        """
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
        if not norms or weight == 0 or images.shape[0] == 0:
            return 0
        pretrained = [(bn.running_mean.clone(), bn.running_var.clone(), bn.momentum) for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches, not an exponential one
            bn.training = True
        measured = False
        try:
            device = self.input_scale.device
            for start in range(0, images.shape[0], batch_size):
                self._taps(self.preprocess(images[start : start + batch_size].to(device)))
            measured = True
        finally:
            for bn, (mean, var, momentum) in zip(norms, pretrained):
                bn.training = False
                bn.momentum = momentum
                if measured:  # pretrained + weight · (measured - pretrained)
                    bn.running_mean.copy_(mean.lerp(bn.running_mean, weight))
                    bn.running_var.copy_(var.lerp(bn.running_var, weight))
                else:  # interrupted: the pretrained statistics, exactly
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
        return len(norms)

    @torch.no_grad()
    def fold_batchnorm(self) -> int:
        """Fold every BatchNorm that directly follows a conv into that conv's weight and bias, for inference.

        A frozen BN is a fixed per-channel affine map (same taps up to float rounding); a fused activation (timm's
        ``BatchNormAct2d``) stays. Pairs are a conv child followed by a BN child in definition order, their forward
        order in the supported timm blocks. The state-dict keys change: never save a folded model. Returns the
        number of BNs folded.
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

    # Family hooks.
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
    """timm ResNet with Bottleneck blocks: taps are each block's residual sum BEFORE its final ReLU (as DCAMA).

    :func:`_bottleneck` re-runs timm's ``Bottleneck.forward``: a hook on ``act3`` would see its in-place ReLU
    overwrite the tap, and hooks trace badly for export.
    """

    _LAYERS = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        from timm.models.resnet import Bottleneck

        for name in self._LAYERS:
            for block in getattr(model, name):
                if not isinstance(block, Bottleneck) or not isinstance(block.act3, nn.ReLU):
                    raise ConfigError(
                        f"{spec.name} taps need Bottleneck blocks with a ReLU; drop the 'block'/'act_layer' overrides."
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
    """timm ``Bottleneck.forward`` split at its last ReLU: B×C_in×H×W → (pre-activation residual sum, its ReLU)."""
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

    timm runs PatchMerging at the START of a stage (the original Swin at its end), so DCAMA's "every block before
    PatchMerging" is exactly the block outputs of ``layers[i]``. timm works in NHWC; taps are permuted to NCHW.
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


def create_backbone(
    name: str, weights: Path | str | None = None, pretrained: bool = True, **overrides: Any
) -> Backbone:
    """Build a frozen, eval-mode backbone with its weights.

    Args:
        name: one of :data:`~fsdistill.models.backbone_specs.BACKBONE_NAMES`.
        weights: local weights file (``.pth``/``.pt``/``.safetensors``) overriding the default source (Lite0:
            timm- or lukemelas-named; ResNet-50, Swin-B: through timm's loader, original key names accepted).
        pretrained: load the default weights (Lite0: embedded in its wheel; ResNet-50, Swin-B: the hub); False
            gives random init, as do the ``test-*`` names.
        **overrides: timm model keyword arguments (see :func:`~fsdistill.models.backbone_specs.backbone_spec`).

    Raises:
        ConfigError: unknown name or unusable overrides.
        CheckpointError: weights missing, unreadable, not fitting, or not downloadable.
    """
    spec = backbone_spec(name, **overrides)
    model, source = create_timm_model(spec, weights, pretrained)
    return _FAMILY_CLASSES[spec.family](dataclasses.replace(spec, source=source), model)


def load_classifier(
    name: str = DEFAULT_BACKBONE, weights: Path | str | None = None, pretrained: bool = True, **overrides: Any
) -> nn.Module:
    """The complete timm model of a backbone, classifier included (frozen, eval), with the same weights as
    :func:`create_backbone`. For checking that weights loaded right: B×3×H×W normalised → B×1000 logits."""
    spec = backbone_spec(name, **overrides)
    model, _ = create_timm_model(spec, weights, pretrained)
    return model.requires_grad_(False).eval()
