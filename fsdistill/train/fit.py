"""The one training loop behind ``adapt`` (TransferFSS) and ``distill`` (DistillFSS), and distill's polish phase.

A step = ``episodes_per_step`` leave-one-out episodes whose gradients are accumulated, then one AdamW step, so
its cost does not depend on the support-set size. Under ``torchrun`` every process runs the loop on its own draws
(samplers seeded with seed + rank) and the gradients are averaged before each step.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fsdistill import distributed
from fsdistill.config import TrainCfg
from fsdistill.errors import ConfigError, TrainingError
from fsdistill.models.backbone import cat_features
from fsdistill.models.student import DistilledStudent, student_inputs
from fsdistill.models.teacher import DCAMATeacher, Features
from fsdistill.runtime import (
    device_name,
    mixed_precision,
    progress,
    raise_if_interrupted,
    training_dtype,
    training_layout,
)
from fsdistill.train.episodes import EpisodeSampler, FeatureCache, flip_batch
from fsdistill.train.losses import coarse_mse, segmentation_loss
from fsdistill.train.pool import PoolTargets

__all__ = ["TrainStats", "teacher_groups", "set_trainable", "train", "polish"]

# Added to the seed of the polish phase's sampler and flips: other draws than the joint phase's.
POLISH_SEED = 7919
# Added to the seed of the pool phase's global random stream (the student's channel dropout).
POOL_SEED = 104729


@dataclass
class TrainStats:
    steps: int = 0
    episodes: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # per step: losses
    stop_reason: str = ""  # why training ended: the step count given, or the automatic budget's reason
    class_queries: list[int] = field(default_factory=list)  # per class: training queries that showed it
    polish_steps: int = 0  # distill: the student's steps alone at the end (fit.polish), in ``history`` too
    precision: str = "float32"  # the forward passes' arithmetic (TrainCfg.precision resolved for the device)
    device: str = ""  # where it trained, resolved (runtime.device_name: "cpu (x86_64, 2 threads)", "cuda (…)")
    flip_views: int = 1  # views of each support image cached (FeatureCache.views: 4 with the flip views)
    flip_views_left_out: str | None = None  # why automatic augmentation cached one view (FeatureCache.views_left_out)

    def final(self, key: str) -> float | None:
        """The mean of the last 10 recorded values of a loss (None: never recorded)."""
        values = [h[key] for h in self.history if key in h][-10:]
        return sum(values) / len(values) if values else None

    def add_polish(self, finish: TrainStats) -> None:
        """Record :func:`polish`'s phase after this (joint) training."""
        self.polish_steps = finish.steps
        self.seconds += finish.seconds
        self.history += finish.history


def decoder_groups(decoder: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Decoder parameters by paper name: mapper (conv1–3), merge (conv4/5), mixer (mixer1–3)."""
    return {
        "mapper": [*decoder.conv1.parameters(), *decoder.conv2.parameters(), *decoder.conv3.parameters()],
        "merge": [*decoder.conv4.parameters(), *decoder.conv5.parameters()],
        "mixer": decoder.mixer_parameters(),
    }


def teacher_groups(teacher: DCAMATeacher) -> dict[str, list[nn.Parameter]]:
    """Teacher parameters by paper name (:data:`~fsdistill.config.TRAINABLE_GROUPS`): the decoder's and attention."""
    return {**decoder_groups(teacher.decoder), "attention": list(teacher.blocks.parameters())}


def set_trainable(teacher: DCAMATeacher, names: list[str]) -> list[nn.Parameter]:
    """Freeze the whole teacher, then unfreeze the named groups; returns the trainable parameters."""
    teacher.requires_grad_(False)
    params = [p for name, group in teacher_groups(teacher).items() if name in names for p in group]
    for p in params:
        p.requires_grad_(True)
    return params


def _student_groups(student: DistilledStudent, cfg: TrainCfg) -> list[dict]:
    """The student's own optimiser groups, made trainable: each ConvDist stage at ``cfg.student_lr`` divided by the
    hidden groups each of its classes reads (1 for per-class blocks, G when shared: the same speed per class), the
    refiner (when it has one) at ``cfg.lr``, the step of the decoder it extends."""
    groups = [
        {"params": list(dist.parameters()), "lr": cfg.student_lr / dist.readout_groups} for dist in student.convdist
    ]
    if student.refiner is not None:
        groups.append({"params": list(student.refiner.parameters()), "lr": cfg.lr})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def _student_batch(
    cache: FeatureCache, sampler: EpisodeSampler, flips: torch.Generator | None, cfg: TrainCfg
) -> tuple[Features, Tensor]:
    """The student's supervised batch: features and B×H×W masks of ``cfg.student_batch`` class-balanced support
    images (B = ``cfg.student_batch``), each in a random flip view when ``flips`` is given."""
    feats, masks = cache.batch(sampler.sample_images(cfg.student_batch))
    if flips is not None:
        feats, (masks,) = flip_batch(flips, feats, masks)
    return feats, masks


def _student_batch_step(
    student: DistilledStudent,
    cache: FeatureCache,
    sampler: EpisodeSampler,
    flips: torch.Generator | None,
    cfg: TrainCfg,
    dtype: torch.dtype,
) -> float:
    """Backpropagate the student's supervised loss (focal + Dice) on its batch (:func:`_student_batch`), the
    forward pass in ``dtype``; returns the loss."""
    feats, masks = _student_batch(cache, sampler, flips, cfg)
    with mixed_precision(masks.device, dtype):
        logits, _ = student.forward_features(feats)
        loss = segmentation_loss(logits, masks, cfg.focal_gamma, cfg.dice_weight)
    if loss.requires_grad:  # else no pixel is labelled: nothing to learn from the batch
        loss.backward()
    return float(loss.detach())


def _finish_step(
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    totals: dict[str, float],
    class_queries: list[int],
    stats: TrainStats,
    bar: Any,
) -> tuple[dict[str, float], list[int]]:
    """Average the gradients over the processes (under torchrun), take the optimiser step and record the step's
    losses; returns the losses and the per-class query counts, summed over the processes."""
    if distributed.world_size() > 1:
        distributed.average_gradients(params)
        totals, class_queries = distributed.reduce_step(totals, class_queries, params[0].device)
    optimizer.step()
    stats.steps += 1
    stats.history.append(totals)
    bar.update(1)
    bar.set_postfix({k: f"{v:.3f}" for k, v in totals.items()})
    return totals, class_queries


def train(
    teacher: DCAMATeacher,
    cache: FeatureCache,
    cfg: TrainCfg,
    student: DistilledStudent | None = None,
    freeze_teacher: bool = False,
    quiet: bool = False,
    new_classes: list[bool] | None = None,
    pool: PoolTargets | None = None,
) -> TrainStats:
    """Fine-tune the teacher (``student is None``) or train the student jointly with it.

    Losses: adapt = focal(teacher); distill = ⅓ focal(teacher) + ⅓ focal(student) + ⅓ w·MSE(coarse maps), or with
    ``freeze_teacher`` ½ focal(student) + ½ w·MSE against the fixed teacher (w = ``cfg.mse_weight``; "focal" is
    focal + Dice). ``new_classes`` (``distill --init``): per class whether it is new; new classes are query targets
    as often as all the trained ones together, and the automatic budget stops at its floors with them covered.
    ``pool``: each step the student also trains on ``cfg.pool_batch`` pool images, weighted ``cfg.pool_weight``
    (focal + Dice on their pseudo-labels, w·MSE against the teacher's coarse maps of them).
    """
    stats = TrainStats(
        device=device_name(cache.masks[0].device),
        flip_views=cache.views,
        flip_views_left_out=cache.views_left_out,
    )
    if cfg.steps == 0:
        stats.stop_reason = "no training asked for (steps 0)"
        return stats
    teacher_params = set_trainable(teacher, [] if freeze_teacher else cfg.train)
    groups = [{"params": teacher_params, "lr": cfg.lr}] if teacher_params else []
    if student is not None:
        groups += _student_groups(student, cfg)
    if not groups:
        raise ConfigError("Nothing to train: choose at least one trainable group (train.train).")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]
    device = cache.masks[0].device
    dtype = training_dtype(cfg.precision, device)
    stats.precision = str(dtype).removeprefix("torch.")
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        # Same starting weights everywhere, and each process its own random stream (attention and channel dropout).
        distributed.broadcast_parameters(params)
        torch.manual_seed(cfg.seed + rank)
    elif pool is not None:
        # The pool phase's dropout draws from the seed alone, not from what ran before it in this process: labelling
        # the pool here or on Ray actors must train the same student.
        torch.manual_seed(cfg.seed + POOL_SEED)
    # seed + rank: each process draws other episodes (rank 0, and a plain run, the seed's own).
    repeats = None
    if new_classes is not None and any(new_classes):
        repeats = [max(1, new_classes.count(False)) if new else 1 for new in new_classes]
    sampler = EpisodeSampler(cache.present, cfg.max_shots, cache.views, cfg.seed + rank, repeats)
    pool_sampler = (
        pool.sampler(cfg.seed + rank) if pool is not None and student is not None and cfg.pool_batch else None
    )
    flips = torch.Generator().manual_seed(cfg.seed + rank) if cfg.flip_features and student is not None else None
    class_queries = sampler.class_queries  # in a process group: the sum over the processes
    # The pool's coarse maps teach the classes the supports show and the pool is trusted with.
    pool_classes = None if pool is None else cache.present.any(dim=0).to(device) & pool.trusted.to(device)
    attention_trains = any(p.requires_grad for p in teacher.blocks.parameters())
    # Frozen attention (the default): each (query, support) pair's attention is computed once and reused, as sums
    # that stay finite for cosine scores only (an imported teacher's raw scores overflowed them: NaN at step 0).
    reuse_pairs = not attention_trains and teacher.sums_are_bounded
    if not reuse_pairs:
        cache.pairs = None  # sums from earlier attention weights would be stale (for the per-class check too)
    pair_attention = cache.pair_attention(teacher) if reuse_pairs else None
    with training_layout(device, teacher, student):  # channels-last weights on the CPU while training
        teacher.train()
        if student is not None:
            student.set_input_dropout(cfg.convdist_dropout)
            student.train()
        start = time.perf_counter()
        budget = cfg.budget(continued=new_classes is not None) if cfg.steps is None else None
        # The query floor of a continued run is its new classes' (the trained ones had theirs in the run it continues).
        covered = [c for c in sampler.trained_classes if new_classes is None or new_classes[c]]
        bar = progress(total=cfg.steps, quiet=quiet, desc="distill" if student is not None else "adapt", unit="step")
        while True:
            raise_if_interrupted()
            optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for episode_index in range(cfg.episodes_per_step):
                episode = sampler.sample()
                q_feats, q_mask = cache.query(episode.query, episode.query_view)
                support = cache.supports(list(episode.supports))
                present = support.present.any(dim=0)
                # The student's supervised batch rides in the last episode's student pass: one forward and backward
                # over 1 + B images instead of two passes (each of the head's ~100 small operators costs per call).
                batch = None
                if student is not None and cfg.student_batch and episode_index == cfg.episodes_per_step - 1:
                    batch = _student_batch(cache, sampler, flips, cfg)
                losses = {}
                if pair_attention is not None:
                    # In float32 whatever the precision: the pairs are kept for later episodes and the per-class
                    # check, and these maps are the student's distillation targets.
                    coarse_t = pair_attention.coarse_maps(episode, q_feats, support)
                with mixed_precision(device, dtype):
                    if pair_attention is None:
                        coarse_t = teacher.coarse_maps(q_feats, support)
                    if student is not None:
                        s_feats = student_inputs(q_feats)
                        if batch is not None:
                            s_feats = cat_features([s_feats, batch[0]])
                        s_logits, coarse_s = student.forward_features(s_feats)
                        # The student always predicts every class, so its target is the full query mask (the reference
                        # reuses the teacher's episode-reduced target, teaching the student to miss absent classes).
                        losses["student"] = segmentation_loss(s_logits[:1], q_mask, cfg.focal_gamma, cfg.dice_weight)
                        losses["mse"] = coarse_mse([c[0] for c in coarse_s], coarse_t, present)
                        distill_term = cfg.mse_weight * losses["mse"]
                        if batch is not None:
                            batch_loss = segmentation_loss(s_logits[1:], batch[1], cfg.focal_gamma, cfg.dice_weight)
                    if not freeze_teacher:
                        # A class no sampled support shows cannot be found: background in the teacher's target.
                        t_logits = teacher.decode_episode(q_feats, support, coarse_t, present)
                        absent_ids = (~present).nonzero().flatten() + 1
                        target = torch.where(torch.isin(q_mask, absent_ids), torch.zeros_like(q_mask), q_mask)
                        losses["teacher"] = segmentation_loss(t_logits, target, cfg.focal_gamma, cfg.dice_weight)
                if student is None:
                    loss = losses["teacher"]
                elif freeze_teacher:
                    loss = (losses["student"] + distill_term) / 2
                else:
                    loss = (losses["teacher"] + losses["student"] + distill_term) / 3
                if not math.isfinite(float(loss.detach())):
                    raise TrainingError(
                        f"Training diverged: the loss is {float(loss.detach())} at step {stats.steps + 1}; lower the "
                        f"learning rate (--lr, now {cfg.lr:g}) and run again."
                    )
                # A term without gradient has no labelled pixel to learn from (an empty query mask, no class of the
                # query in any sampled support, or an unlabelled batch).
                backward = loss / cfg.episodes_per_step
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.episodes_per_step
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.episodes_per_step
                if batch is not None:
                    # The student needs no supports, so it also learns from a plain supervised batch (no attention).
                    backward = backward + batch_loss if backward.requires_grad else batch_loss
                    totals["student_batch"] = float(batch_loss.detach())
                    totals["loss"] += totals["student_batch"]
                if backward.requires_grad:
                    backward.backward()
                stats.episodes += 1
            if pool_sampler is not None:
                assert pool is not None and student is not None and pool_classes is not None
                feats, labels, coarse_t = pool.batch(pool_sampler.sample(cfg.pool_batch))
                if flips is not None:
                    feats, (labels, *coarse_t) = flip_batch(flips, feats, labels, *coarse_t)
                with mixed_precision(device, dtype):
                    s_logits, coarse_s = student.forward_features(feats)
                    pool_seg = segmentation_loss(s_logits, labels, cfg.focal_gamma, cfg.dice_weight)
                    # The teacher's maps of the trusted classes its supports show (one MSE per image, as in the episodes).
                    pool_mse = coarse_mse(
                        [c.flatten(0, 1) for c in coarse_s],
                        [c.flatten(0, 1) for c in coarse_t],
                        pool_classes.repeat(len(labels)),
                    )
                pool_loss = cfg.pool_weight * (pool_seg + cfg.mse_weight * pool_mse)
                pool_loss.backward()
                totals["pool"] = float(pool_seg.detach())
                totals["pool_mse"] = float(pool_mse.detach())
                totals["loss"] += float(pool_loss.detach())
            totals, class_queries = _finish_step(optimizer, params, totals, sampler.class_queries, stats, bar)
            if budget is None:
                if stats.steps >= cfg.steps:
                    stats.stop_reason = f"the {cfg.steps} steps asked for"
                    break
            else:
                stop = budget.update(totals["loss"], [class_queries[c] for c in covered])
                reason = budget.reason
                if world > 1:
                    stop, reason = distributed.same_decision(stop, reason, device)
                if stop:
                    stats.stop_reason = reason
                    break
        bar.close()
    stats.episodes *= world  # every process ran as many
    stats.class_queries = list(class_queries)
    stats.seconds = time.perf_counter() - start
    for model in (teacher, student) if student is not None else (teacher,):
        model.eval().requires_grad_(False)
    return stats


def polish(student: DistilledStudent, cache: FeatureCache, cfg: TrainCfg, quiet: bool = False) -> TrainStats:
    """The student's last phase: ``cfg.polish_steps`` steps alone on the supports, on its own copy of the decoder.

    During joint training the decoder also serves the teacher; here the student's ConvDist blocks, its refiner and
    its decoder's trainable groups (``cfg.train``) finish on the student's supervised batches alone. The teacher is
    left as it is.
    """
    stats = TrainStats()
    if not cfg.polish_steps or not cfg.student_batch:
        return stats
    student.decoder = copy.deepcopy(student.decoder)  # the teacher keeps the decoder it was trained with
    decoder_params = [p for name, group in decoder_groups(student.decoder).items() if name in cfg.train for p in group]
    groups = _student_groups(student, cfg)
    if decoder_params:
        groups.append({"params": decoder_params, "lr": cfg.lr})
    for p in decoder_params:  # the student's own groups are trainable already
        p.requires_grad_(True)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank = distributed.rank()
    # Other draws than the joint phase's (its sampler and flips were seeded with seed + rank).
    sampler = EpisodeSampler(cache.present, cfg.max_shots, cache.views, cfg.seed + rank + POLISH_SEED)
    flips = torch.Generator().manual_seed(cfg.seed + rank + POLISH_SEED) if cfg.flip_features else None
    device = cache.masks[0].device
    dtype = training_dtype(cfg.precision, device)
    stats.precision = str(dtype).removeprefix("torch.")
    with training_layout(device, student):
        student.set_input_dropout(cfg.convdist_dropout)
        student.train()
        start = time.perf_counter()
        bar = progress(total=cfg.polish_steps, quiet=quiet, desc="polish", unit="step")
        for _ in range(cfg.polish_steps):
            raise_if_interrupted()
            optimizer.zero_grad(set_to_none=True)
            totals = {"polish": _student_batch_step(student, cache, sampler, flips, cfg, dtype)}
            _finish_step(optimizer, params, totals, sampler.class_queries, stats, bar)
        bar.close()
    stats.seconds = time.perf_counter() - start
    student.eval().requires_grad_(False)
    return stats
