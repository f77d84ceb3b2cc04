"""Reference points that fsdistill's teacher and student must beat (used by benchmarks, not by the CLI).

``PrototypeBaseline``: training-free prototype matching (masked average pooling of support features, cosine
similarity per class), the classic few-shot segmentation baseline.

``FineTunedBaseline``: plain fine-tuning of a small FPN head on the frozen backbone's features with
cross-entropy, flips and the student's random crop views, full batch, until its training loss stops falling: what a
user would do instead, trained with its own budget and the method's augmentation (a baseline held to the method's
budget, or denied its augmentation, starves and hides a failing method).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsdistill.config import TrainCfg
from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.data.support_tensors import SupportTensors
from fsdistill.data.transforms import FLIP_VIEWS, flip, seeded_crop_views
from fsdistill.models.teacher import one_hot_masks
from fsdistill.train.budget import PlateauStop

__all__ = ["PrototypeBaseline", "FPNHead", "FineTunedBaseline"]

# The student's augmentation settings, so the baseline's defaults follow distill's.
_TRAIN_DEFAULTS = TrainCfg.model_fields


class PrototypeBaseline:
    """Class prototypes from the supports' stride-8 and stride-16 features; pixels take the nearest prototype.

    Args:
        backbone: a frozen :class:`~fsdistill.models.backbone.Backbone`. num_classes: foreground classes N.
    """

    def __init__(self, backbone, num_classes: int) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.prototypes: Tensor | None = None  # (N+1)×D, L2-normalised

    def _features(self, feats: list[list[Tensor]]) -> Tensor:
        """Last map of levels 1 and 2, upsampled to stride 8, each L2-normalised, concatenated: B×D×h×w."""
        level1, level2 = feats[1][-1], feats[2][-1]
        level2 = F.interpolate(level2, size=level1.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([F.normalize(level1, dim=1), F.normalize(level2, dim=1)], dim=1)

    @torch.no_grad()
    def fit(self, support: SupportTensors, device: torch.device) -> PrototypeBaseline:
        feats = self._features(self.backbone.encode_batched(support.images))  # S×D×h×w
        onehot = one_hot_masks(support.masks.to(device), self.num_classes)
        background = ((support.masks.to(device) == 0).float())[:, None]
        masks = torch.cat([background, onehot], dim=1)  # S×(N+1)×H×W
        masks = F.interpolate(masks, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        sums = torch.einsum("sdhw,skhw->kd", feats, masks)
        self.prototypes = F.normalize(sums / masks.sum(dim=(0, 2, 3))[:, None].clamp_min(1e-6), dim=1)
        return self

    @torch.no_grad()
    def logits(self, batch: Tensor) -> Tensor:
        """B×3×H×W normalised images → B×(N+1)×H/8×W/8 cosine similarities (upsample before the argmax)."""
        assert self.prototypes is not None, "call fit() first"
        feats = F.normalize(self._features(self.backbone(batch)), dim=1)
        return torch.einsum("bdhw,kd->bkhw", feats, self.prototypes)


class FPNHead(nn.Module):
    """A small FPN decoder on frozen backbone features: per-level 1×1 laterals, top-down sums, 3×3 smoothing.

    Args:
        channels: channels of the four backbone levels (strides 4, 8, 16, 32), ``backbone.spec.channels``.
        num_outputs: output channels (N+1 classes, background first). width: FPN channels.
    """

    def __init__(self, channels: tuple[int, int, int, int], num_outputs: int, width: int = 64) -> None:
        super().__init__()
        groups = 8 if width % 8 == 0 else 1
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.GroupNorm(groups, width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.GroupNorm(groups, width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(width, num_outputs, 1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        """Four B×C_l×H/s×W/s maps (strides 4, 8, 16, 32) → B×num_outputs×H/4×W/4 logits."""
        x = self.lateral[-1](maps[-1])
        for lateral, skip in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            x = lateral(skip) + F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.smooth(x))


class FineTunedBaseline:
    """Plain fine-tuning, what users do instead of few-shot segmentation: an FPN head on the frozen backbone.

    The head sees the last block map of each of the four backbone levels and is trained full batch (every support
    image in each step, each in a random one of its views: the four flips and ``crop_views`` random crops, the
    augmentation ``distill``'s student gets by default) with pixel-wise cross-entropy and AdamW until its training
    loss stops falling (:class:`~fsdistill.train.budget.PlateauStop`: windows of 20 steps, at least 100 and at
    most ``max_steps``). Backbone features of every support view are computed once before training, so a step
    costs only the head.

    Args:
        backbone: a frozen :class:`~fsdistill.models.backbone.Backbone`. num_classes: foreground classes N.
        width: FPN channels. augment: train on the flip and crop views (False: the identity view only).
        crop_views, crop_min_area, crop_centre_on_class: the crops
            (:func:`~fsdistill.data.transforms.random_resized_crops`), drawn from the fit's seed as the student's are
            from its training seed; defaults: ``TrainCfg``'s (``crop_centre`` "class": centred on a class).
    """

    def __init__(
        self,
        backbone,
        num_classes: int,
        width: int = 64,
        augment: bool = True,
        crop_views: int = _TRAIN_DEFAULTS["crop_views"].default,
        crop_min_area: float = _TRAIN_DEFAULTS["crop_min_area"].default,
        crop_centre_on_class: bool = _TRAIN_DEFAULTS["crop_centre"].default == "class",
    ) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.augment = augment
        self.crop_views, self.crop_min_area = crop_views, crop_min_area
        self.crop_centre_on_class = crop_centre_on_class
        self.head = FPNHead(tuple(backbone.spec.channels), num_classes + 1, width)
        self.stats: dict[str, float] = {}

    @staticmethod
    def _maps(feats: list[list[Tensor]]) -> list[Tensor]:
        """Backbone features (levels × block maps) → the last map of each level."""
        return [level[-1] for level in feats]

    def fit(
        self,
        support: SupportTensors,
        device: torch.device,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        seed: int = 0,
        steps: int | None = None,
        max_steps: int = 1000,
    ) -> FineTunedBaseline:
        """Train the head on the supports.

        Args:
            support: S×3×H×W uint8 images and S×H×W uint8 class-id masks (255 = ignore), at the model's input size.
            device: where to run. lr, weight_decay: AdamW's. seed: initialisation, crops and view draws.
            steps: a fixed number of full-batch steps (None: until the loss plateaus, at most ``max_steps``).
        Sets ``self.stats``: ``steps``, ``images`` (seen in training), ``encode_s`` (feature caching),
        ``train_s`` (the optimisation loop), ``final_loss`` (mean of the last 10 steps) and ``stop_reason``.
        """
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        self.head = self.head.to(device)
        start = time.perf_counter()
        flips = len(FLIP_VIEWS) if self.augment else 1
        images = [flip(support.images, v) for v in range(flips)]
        view_masks = [flip(support.masks, v) for v in range(flips)]
        crops = seeded_crop_views(
            support.images,
            support.masks,
            self.crop_views if self.augment else 0,
            self.crop_min_area,
            seed,
            self.crop_centre_on_class,
        )
        for crop_images, crop_masks in crops:
            images.append(crop_images)
            view_masks.append(crop_masks)
        views = len(images)
        cached = [self._maps(self.backbone.encode_batched(batch)) for batch in images]
        maps = [torch.stack([c[lvl] for c in cached], dim=1) for lvl in range(len(cached[0]))]  # S×V×C×h×w
        masks = torch.stack(view_masks, dim=1).to(device).long()  # S×V×H×W
        del cached, images
        encode_s = time.perf_counter() - start
        optimizer = torch.optim.AdamW(self.head.parameters(), lr=lr, weight_decay=weight_decay)
        stop = PlateauStop(min_steps=100, max_steps=max_steps, window=20) if steps is None else None
        losses: list[float] = []
        count = masks.shape[0]
        rows = torch.arange(count, device=device)
        self.head.train()
        start = time.perf_counter()
        while True:
            view = torch.randint(views, (count,), generator=generator).to(device)  # one view per image
            logits = self.head([m[rows, view] for m in maps])
            target = masks[rows, view]
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
            if torch.isfinite(loss):  # else every pixel is ignored: nothing to learn from it
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            losses.append(float(loss.detach()))
            if stop is not None and stop.update(losses[-1]):
                break
            if stop is None and len(losses) >= steps:
                break
        self.head.eval()
        self.stats = {
            "steps": len(losses),
            "images": len(losses) * count,
            "encode_s": encode_s,
            "train_s": time.perf_counter() - start,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan"),
            "stop_reason": stop.reason if stop is not None else f"the {steps} steps asked for",
        }
        return self

    @torch.no_grad()
    def logits(self, batch: Tensor) -> Tensor:
        """B×3×H×W normalised images → B×(N+1)×H/4×W/4 class logits (upsample before the argmax)."""
        return self.head(self._maps(self.backbone(batch)))
