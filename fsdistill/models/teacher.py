"""DCAMA teacher: dense cross-attention between query and support features, value = the support mask.

Reimplemented from the paper and reference.md §1 (the reference code has no licence); support features are cached
per support set and one attention pass per support chunk serves every class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsdistill.models.decoder import DCAMADecoder, LightDecoder, SharedDecoder, merge_classes

__all__ = ["DenseCrossAttention", "DCAMATeacher", "SupportFeatures", "sinusoidal_pe", "one_hot_masks"]

Features = list[list[Tensor]]  # backbone output: 4 levels (stride 4/8/16/32), each a list of B×C×h×w block maps
ATTENTION_LEVELS = (1, 2, 3)  # backbone levels with attention = paper stages 2, 3, 4


def sinusoidal_pe(length: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """1-D sinusoidal encoding of the flattened raster index: length×channels, for any length."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(length, channels, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : channels // 2]
    return pe.to(dtype)


def one_hot_masks(masks: Tensor, num_classes: int) -> Tensor:
    """S×H×W class ids (255 = ignore) → S×N×H×W float foreground masks of classes 1..N (ignore counts as 0)."""
    ids = torch.arange(1, num_classes + 1, device=masks.device)
    return (masks[:, None] == ids[None, :, None, None]).float()


class DenseCrossAttention(nn.Module):
    """One attention block per stage, shared by all block-level maps of that stage (reference.md §1.2).

    Only query and key projections (``linears.0``, ``linears.1``): the value is the support mask. They start as the
    identity, so an untrained teacher already matches query pixels to similar support pixels.
    """

    def __init__(
        self, channels: int, heads: int = 8, dropout: float = 0.5, use_pe: bool = True, qk_norm: float | None = 2.0
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} heads")
        self.channels, self.heads, self.dropout, self.use_pe = channels, heads, dropout, use_pe
        # qk_norm = temperature of a cosine-similarity attention (q, k L2-normalised per head); None = raw dot
        # products (the reference), where high-norm support pixels win for every query.
        self.qk_norm = qk_norm
        self.linears = nn.ModuleList([nn.Linear(channels, channels), nn.Linear(channels, channels)])
        for linear in self.linears:
            nn.init.eye_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _tokens(self, x: Tensor, proj: nn.Linear, noise: bool) -> Tensor:
        """B×C×h×w → B×heads×(h·w)×d, position-encoded and projected (token dropout when ``noise``)."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.use_pe:
            tokens = tokens + sinusoidal_pe(h * w, c, x.device, x.dtype)
        tokens = F.dropout(tokens, p=self.dropout, training=noise) if self.use_pe else tokens
        tokens = proj(tokens).view(b, h * w, self.heads, c // self.heads).transpose(1, 2)
        return F.normalize(tokens, dim=-1) if self.qk_norm else tokens

    def keys(self, support: Tensor, noise: bool | None = None) -> Tensor:
        """S×C×h×w support maps → S×heads×(h·w)×d keys (``noise`` None = dropout in training mode)."""
        return self._tokens(support, self.linears[1], self.training if noise is None else noise)

    def _scale(self, dim: int) -> float:
        return self.qk_norm or 1.0 / math.sqrt(dim)

    @staticmethod
    def _fused(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """softmax(q·kᵀ·scale)·v with the fused kernel: ...×Q×d, ...×K×d, ...×K×e → ...×Q×e."""
        # The fused kernel (no Q×K score matrix) needs one head size for q, k and v: zero-padding q and k leaves
        # every dot product unchanged, zero-padding v adds unused columns.
        width = max(q.shape[-1], v.shape[-1])
        columns = v.shape[-1]
        q, k, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :columns]

    @torch.no_grad()
    def partial_sums(self, query: Tensor, keys: Tensor, masks: Tensor) -> Tensor:
        """Unnormalised attention sums of one query map against each support separately (no dropout).

        Args:
            query: 1×C×h×w query map. keys: S×heads×K×d keys of S supports (K = h'·w' positions each).
            masks: S×K×N support masks of N classes at the key positions.
        Returns:
            S×heads×Q×(N+1), float32: columns [0, N) hold Σₖ exp(sₖ)·maskₖ, column N holds Σₖ exp(sₖ), per query
            position (sₖ the scaled query-key score). A softmax over any subset of supports is a ratio of these
            sums (:meth:`DCAMATeacher.coarse_from_sums`).
        """
        s, heads, _, d = keys.shape
        classes = masks.shape[-1]
        q = self._tokens(query, self.linears[0], noise=False).float().expand(s, -1, -1, -1)
        # An extra all-zero key scores exactly 0 for every query (weight e⁰ = 1) and carries value 1 in an extra
        # column: that column of the softmax output is 1/(Z + 1), Z = Σₖ exp(sₖ), which the fused kernel never
        # returns otherwise. Z ≤ K·e^scale stays far from float32 limits for cosine scores.
        k = torch.cat([keys.float(), keys.new_zeros(s, heads, 1, d, dtype=torch.float32)], dim=2)
        v = masks.float()[:, None].expand(s, heads, -1, -1)
        v = torch.cat([F.pad(v, (0, 1)), v.new_zeros(s, heads, 1, classes + 1)], dim=2)
        v[:, :, -1, -1] = 1.0
        out = self._fused(q, k, v, self._scale(d))  # S×heads×Q×(N+1)
        total = 1.0 / out[..., -1:]  # Z + 1
        return torch.cat([out[..., :classes] * total, total - 1.0], dim=-1)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Coarse masks: per group, attention-weighted support-mask mass at every query pixel.

        Args:
            query: 1×C×h×w. keys: heads×K×d keys of the K = S·h'·w' support positions (shots concatenated).
            values: K×2G: columns [0, G) hold mask_g·flag_g, columns [G, 2G) hold flag_g, where flag_g marks the
                keys of supports that show group g. Dividing the first half of softmax(QKᵀ/√d)·values by the
                second is a softmax over only the supports of that class, for all classes in one pass.
        Returns:
            G×h×w coarse maps in [0, 1], averaged over heads.
        """
        _, _, h, w = query.shape
        groups = values.shape[1] // 2
        q = self._tokens(query, self.linears[0], self.training)  # 1×heads×Q×d
        masked, flags = values[:, :groups], values[:, groups:]
        masked = masked.expand(self.heads, -1, -1)
        if self.training and self.dropout > 0:
            # Attention dropout per support position and head, not per query-key pair (the reference): the same
            # expectation, and it keeps the fused kernel.
            keep = torch.rand(self.heads, masked.shape[1], 1, device=query.device) >= self.dropout
            masked = masked * keep / (1.0 - self.dropout)
        v = torch.cat([masked, flags.expand(self.heads, -1, -1)], dim=-1)[None]
        out = self._fused(q, keys[None], v, self._scale(q.shape[-1]))[0]  # heads×Q×2G
        # A class whose supports all score far below the others underflows: the clamp keeps it finite (0).
        coarse = (out[..., :groups] / out[..., groups:].clamp_min(1e-12)).mean(dim=0)
        return coarse.transpose(0, 1).reshape(groups, h, w)


@dataclass
class SupportFeatures:
    """Everything the teacher needs from a support set, computed once (the backbone is frozen).

    Attributes:
        feats: per attention level (1, 2, 3), a list of S×C×h×w block maps.
        masks: per attention level, S×N×h×w foreground masks resized bilinearly to that grid.
        present: S×N bool, which classes each support shows.
    """

    feats: dict[int, list[Tensor]]
    masks: dict[int, Tensor]
    present: Tensor

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> SupportFeatures:
        return SupportFeatures(
            feats={lvl: [fn(m) for m in maps] for lvl, maps in self.feats.items()},
            masks={lvl: fn(m) for lvl, m in self.masks.items()},
            present=fn(self.present),
        )

    def select(self, index: Tensor | list[int]) -> SupportFeatures:
        index = torch.as_tensor(index, dtype=torch.long, device=self.present.device)
        return self._apply(lambda t: t[index])

    def to(self, device: torch.device | str) -> SupportFeatures:
        return self._apply(lambda t: t.to(device))

    def __len__(self) -> int:
        return int(self.present.shape[0])


class DCAMATeacher(nn.Module):
    """Support-based N-way few-shot segmenter (one-vs-all per class, reference.md §1).

    Args:
        backbone: frozen feature extractor with ``spec.channels`` / ``spec.num_blocks`` per level.
        decoder: from :func:`fsdistill.models.build.build_decoder`; the student trained with this teacher shares it.
        heads, use_pe, attn_dropout, qk_norm: of the attention blocks (:class:`DenseCrossAttention`).
        voting: support images per attention chunk at inference (:meth:`predict_features`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: DCAMADecoder | LightDecoder | SharedDecoder,
        num_classes: int,
        heads: int = 8,
        use_pe: bool = True,
        attn_dropout: float = 0.5,
        voting: int = 50,
        qk_norm: float | None = 2.0,
    ) -> None:
        super().__init__()
        spec = backbone.spec
        self.backbone = backbone
        self.num_classes = num_classes
        self.voting = voting
        self.blocks = nn.ModuleList(
            [DenseCrossAttention(spec.channels[lvl], heads, attn_dropout, use_pe, qk_norm) for lvl in ATTENTION_LEVELS]
        )
        self.decoder = decoder

    @property
    def sums_are_bounded(self) -> bool:
        """Whether every block scores by cosine similarity (``qk_norm``), so the attention sums of
        :meth:`DenseCrossAttention.partial_sums` stay finite; raw dot products (an imported checkpoint's) can
        exceed float32's exp range there, where the softmax of :meth:`coarse_maps` does not."""
        return all(block.qk_norm for block in self.blocks)

    def prepare_support(self, feats: Features, masks: Tensor) -> SupportFeatures:
        """Backbone features of S support images + their S×H×W class-id masks → cached :class:`SupportFeatures`."""
        onehot = one_hot_masks(masks, self.num_classes)
        return SupportFeatures(
            feats={lvl: list(feats[lvl]) for lvl in ATTENTION_LEVELS},
            masks={
                lvl: F.interpolate(onehot, size=feats[lvl][0].shape[-2:], mode="bilinear", align_corners=True)
                for lvl in ATTENTION_LEVELS
            },
            present=onehot.flatten(2).amax(dim=2) > 0,
        )

    def coarse_maps(self, query: Features, support: SupportFeatures) -> list[Tensor]:
        """Coarse maps of one query image against the supports, all classes: per stage 2, 3, 4, N×n×h×w (n =
        block maps of that stage)."""
        flags = support.present.float()  # S×N
        coarse = []
        for block, lvl in zip(self.blocks, ATTENTION_LEVELS):
            masks = support.masks[lvl]  # S×N×h×w
            s, g, h, w = masks.shape
            mask_tokens = (masks * flags[:, :, None, None]).permute(0, 2, 3, 1).reshape(s * h * w, g)
            flag_tokens = flags[:, None, :].expand(s, h * w, g).reshape(s * h * w, g)
            values = torch.cat([mask_tokens, flag_tokens], dim=1)
            maps = []
            for q_map, s_map in zip(query[lvl], support.feats[lvl]):
                keys = block.keys(s_map)  # S×heads×hw×d
                keys = keys.transpose(0, 1).reshape(block.heads, -1, keys.shape[-1])  # shots on the key axis
                maps.append(block(q_map, keys, values))
            coarse.append(torch.stack(maps, dim=1))
        return coarse

    def attention_sums(self, query: Features, support: SupportFeatures) -> list[Tensor]:
        """Per-support attention sums of one query against every support, all classes, without dropout: per stage
        2, 3, 4, S×n×heads×(h·w)×(N+1) (see :meth:`DenseCrossAttention.partial_sums`)."""
        sums = []
        for block, lvl in zip(self.blocks, ATTENTION_LEVELS):
            masks = support.masks[lvl].flatten(2).transpose(1, 2)  # S×hw×N
            per_map = [
                block.partial_sums(q_map, block.keys(s_map, noise=False), masks)
                for q_map, s_map in zip(query[lvl], support.feats[lvl])
            ]
            sums.append(torch.stack(per_map, dim=1))
        return sums

    def coarse_from_sums(self, sums: list[Tensor], present: Tensor, query: Features) -> list[Tensor]:
        """Coarse maps of all classes for an episode, from the :meth:`attention_sums` of its S supports (``present``:
        S×N bool; ``query`` gives the grid sizes): per stage, N×n×h×w, equal to :meth:`coarse_maps` of the same
        supports with dropout off."""
        flags = present.to(sums[0].dtype)
        coarse = []
        for stage, lvl in zip(sums, ATTENTION_LEVELS):
            h, w = query[lvl][0].shape[-2:]
            weighted = torch.einsum("snhq,sg->nhqg", stage[..., -1], flags)  # n×heads×Q×N
            mass = torch.einsum("snhqg,sg->nhqg", stage[..., :-1], flags)
            # Per class, a softmax over the keys of the supports that show it; the clamp keeps a class no
            # support shows at 0, as in the one-pass attention.
            maps = (mass / weighted.clamp_min(1e-12)).mean(dim=1)  # n×Q×N
            coarse.append(maps.permute(2, 0, 1).reshape(-1, maps.shape[0], h, w))
        return coarse

    def class_prior(self, support: SupportFeatures, classes: Tensor | list[int]) -> Tensor:
        """G foreground fractions of each class within the supports that show it (stride-8 grid)."""
        masks = support.masks[ATTENTION_LEVELS[0]][:, classes]  # S×G×h×w
        flags = support.present[:, classes].float()
        area = flags.sum(0) * masks.shape[-1] * masks.shape[-2]
        return masks.sum(dim=(0, 2, 3)) / area.clamp_min(1.0)

    def class_logits(
        self,
        query: Features,
        support: SupportFeatures,
        coarse: list[Tensor],
        present: Tensor,
        skip: Tensor | None = None,
    ) -> Tensor:
        """Decode the coarse maps (per stage, N×n×h×w) of the ``present`` classes (N bool) → 1×N×2×h×w (background,
        foreground) per class at the decoder's ``class_stride``, zeros for absent classes. ``skip``: the decoder's
        ``skip_features`` of this query, or None to compute them."""
        skip4 = query[0][-1]  # the stride-4 query map
        if skip is None:
            skip = self.decoder.skip_features(skip4, query[1][-1])
        out_size = (skip4.shape[-2] * 4 // self.decoder.class_stride, skip4.shape[-1] * 4 // self.decoder.class_stride)
        classes = present.nonzero().flatten()
        if not classes.numel():
            return skip4.new_zeros(1, self.num_classes, 2, *out_size)
        decoded = self.decoder([c[classes] for c in coarse], skip, self.class_prior(support, classes))
        # Zeros of the decoder's dtype: under CUDA autocast the features are bf16 but the decoder's output float.
        logits = decoded.new_zeros(1, self.num_classes, 2, *out_size)
        return logits.index_copy(1, classes, decoded[None])

    def decode_episode(
        self, query: Features, support: SupportFeatures, coarse: list[Tensor], present: Tensor
    ) -> Tensor:
        """Merged 1×(N+1)×h×w logits of one query at the decoder's output stride from its coarse maps (see
        :meth:`class_logits`); absent classes get ``ABSENT_LOGIT``, also through a class-shared stage."""
        skip = self.decoder.skip_features(query[0][-1], query[1][-1])
        merged = merge_classes(self.class_logits(query, support, coarse, present, skip), present[None])
        return self.decoder.refine(merged, skip)

    @torch.no_grad()
    def predict_features(self, query: Features, support: SupportFeatures, voting: int | None = None) -> Tensor:
        """Inference for one query with the whole support set, voting over chunks of ``voting`` supports: per class,
        each pixel takes the foreground and background logits of the chunk with the largest foreground logit
        (reference.md §1.4), then classes are merged. Returns 1×(N+1)×h×w logits at the output stride."""
        chunk = voting or self.voting
        skip = self.decoder.skip_features(query[0][-1], query[1][-1])  # the same for every chunk
        best: Tensor | None = None
        seen = torch.zeros(self.num_classes, dtype=torch.bool, device=support.present.device)
        for start in range(0, len(support), chunk):
            part = support.select(list(range(start, min(start + chunk, len(support)))))
            present = part.present.any(dim=0)
            logits = self.class_logits(query, part, self.coarse_maps(query, part), present, skip)
            if best is None:
                best = logits.clone()
            else:
                newly = present & ~seen  # first chunk that shows a class: take it whole
                better = (logits[:, :, 1:2] > best[:, :, 1:2]) & present[None, :, None, None, None]
                better = better | newly[None, :, None, None, None]
                best = torch.where(better.expand_as(best), logits, best)
            seen |= present
        assert best is not None, "empty support set"
        return self.decoder.refine(merge_classes(best, seen[None]), skip)

    @torch.no_grad()
    def predict(self, images: Tensor, support: SupportFeatures, voting: int | None = None) -> Tensor:
        """B×3×H×W uint8 RGB images → B×(N+1)×h×w logits at the output stride (queries run one at a time: the
        attention is per query; the backbone normalises each, see ``Backbone.encode``)."""
        return torch.cat([self.predict_features(self.backbone.encode(img[None]), support, voting) for img in images])
