"""The DCAMA decoder shared by teacher and student: ConvMapper → ConvMerge → query skips → Mixer, plus the N-way merge.

Module names follow the reference checkpoints (``conv1``–``conv5``, ``mixer1``–``mixer3``; reference.md §1.3, §4)
so official weights import by name. Coarse maps arrive per *group* (one group per class, or per class and voting
chunk): the class-independent skip features are computed once per image and shared by every group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCAMADecoder", "merge_classes", "ABSENT_LOGIT"]

# A class with no support gets this finite fg logit: the reference uses -inf, which turns the loss into NaN when
# no sampled support holds any class (reference.md §7.7).
ABSENT_LOGIT = -1.0e4


def _conv_gn_relu(channels: list[int], kernels: list[int]) -> nn.Sequential:
    """3×[Conv(k) → GroupNorm(4) → ReLU]: parameters at Sequential indices 0/1, 3/4, 6/7 as in the checkpoints."""
    layers: list[nn.Module] = []
    for c_in, c_out, k in zip(channels[:-1], channels[1:], kernels):
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _conv_relu(channels: list[int], final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if final_relu or i < len(channels) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DCAMADecoder(nn.Module):
    """Coarse maps of stages 2–4 → 2-channel (background, foreground) logits at the input resolution.

    Args:
        num_layers: coarse maps per stage (stage 2, 3, 4) = block-level taps of backbone levels 1, 2, 3.
        skip_channels: channels of the stride-4 and stride-8 query maps (levels 0 and 1).
        width: ConvMapper/ConvMerge output channels (128 in the paper); the mapper's inner widths scale with it
            (width/8, width/2: 16, 64 in the paper).
        mixer: mixer channel widths (128, 64, 16 in the paper).
        full_resolution: the paper's schedule, mixer2 at stride 2 and mixer3 at stride 1. False runs all mixers at
            stride 4 and upsamples the 2-channel logits ×4: 16× fewer operations in the two most expensive
            layers of a class, which decide the student's speed on small backbones.
    """

    def __init__(
        self,
        num_layers: tuple[int, int, int],
        skip_channels: tuple[int, int],
        width: int = 128,
        mixer: tuple[int, int, int] = (128, 64, 16),
        full_resolution: bool = True,
    ) -> None:
        super().__init__()
        n2, n3, n4 = num_layers
        self.width = width
        self.full_resolution = full_resolution
        self.mixer_widths = tuple(mixer)
        inner = [width // 8, width // 2, width]
        # ConvMapper: conv1 for stage 4 (stride 32), conv2 for stage 3 (16), conv3 for stage 2 (8).
        self.conv1 = _conv_gn_relu([n4, *inner], [3, 3, 3])
        self.conv2 = _conv_gn_relu([n3, *inner], [5, 3, 3])
        self.conv3 = _conv_gn_relu([n2, *inner], [5, 5, 3])
        # ConvMerge.
        self.conv4 = _conv_gn_relu([width] * 4, [3, 3, 3])
        self.conv5 = _conv_gn_relu([width] * 4, [3, 3, 3])
        c4, c8 = skip_channels
        m1, m2, m3 = mixer
        # mixer1 sees [merged coarse (width), stride-8 query map (c8), stride-4 query map (c4)], in that order.
        self.mixer1 = _conv_relu([width + c8 + c4, m1, m2], final_relu=True)
        self.mixer2 = _conv_relu([m2, m2, m3], final_relu=True)
        self.mixer3 = _conv_relu([m3, m3, 2], final_relu=False)
        # Our addition: a coarse-map prior added to the foreground logit, scale * (mean coarse map - class prior).
        # It makes an untrained decoder a meaningful training-free baseline (the last conv starts at zero, so the
        # prior alone decides at step 0); imported reference weights set the scale to 0 and behave as published.
        self.prior_scale = nn.Parameter(torch.tensor(8.0))
        nn.init.zeros_(self.mixer3[-1].weight)
        nn.init.zeros_(self.mixer3[-1].bias)

    def skip_features(self, skip4: Tensor, skip8: Tensor) -> Tensor:
        """Class-independent part of mixer1's first conv, computed once per image.

        Args:
            skip4: B×C4×H/4×W/4 last stride-4 query map. skip8: B×C8×H/8×W/8 last stride-8 query map.
        Returns:
            B×M1×H/4×W/4 (bias included).
        """
        first = self.mixer1[0]
        w = first.weight[:, self.width :]
        up8 = F.interpolate(skip8, size=skip4.shape[-2:], mode="bilinear", align_corners=True)
        return F.conv2d(torch.cat([up8, skip4], dim=1), w, first.bias, padding=1)

    def forward(self, coarse: list[Tensor], skip: Tensor, prior: Tensor | None = None) -> Tensor:
        """Decode G groups of coarse maps per image.

        Args:
            coarse: [stage 2: (B·G)×n2×H/8×W/8, stage 3: (B·G)×n3×H/16×W/16, stage 4: (B·G)×n4×H/32×W/32],
                ordered image-major (all groups of image 0 first).
            skip: B×M1×H/4×W/4 from :meth:`skip_features`.
            prior: (B·G) class priors in [0, 1] (foreground fraction of the supports), or None for no prior.
        Returns:
            (B·G)×2×H×W logits (background, foreground) at 4× the skip resolution (the input size).
        """
        cm2, cm3, cm4 = coarse
        groups = cm2.shape[0] // skip.shape[0]
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
        x = x + skip.repeat_interleave(groups, dim=0)
        x = self.mixer1[1:](x)
        if self.full_resolution:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = self.mixer2(x)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = self.mixer2(x)
        logits = self.mixer3(x)
        if prior is not None:
            evidence = self.coarse_evidence(coarse, logits.shape[-2:])
            fg = logits[:, 1] + self.prior_scale * (evidence - prior.view(-1, 1, 1))
            logits = torch.stack([logits[:, 0], fg], dim=1)
        if not self.full_resolution:
            logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        return logits

    def arguments(self) -> dict:
        """Constructor arguments beyond the backbone-derived ones (stored in artifacts to rebuild the decoder)."""
        return {"decoder_width": self.width, "mixer_widths": list(self.mixer_widths), "full_resolution": self.full_resolution}

    @staticmethod
    def coarse_evidence(coarse: list[Tensor], size: tuple[int, int] | torch.Size) -> Tensor:
        """Mean of all coarse maps of all stages, upsampled: (B·G)×H×W attention mass on the foreground."""
        maps = [F.interpolate(c.mean(dim=1, keepdim=True), size=size, mode="bilinear", align_corners=True) for c in coarse]
        return torch.cat(maps, dim=1).mean(dim=1)


def merge_classes(logits: Tensor, present: Tensor | None = None) -> Tensor:
    """N one-vs-all binary logit pairs → (N+1)-way logits (reference.md §1.4).

    Each pixel's background logit is that of the class with the largest foreground logit; class c keeps its own
    foreground logit. Classes marked absent get a very low finite foreground logit (and background 0), so a pixel
    with no class present is background and the loss stays finite.

    Args:
        logits: B×N×2×H×W (background, foreground) per class.
        present: B×N bool, which classes had support; None = all.
    Returns:
        B×(N+1)×H×W.
    """
    bg, fg = logits[:, :, 0], logits[:, :, 1]
    if present is not None:
        mask = present[:, :, None, None]
        fg = torch.where(mask, fg, torch.full_like(fg, ABSENT_LOGIT))
        bg = torch.where(mask, bg, torch.zeros_like(bg))
    winner = fg.argmax(dim=1, keepdim=True)
    merged_bg = bg.gather(1, winner)
    return torch.cat([merged_bg, fg], dim=1)
