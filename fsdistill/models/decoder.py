"""Decoders shared by teacher and student: ConvMapper → ConvMerge → query skips → Mixer, plus the N-way merge.

Three decoders with one interface and the module names of the reference checkpoints (``conv1``–``conv5``,
``mixer1``–``mixer3``, reference.md §1.3, §4): :class:`DCAMADecoder` (the paper's), :class:`LightDecoder` and
:class:`SharedDecoder` (cheaper per class). ``forward`` gives per-class (background, foreground) logits at
``class_stride`` for groups of coarse maps (one group per class, or per class and voting chunk);
:func:`merge_classes` merges them; ``refine`` takes the merged logits to ``output_stride``. The class-independent
skip features are computed once per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DCAMADecoder",
    "LightDecoder",
    "SharedDecoder",
    "DECODERS",
    "merge_classes",
    "ABSENT_LOGIT",
]

# A class with no support gets this finite fg logit: the reference uses -inf, which turns the loss into NaN when
# no sampled support holds any class (reference.md §7.7).
ABSENT_LOGIT = -1.0e4


def _conv_gn_relu(channels: list[int], kernels: list[int]) -> nn.Sequential:
    """3×[Conv(k) → GroupNorm(4) → ReLU]: parameters at Sequential indices 0/1, 3/4, 6/7 as in the checkpoints."""
    layers: list[nn.Module] = []
    for c_in, c_out, k in zip(channels[:-1], channels[1:], kernels):
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _resized(maps: Tensor, size: torch.Size) -> Tensor:
    """B×C×h×w → B×C×size, bilinear with align_corners; maps already of that size are returned as they are (the
    identity under align_corners, without the call)."""
    return maps if maps.shape[-2:] == size else F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def _map_mean(coarse: Tensor) -> Tensor:
    """(B·G)×n×h×w coarse maps → (B·G)×h×w, the mean of each group's n maps, in the maps' own memory layout.

    A sum of the n slices: a reduction over dim 1 would write a contiguous result, a transposing pass when the
    groups lie innermost (the student's maps as ConvDist writes them), several times slower at 20+ classes."""
    total = coarse[:, 0]
    for i in range(1, coarse.shape[1]):
        total = total + coarse[:, i]
    return total / coarse.shape[1]


def _as_image(maps: Tensor) -> Tensor:
    """G×h×w maps → a 1×G×h×w view with a whole image's batch stride.

    ``maps[None]`` gives the new size-1 batch dimension a stride of G, which PyTorch does not read as channels-last
    even when the groups lie innermost (as ConvDist writes them): upsampling then takes its planar path and writes
    a contiguous copy, and every sum with the channels-last maps after it is a strided pass."""
    return maps.permute(1, 2, 0)[None].permute(0, 3, 1, 2)


def _conv_relu(channels: list[int], final_relu: bool) -> nn.Sequential:
    """Conv3×3 → ReLU per step (no ReLU after the last unless ``final_relu``)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if final_relu or i < len(channels) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _CoarseMapDecoder(nn.Module):
    """What the decoders share: the skip features, the coarse-map prior, the group broadcast. Subclasses define
    ``conv1``–``conv5`` and ``mixer1``–``mixer3``. ``output_stride`` is the merged logits' stride relative to the
    input, ``class_stride`` the per-class logits' (of ``forward``)."""

    mixer1: nn.Sequential
    # ConvDist hidden groups the decoder's students share among their classes; None = one per class (the paper's).
    convdist_groups: int | None = None
    # Channels of its students' class-shared stride-4 refiner (:class:`~fsdistill.models.student.SharedRefiner`).
    refiner_width: int = 32

    def __init__(self, width: int, mixer: tuple[int, int, int], output_stride: int, class_stride: int = 0) -> None:
        super().__init__()
        self.width, self.mixer_widths = width, tuple(mixer)
        self.output_stride, self.class_stride = output_stride, class_stride or output_stride

    def refine(self, merged: Tensor, skip: Tensor) -> Tensor:
        """Merged B×(N+1)×h×w logits → the same: the per-class decoders' classes are already at output stride."""
        return merged

    def mixer_parameters(self) -> list[nn.Parameter]:
        """The "mixer" trainable group: mixer1–3, any skip projection, and the coarse-map prior's scale."""
        skips = [m for name, m in self.named_children() if name.startswith("skip_proj")]
        modules = [self.mixer1, *skips, self.mixer2, self.mixer3]
        return [p for m in modules for p in m.parameters()] + [self.prior_scale]

    def _init_prior(self, *zeroed: nn.Conv2d) -> None:
        # Our addition: a coarse-map prior added to the foreground logit, scale * (mean coarse map - class prior).
        # The output convs (``zeroed``, default mixer3's last) start at zero, so an untrained decoder is a
        # training-free baseline; imported reference weights set the scale to 0 and behave as published.
        self.prior_scale = nn.Parameter(torch.tensor(8.0))
        for last in zeroed or (self.mixer3[-1],):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def skip_features(self, skip4: Tensor, skip8: Tensor) -> Tensor:
        """Class-independent part of mixer1's first conv, once per image: the last stride-4 and stride-8 query maps
        (B×C4×H/4×W/4, B×C8×H/8×W/8) → B×M1×H/4×W/4, bias included."""
        first = self.mixer1[0]
        w = first.weight[:, self.width :]
        up8 = F.interpolate(skip8, size=skip4.shape[-2:], mode="bilinear", align_corners=True)
        return F.conv2d(torch.cat([up8, skip4], dim=1), w, first.bias, padding=1)

    @staticmethod
    def _add_skip(x: Tensor, skip: Tensor) -> Tensor:
        """(B·G)×M×h×w per-group maps + B×M×h×w shared skip features, broadcast over the G groups (no copies)."""
        return (x.view(skip.shape[0], -1, *x.shape[1:]) + skip[:, None]).flatten(0, 1)

    def _with_prior(self, logits: Tensor, coarse: list[Tensor], prior: Tensor | None) -> Tensor:
        """(B·G)×2×H×W logits + the coarse-map prior on the foreground channel (see :meth:`_init_prior`).

        The evidence is the mean of all coarse maps of all stages, upsampled to the logits' size: per stage the
        mean map of each group, the groups as the channels of one image (one resampling call for all of them)."""
        if prior is None:
            return logits
        size = logits.shape[-2:]
        means = [_resized(_as_image(_map_mean(stage)), size) for stage in coarse]  # per stage 1×(B·G)×H×W
        evidence = means[0]
        for mean in means[1:]:
            evidence = evidence + mean
        shift = self.prior_scale * (evidence[0] / len(coarse) - prior.view(-1, 1, 1))
        # A copy in the logits' own memory layout, shifted in place: stacking the two channels anew would give a
        # contiguous tensor and a strided pass over channels-last logits. (``shifted[:, 1] += shift`` would also copy
        # the shifted channel onto itself, Python's item assignment after the in-place add.)
        shifted = logits.clone()
        shifted[:, 1].add_(shift)
        return shifted

    def _project_skips(self, skip4: Tensor, skip8: Tensor) -> Tensor:
        """``skip_proj`` (1×1) of the upsampled stride-8 map and the stride-4 map: B×M×H/4×W/4. The projection
        commutes with upsampling, so the stride-8 half runs at stride 8."""
        c8 = skip8.shape[1]
        weight, bias = self.skip_proj.weight, self.skip_proj.bias
        up8 = F.interpolate(F.conv2d(skip8, weight[:, :c8]), size=skip4.shape[-2:], mode="bilinear", align_corners=True)
        return F.conv2d(skip4, weight[:, c8:], bias) + up8


class DCAMADecoder(_CoarseMapDecoder):
    """Coarse maps of stages 2–4 → 2-channel (background, foreground) logits at the input resolution.

    Args:
        num_layers: coarse maps per stage (stage 2, 3, 4) = block-level taps of backbone levels 1, 2, 3.
        skip_channels: channels of the stride-4 and stride-8 query maps (levels 0 and 1).
        width: ConvMapper/ConvMerge output channels; the mapper's inner widths are width/8 and width/2.
        mixer: mixer channel widths; mixer2 runs at stride 2, mixer3 at stride 1.
    """

    def __init__(
        self,
        num_layers: tuple[int, int, int],
        skip_channels: tuple[int, int],
        width: int = 128,
        mixer: tuple[int, int, int] = (128, 64, 16),
    ) -> None:
        super().__init__(width, mixer, output_stride=1)
        n2, n3, n4 = num_layers
        inner = [width // 8, width // 2, width]
        # ConvMapper: conv1 for stage 4 (stride 32), conv2 for stage 3 (16), conv3 for stage 2 (8).
        self.conv1 = _conv_gn_relu([n4, *inner], [3, 3, 3])
        self.conv2 = _conv_gn_relu([n3, *inner], [5, 3, 3])
        self.conv3 = _conv_gn_relu([n2, *inner], [5, 5, 3])
        self.conv4 = _conv_gn_relu([width] * 4, [3, 3, 3])
        self.conv5 = _conv_gn_relu([width] * 4, [3, 3, 3])
        c4, c8 = skip_channels
        m1, m2, m3 = mixer
        # mixer1 sees [merged coarse (width), stride-8 query map (c8), stride-4 query map (c4)], in that order.
        self.mixer1 = _conv_relu([width + c8 + c4, m1, m2], final_relu=True)
        self.mixer2 = _conv_relu([m2, m2, m3], final_relu=True)
        self.mixer3 = _conv_relu([m3, m3, 2], final_relu=False)
        self._init_prior()

    def forward(self, coarse: list[Tensor], skip: Tensor, prior: Tensor | None = None) -> Tensor:
        """Decode G groups of coarse maps per image.

        Args:
            coarse: [stage 2: (B·G)×n2×H/8×W/8, stage 3: (B·G)×n3×H/16×W/16, stage 4: (B·G)×n4×H/32×W/32],
                ordered image-major (all groups of image 0 first).
            skip: B×M1×H/4×W/4 from :meth:`skip_features`.
            prior: (B·G) class priors in [0, 1] (foreground fraction of the supports), or None for no prior.
        Returns:
            (B·G)×2×H×W logits (background, foreground) at the input size.
        """
        cm2, cm3, cm4 = coarse
        x4 = self.conv1(cm4)
        x3 = self.conv2(cm3)
        x2 = self.conv3(cm2)
        x = x3 + F.interpolate(x4, size=x3.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv4(x)
        x = x2 + F.interpolate(x, size=x2.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv5(x)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        first = self.mixer1[0]
        x = F.conv2d(x, first.weight[:, : self.width], None, padding=1)
        x = self._add_skip(x, skip)
        x = self.mixer1[1:](x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.mixer2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self._with_prior(self.mixer3(x), coarse, prior)


class LightDecoder(_CoarseMapDecoder):
    """The DCAMA decoder's data flow with one conv per block and every per-class layer at stride ≥ 4.

    mixer1's coarse half runs at stride 8 and is added, upsampled, to the shared skip features (the last stride-8
    and stride-4 query maps through a 1×1 ``skip_proj``, once per image); three Conv3×3 then run at stride 4.
    Arguments as :class:`DCAMADecoder`'s.
    """

    def __init__(
        self,
        num_layers: tuple[int, int, int],
        skip_channels: tuple[int, int],
        width: int = 32,
        mixer: tuple[int, int, int] = (16, 16, 16),
    ) -> None:
        super().__init__(width, mixer, output_stride=4)
        n2, n3, n4 = num_layers
        self.conv1 = _conv_gn_relu([n4, width], [3])
        self.conv2 = _conv_gn_relu([n3, width], [3])
        self.conv3 = _conv_gn_relu([n2, width], [3])
        self.conv4 = _conv_gn_relu([width, width], [3])
        self.conv5 = _conv_gn_relu([width, width], [3])
        c4, c8 = skip_channels
        m1, m2, m3 = mixer
        # mixer1.0 keeps only the coarse half (its bias lives in skip_proj, added once per image).
        self.mixer1 = _conv_relu([width, m1, m2], final_relu=True)
        self.mixer1[0].register_parameter("bias", None)
        self.skip_proj = nn.Conv2d(c8 + c4, m1, 1)
        self.mixer2 = _conv_relu([m2, m3], final_relu=True)
        self.mixer3 = _conv_relu([m3, 2], final_relu=False)
        self._init_prior()

    def skip_features(self, skip4: Tensor, skip8: Tensor) -> Tensor:
        """Class-independent part of the mixer's input, once per image: B×M1×H/4×W/4 (see
        :meth:`DCAMADecoder.skip_features`)."""
        return self._project_skips(skip4, skip8)

    def forward(self, coarse: list[Tensor], skip: Tensor, prior: Tensor | None = None) -> Tensor:
        """Same contract as :meth:`DCAMADecoder.forward` (``skip`` from :meth:`skip_features`); returns
        (B·G)×2×H/4×W/4 logits."""
        cm2, cm3, cm4 = coarse
        x3 = self.conv2(cm3) + F.interpolate(self.conv1(cm4), size=cm3.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv4(x3)
        x = self.conv3(cm2) + F.interpolate(x, size=cm2.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv5(x)
        # mixer1's first conv is linear: its coarse half runs at stride 8 on `width` channels and only its
        # M1-channel result is upsampled, instead of upsampling `width` channels and convolving at stride 4.
        x = F.conv2d(x, self.mixer1[0].weight[:, : self.width], None, padding=1)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        x = self.mixer2(self.mixer1[1:](self._add_skip(x, skip)))
        return self._with_prior(self.mixer3(x), coarse, prior)


class SharedDecoder(_CoarseMapDecoder):
    """For many classes: narrow per-class work at stride ≥ 8 only, then the N+1 merged logits upsampled alike.

    Per class: conv1 (stride 32) and conv2 (stride 16) map the coarse maps to ``width`` channels, conv4 merges them
    and conv5 narrows to M1 at stride 16 (so the only per-class upsampling carries M1 channels), conv3 maps stage
    2's maps at stride 8, the shared stride-8 query features (``skip_proj8``, once per image) are added, and a
    depthwise-separable mixer (mixer1: depthwise 3×3, 1×1 to M2, ReLU; mixer2: 1×1 to M3, ReLU; mixer3: 1×1 to 2)
    gives stride-8 (background, foreground) logits. After :func:`merge_classes`, :meth:`refine` upsamples the N+1
    merged channels bilinearly to stride 4, where the student's class-shared refiner corrects them from the query
    features. No per-class layer at stride 4 and no GroupNorm (on channels-last maps of 8 channels it costs more
    than its conv): beyond four classes a class adds ~4 MFLOP at 384 px, ConvDist included (the light decoder's
    ~185 MFLOP).

    Its students' ConvDist blocks share ``convdist_groups`` hidden groups among all classes (see
    :class:`~fsdistill.models.student.ConvDist`), so their cost stops growing with the classes too.

    Args: as :class:`DCAMADecoder`; ``mixer`` is M1 (per-class stride-8 channels), M2, M3 (the mixer's).
    """

    convdist_groups = 4
    # Its point is speed, and the refiner is the one stage that runs at stride 4: at 32 channels it cost as much as
    # the rest of the head at one class (2.0 of 5.1 ms at 384 px, two threads), at 16 channels 1.4 of 4.4 ms.
    refiner_width = 16

    def __init__(
        self,
        num_layers: tuple[int, int, int],
        skip_channels: tuple[int, int],
        width: int = 8,
        mixer: tuple[int, int, int] = (8, 8, 8),
    ) -> None:
        super().__init__(width, mixer, output_stride=4, class_stride=8)
        n2, n3, n4 = num_layers
        c8 = skip_channels[1]
        m1, m2, m3 = mixer
        # No GroupNorm: the inputs are coarse maps in (0, 1), and on channels-last maps of 8 channels GroupNorm
        # costs more than the conv it follows.
        self.conv1 = _conv_relu([n4, width], final_relu=True)
        self.conv2 = _conv_relu([n3, width], final_relu=True)
        self.conv4 = _conv_relu([width, width], final_relu=True)
        self.conv5 = _conv_relu([width, m1], final_relu=True)
        # Stage 2's maps enter at stride 8 through a 1×1 (the mixer's depthwise 3×3 gives the spatial context).
        self.conv3 = nn.Sequential(nn.Conv2d(n2, m1, 1))
        self.skip_proj8 = nn.Conv2d(c8, m1, 1)
        self.mixer1 = nn.Sequential(
            nn.Conv2d(m1, m1, 3, padding=1, groups=m1), nn.Conv2d(m1, m2, 1), nn.ReLU(inplace=True)
        )
        self.mixer2 = nn.Sequential(nn.Conv2d(m2, m3, 1), nn.ReLU(inplace=True))
        self.mixer3 = nn.Sequential(nn.Conv2d(m3, 2, 1))
        self._init_prior()

    def skip_features(self, skip4: Tensor, skip8: Tensor) -> Tensor:
        """Class-independent part, once per image: the stride-8 query map (B×C8×H/8×W/8) → B×M1×H/8×W/8, bias
        included (``skip4`` is the refiner's, not read here)."""
        return self.skip_proj8(skip8)

    def forward(self, coarse: list[Tensor], skip: Tensor, prior: Tensor | None = None) -> Tensor:
        """As :meth:`DCAMADecoder.forward`, but (B·G)×2×H/8×W/8 logits: :func:`merge_classes`, then :meth:`refine`."""
        # Channels-last copies of the (permuted) coarse maps: the narrow convs run several times faster on them.
        cm2, cm3, cm4 = (c.contiguous(memory_format=torch.channels_last) for c in coarse)
        x3 = self.conv2(cm3) + F.interpolate(self.conv1(cm4), size=cm3.shape[-2:], mode="bilinear", align_corners=True)
        # conv5 narrows to M1 channels at stride 16, so only M1 (not `width`) channels per class are upsampled.
        x = F.interpolate(self.conv5(self.conv4(x3)), size=cm2.shape[-2:], mode="bilinear", align_corners=True)
        x = self._add_skip(x.add_(self.conv3(cm2)), skip).relu_()
        # The prior averages each group's maps as ConvDist wrote them (map after map, the groups innermost), not
        # the channels-last copies, whose maps of one group lie innermost: strided slices to sum.
        return self._with_prior(self.mixer3(self.mixer2(self.mixer1(x))), coarse, prior)

    def refine(self, merged: Tensor, skip: Tensor) -> Tensor:
        """B×K×h×w merged stride-8 logits → B×K×2h×2w (K = N+1), every channel upsampled bilinearly; an absent
        class keeps ``ABSENT_LOGIT`` (the weights are convex)."""
        return F.interpolate(merged, scale_factor=2, mode="bilinear", align_corners=False)


DECODERS = {"dcama": DCAMADecoder, "light": LightDecoder, "shared": SharedDecoder}


def merge_classes(logits: Tensor, present: Tensor | None = None) -> Tensor:
    """N one-vs-all binary logit pairs → (N+1)-way logits (reference.md §1.4).

    Each pixel's background logit is that of the class with the largest foreground logit; class c keeps its own
    foreground logit. Classes absent in ``present`` (B×N bool; None = all present) get ``ABSENT_LOGIT`` and
    background 0, so a pixel with no class present is background and the loss stays finite.

    Args:
        logits: B×N×2×H×W (background, foreground) per class. Returns B×(N+1)×H×W.
    """
    bg, fg = logits[:, :, 0], logits[:, :, 1]
    if present is not None:
        mask = present[:, :, None, None]
        fg = torch.where(mask, fg, torch.full_like(fg, ABSENT_LOGIT))
        bg = torch.where(mask, bg, torch.zeros_like(bg))
    # The first of equal maxima wins, as in argmax (torch.max's documented tie rule); max-with-indices plus a gather
    # is a few operators whatever N is (a running maximum costs three per class; argmax itself is the slow path).
    best = fg.max(dim=1, keepdim=True).indices
    return torch.cat([bg.gather(1, best), fg], dim=1)
