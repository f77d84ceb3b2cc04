"""Continue a run on a grown support folder (``distill --init RUN``): its weights, classes matched by name.

The teacher holds no per-class weight and is taken whole; the student's per-class ConvDist blocks move with their
class, a new class gets fresh blocks, a class the folder no longer has is dropped only when the user says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fsdistill.errors import ConfigError
from fsdistill.models.student import ConvDist, DistilledStudent, SharedRefiner

__all__ = ["ClassMatch", "match_classes", "copy_student_classes"]


@dataclass(frozen=True)
class ClassMatch:
    """How the classes of a run map onto a new folder's (names without background).

    Attributes:
        source: per foreground class of the new folder, the index of the same-named class in the run, or None
            for a new class.
        kept, new, dropped: class names in each group.
    """

    source: tuple[int | None, ...]
    kept: tuple[str, ...]
    new: tuple[str, ...]
    dropped: tuple[str, ...]

    def moved(self, folder_classes: list[str]) -> dict[str, list[int]]:
        """Kept classes whose class id (mask value, colour) differs from the run's: name → [run id, new id]."""
        return {
            folder_classes[to + 1]: [source + 1, to + 1]
            for to, source in enumerate(self.source)
            if source is not None and source != to
        }

    def to_dict(self) -> dict[str, list[str]]:
        return {"kept": list(self.kept), "new": list(self.new), "dropped": list(self.dropped)}


def match_classes(run_classes: list[str], folder_classes: list[str], drop: list[str], run: str) -> ClassMatch:
    """Match foreground class names (background first in both lists) by name.

    Raises:
        ConfigError: a class of the run is missing from the folder and not in ``drop``; ``drop`` names a class
            the run does not have or one the folder still has.
    """
    old, new = run_classes[1:], folder_classes[1:]
    unknown = [name for name in drop if name not in old]
    if unknown:
        raise ConfigError(f"--drop-class {unknown[0]!r} is not a class of {run} (its classes: {', '.join(old)}).")
    still_there = [name for name in drop if name in new]
    if still_there:
        raise ConfigError(
            f"--drop-class {still_there[0]!r} is still a class of the support folder; remove it from the names file "
            "first or do not drop it."
        )
    missing = [name for name in old if name not in new and name not in drop]
    if missing:
        raise ConfigError(
            f"Class {missing[0]!r} of {run} is not in the support folder; add images that show it, or pass "
            f"--drop-class {missing[0]} to continue without it."
        )
    source = tuple(old.index(name) if name in old else None for name in new)
    return ClassMatch(
        source=source,
        kept=tuple(name for name in new if name in old),
        new=tuple(name for name in new if name not in old),
        dropped=tuple(dict.fromkeys(drop)),  # a class named twice is dropped (and recorded) once
    )


def check_shared_groups(run_student: DistilledStudent, num_classes: int) -> None:
    """Refuse, before anything is trained, to continue a shared-decoder student with fewer classes than its
    ConvDist groups (see :func:`_copy_convdist`)."""
    block = run_student.convdist[0]
    cap = run_student.decoder.convdist_groups
    if block.shared and cap is not None and min(cap, num_classes) < block.groups:
        raise _fewer_groups(min(cap, num_classes), block.groups)


def _fewer_groups(new: int, old: int) -> ConfigError:
    # Every class reads every group: a kept class would lose its readout of the groups cut off.
    return ConfigError(
        f"The continued student would have {new} ConvDist groups where the run's shared decoder has {old} (one per "
        f"class up to 4), and every class reads them all, so its kept classes would change; keep at least {old} "
        "classes, or distill the folder from scratch."
    )


@torch.no_grad()
def _copy_convdist(target: ConvDist, source: ConvDist, kept: list[tuple[int, int]]) -> None:
    """Copy the kept classes' parts of one stage's blocks (``kept``: (new class, run class) pairs): with per-class
    groups the rows of each fused conv that belong to the class; with hidden groups all classes share, those groups
    both have (once) and each kept class's readout of them."""
    if target.width != source.width or (target.bottleneck is None) != (source.bottleneck is None):
        raise ValueError(f"ConvDist blocks differ (width {source.width} vs {target.width}, or one has a bottleneck)")
    if target.shared != source.shared:
        raise ValueError("ConvDist blocks differ (one shares its hidden groups among the classes, one does not)")
    hidden = [(target.hidden, source.hidden)]
    if target.bottleneck is not None:
        hidden.append((target.bottleneck, source.bottleneck))
    if target.shared:
        if target.groups < source.groups:
            raise _fewer_groups(target.groups, source.groups)
        # Hidden groups are anonymous: the run's G carry over, new ones start fresh (a group of W bottleneck and
        # hidden rows).
        rows = source.groups * target.width
        for new_layer, old_layer in hidden:
            new_layer.weight[:rows] = old_layer.weight[:rows]
            new_layer.bias[:rows] = old_layer.bias[:rows]
        for to_class, from_class in kept:
            target.out.weight[to_class] = 0.0
            target.out.weight[to_class, :rows] = source.out.weight[from_class, :rows]
            target.out.bias[to_class] = source.out.bias[from_class]
        return
    # Rows per class: the hidden 3×3 (grouped per class, or the paper's ungrouped C→N·C whose output rows are still
    # one block per class) and the bottleneck (W rows) when there is one, the grouped 1×1 output (one row).
    layers = [(new, old, target.width) for new, old in hidden] + [(target.out, source.out, 1)]
    for to_class, from_class in kept:
        for new_layer, old_layer, rows in layers:
            for new, old in ((new_layer.weight, old_layer.weight), (new_layer.bias, old_layer.bias)):
                new[to_class * rows : (to_class + 1) * rows] = old[from_class * rows : (from_class + 1) * rows]


@torch.no_grad()
def _copy_refiner(target: SharedRefiner, source: SharedRefiner, match: ClassMatch) -> None:
    """Copy the class-shared refiner; its per-output weights (the projection's input columns of the softmax, the
    output rows) move with their class. A new class keeps the fresh ones: zero output, so it starts unrefined."""
    outputs = [(0, 0)] + [(to + 1, src + 1) for to, src in enumerate(match.source) if src is not None]
    first = target.proj.in_channels - target.out.out_channels  # the softmax columns of the projection
    old_state = source.state_dict()
    for name, new in target.state_dict().items():
        old = old_state[name]
        if name == "proj.weight":
            new[:, :first] = old[:, :first]
            for to, src in outputs:
                new[:, first + to] = old[:, first + src]
        elif name.startswith("out."):
            for to, src in outputs:
                new[to] = old[src]
        else:
            new.copy_(old)


@torch.no_grad()
def copy_student_classes(target: DistilledStudent, source: DistilledStudent, match: ClassMatch, prior: Tensor) -> None:
    """Start ``target`` (the new folder's N classes) from ``source`` (the run's student): kept classes take their
    trained ConvDist blocks and recorded foreground fractions, new ones a fresh block whose output starts at their
    ``prior`` (N foreground fractions of the new folder); the
    refiner is copied when both have one (a run from before the refiner gives a fresh, unrefining one)."""
    target.set_class_prior(prior)
    kept = [(to_class, from_class) for to_class, from_class in enumerate(match.source) if from_class is not None]
    for new_dist, old_dist in zip(target.convdist, source.convdist):
        _copy_convdist(new_dist, old_dist, kept)
    with torch.no_grad():
        # A kept class keeps its recorded foreground fraction too: the decoder's coarse-map prior reads it, and the
        # new folder's fraction moved its predictions (--steps 0 would no longer be RUN's student).
        for to_class, from_class in kept:
            target.class_prior[to_class] = source.class_prior[from_class]
    if target.refiner is not None and source.refiner is not None:
        _copy_refiner(target.refiner, source.refiner, match)
