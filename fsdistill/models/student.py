"""DistillFSS student: ConvDist blocks replace the teacher's support attention; no supports at inference.

The N per-class blocks of a stage (reference.md §2.1) run fused, one pass over the features for all classes, and
the decoder runs once over all classes as a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsdistill.models.decoder import DCAMADecoder, LightDecoder, SharedDecoder, merge_classes
from fsdistill.models.teacher import ATTENTION_LEVELS, Features

__all__ = ["ConvDist", "SharedRefiner", "DistilledStudent", "student_inputs"]

# From this many merged channels (N+1) a channels-last model copies its merged logits channels-last before the
# refiner: PyTorch's channels-last bilinear upsampling vectorises over the channels, slower than the planar kernel
# for a few (2 channels, 48→96 px: 144 vs 45 µs) and faster from about 8 (21: 158 vs 199 µs), and the refiner's
# residual sum then adds two channels-last tensors (21 channels at 96 px: 53 µs, 228 µs mixing the layouts).
_CHANNELS_LAST_MIN = 8


def student_inputs(feats: Features) -> Features:
    """Block-level backbone features → the maps :meth:`DistilledStudent.forward_features` reads: every level's,
    but of level 0 (stride 4) only its last map (the skip features). What training caches of its images."""
    return [feats[0][-1:], *feats[1:]]


class ConvDist(nn.Module):
    """All N per-class ConvDist blocks of one stage, fused.

    Paper width (``width`` None): per class Conv3×3(C→C) → ReLU → Conv1×1(C→1), fused into one Conv3×3(C→N·C)
    and one grouped Conv1×1. Reduced width W: per class Conv1×1(C→W) → Conv3×3(W→W) → ReLU → Conv1×1(W→1), a
    rank-W factorisation costing C·W + 9·W² multiply-adds per position instead of 9·C². ``width`` 0 = None.

    ``groups`` G (None: one hidden group per class, the paper's blocks): min(G, N) hidden groups of W channels that
    all classes share, each class a dense 1×1 readout of all of them, so beyond G classes a class adds only its
    readout (G·W multiply-adds per position). With N ≤ G and a block-diagonal readout it is the per-class block.

    ``input_dropout``: while training, each input map loses whole channels with this probability (channel dropout);
    set by the training loop (``train.convdist_dropout``), not part of the model: inference never drops.
    """

    def __init__(self, channels: int, num_classes: int, width: int | None = None, groups: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_dropout = 0.0
        self.shared = groups is not None  # hidden groups shared by the classes (see the docstring)
        self.groups = min(groups, num_classes) if groups is not None else num_classes
        self.bottleneck: nn.Conv2d | None
        if width:
            self.width = width
            self.bottleneck = nn.Conv2d(channels, self.groups * width, 1)
            self.hidden = nn.Conv2d(self.groups * width, self.groups * width, 3, padding=1, groups=self.groups)
        else:
            self.width = channels
            self.bottleneck = None
            self.hidden = nn.Conv2d(channels, self.groups * channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(self.groups * self.width, num_classes, 1, groups=1 if self.shared else num_classes)
        if self.bottleneck is not None:
            # Variance-preserving init (He for the ReLU'd 3×3): the zero-initialised output layer learns at a
            # speed proportional to W·|hidden|, which PyTorch's default init shrinks.
            nn.init.kaiming_normal_(self.bottleneck.weight, nonlinearity="linear")
            nn.init.kaiming_normal_(self.hidden.weight, nonlinearity="relu")
            nn.init.zeros_(self.bottleneck.bias)
            nn.init.zeros_(self.hidden.bias)

    @property
    def readout_groups(self) -> int:
        """Hidden groups each class's output reads: all G when they are shared, its own one otherwise. Its output
        layer's step moves the coarse maps about this many times as far (G·W inputs instead of W), so training
        divides the ConvDist learning rate by it (:attr:`~fsdistill.config.TrainCfg.student_lr`)."""
        return self.groups if self.shared else 1

    def init_output(self, prior: Tensor) -> None:
        """Start every coarse map at its class prior (N values in (0, 1)) with a zero output layer: the maps pass
        through a sigmoid, like the teacher's attention mass in [0, 1] (raw outputs, the reference's, moved by
        whole units in one step)."""
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.logit(prior.clamp(1e-3, 1 - 1e-3)))

    def forward(self, maps: list[Tensor]) -> Tensor:
        """L block maps, each B×C×h×w → B×N×L×h×w coarse maps in (0, 1) (class-major, like the teacher's)."""
        if self.training and self.input_dropout:
            maps = [F.dropout2d(m, self.input_dropout, training=True) for m in maps]
        x = torch.cat(maps, dim=0)  # (L·B)×C×h×w: all layer maps of the stage in one pass
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        hidden = self.act(self.hidden(x))  # (L·B)×(G·W)×h×w
        if self.shared:
            logits = self.out(hidden)  # a dense readout: one matrix product for all N classes
        else:
            n, lb, h, w = self.num_classes, *hidden.shape[:1], *hidden.shape[-2:]
            # The grouped 1×1 output conv as a product and a sum over each class's W channels: the same function
            # in two operators whatever N is (PyTorch's CPU grouped conv runs one small matrix product per class).
            weight = self.out.weight.view(1, n, self.width, 1, 1)
            logits = (hidden.view(lb, n, self.width, h, w) * weight).sum(dim=2) + self.out.bias.view(1, n, 1, 1)
        coarse = torch.sigmoid(logits)  # (L·B)×N×h×w
        b = maps[0].shape[0]
        return coarse.view(len(maps), b, self.num_classes, *coarse.shape[-2:]).permute(1, 2, 0, 3, 4)


class SharedRefiner(nn.Module):
    """The student's last stage, shared by all classes: the stride-4 and stride-8 query maps and the softmax of the
    N+1 merged logits → a residual added to those logits, at stride 4.

    The per-class decoder sees each class through its coarse maps and a narrow projection of the query maps; this
    stage sees the query maps at full width and every class at once, once per image whatever N is (a 1×1
    projection, two depthwise-separable 3×3 convs). Its output conv starts at zero: an untrained stage changes
    nothing.

    Args:
        skip_channels: channels of the stride-4 and stride-8 query maps. num_outputs: N+1. width: its channels.
    """

    def __init__(self, skip_channels: tuple[int, int], num_outputs: int, width: int = 32) -> None:
        super().__init__()
        c4, c8 = skip_channels
        self.width = width
        self.proj = nn.Conv2d(c4 + c8 + num_outputs, width, 1)
        self.norm = nn.GroupNorm(8, width)
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1))
            for _ in range(2)
        )
        self.out = nn.Conv2d(width, num_outputs, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: Tensor, skip4: Tensor, skip8: Tensor, coarse_logits: Tensor | None = None) -> Tensor:
        """B×(N+1)×H/4×W/4 logits, B×C4×H/4×W/4 and B×C8×H/8×W/8 query maps → refined B×(N+1)×H/4×W/4 logits.

        ``coarse_logits``: the B×(N+1)×H/8×W/8 logits that ``logits`` were upsampled from (decoders whose classes
        end at stride 8): their softmax is read at stride 8, where it costs a quarter (it grows with N)."""
        c4, c8 = skip4.shape[1], skip8.shape[1]
        weight = self.proj.weight
        # The stride-8 third of the 1×1 projection commutes with upsampling: it runs at stride 8.
        at8 = F.conv2d(skip8, weight[:, c4 : c4 + c8])
        if coarse_logits is not None:
            at8 = at8 + F.conv2d(coarse_logits.softmax(1), weight[:, c4 + c8 :])
        up8 = F.interpolate(at8, size=skip4.shape[-2:], mode="bilinear")
        x = F.conv2d(skip4, weight[:, :c4], self.proj.bias) + up8
        if coarse_logits is None:
            x = x + F.conv2d(logits.softmax(1), weight[:, c4 + c8 :])
        x = self.norm(x).relu_()
        for conv in self.convs:
            x = conv(x).relu_()
        return logits + self.out(x)


class DistilledStudent(nn.Module):
    """Backbone → ConvDist (stages 2–4) → decoder → N-way merge (→ refiner); backbone and decoder are the
    teacher's during joint training. ``width``: the ConvDist width per class (see :class:`ConvDist`). ``refiner``:
    end in a :class:`SharedRefiner` (decoders whose output stride is 4) of ``refiner_width`` channels (None: the
    decoder's ``refiner_width``; an artifact's own is read from its weights)."""

    def __init__(
        self,
        backbone: nn.Module,
        decoder: DCAMADecoder | LightDecoder | SharedDecoder,
        num_classes: int,
        width: int | None = None,
        refiner: bool = False,
        refiner_width: int | None = None,
    ) -> None:
        super().__init__()
        spec = backbone.spec
        self.backbone = backbone
        self.decoder = decoder
        self.num_classes = num_classes
        self.width_arg = width or None  # None = paper width (the stage's channels); stored in the artifact
        groups = decoder.convdist_groups
        self.convdist = nn.ModuleList(
            [ConvDist(spec.channels[lvl], num_classes, width, groups) for lvl in ATTENTION_LEVELS]
        )
        if refiner and decoder.output_stride != 4:
            raise ValueError(f"the refiner runs at stride 4; this decoder's output stride is {decoder.output_stride}")
        skips = (spec.channels[0], spec.channels[1])
        refiner_width = refiner_width or decoder.refiner_width
        self.refiner = SharedRefiner(skips, num_classes + 1, refiner_width) if refiner else None
        # Foreground fraction of each class in the support set: the decoder's coarse-map prior.
        self.register_buffer("class_prior", torch.full((num_classes,), 0.5))

    def set_class_prior(self, prior: Tensor) -> None:
        """Record the support set's N foreground fractions and start the ConvDist outputs there."""
        self.class_prior.copy_(prior)
        for dist in self.convdist:
            dist.init_output(prior)

    def set_input_dropout(self, probability: float) -> None:
        """Channel dropout on every ConvDist block's input maps while training (see :class:`ConvDist`)."""
        for dist in self.convdist:
            dist.input_dropout = probability

    def coarse_maps(self, feats: Features) -> list[Tensor]:
        """Per stage 2, 3, 4: B×N×n×h×w coarse maps mimicking the teacher's."""
        return [dist(feats[lvl]) for dist, lvl in zip(self.convdist, ATTENTION_LEVELS)]

    def forward_features(self, feats: Features) -> tuple[Tensor, list[Tensor]]:
        """Backbone features of B images → (B×(N+1)×h×w merged logits, per-stage B×N×n×h×w coarse maps)."""
        coarse = self.coarse_maps(feats)
        b, n = coarse[0].shape[:2]
        skip = self.decoder.skip_features(feats[0][-1], feats[1][-1])
        flat = [c.flatten(0, 1) for c in coarse]  # (B·N)×n×h×w, image-major
        prior = self.class_prior.repeat(b)
        logits = self.decoder(flat, skip, prior)  # (B·N)×2×h×w at the decoder's class stride
        merged = merge_classes(logits.view(b, n, 2, *logits.shape[-2:]))  # contiguous: classes outermost
        if merged.shape[1] >= _CHANNELS_LAST_MIN and skip.is_contiguous(memory_format=torch.channels_last):
            merged = merged.contiguous(memory_format=torch.channels_last)
        refined = self.decoder.refine(merged, skip)
        if self.refiner is not None:
            coarse_logits = merged if refined.shape[-2:] != merged.shape[-2:] else None
            refined = self.refiner(refined, feats[0][-1], feats[1][-1], coarse_logits)
        return refined, coarse

    def forward(self, images: Tensor) -> Tensor:
        """B×3×H×W normalised float images → B×(N+1)×h×w logits (background, class 1..N) at the decoder's output
        stride. The function ONNX export traces; uint8 images go to :meth:`predict`."""
        return self.forward_features(self.backbone(images))[0]

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """B×3×H×W uint8 RGB images → the logits of :meth:`forward` (the backbone's ``preprocess`` normalises)."""
        return self(self.backbone.preprocess(images))
