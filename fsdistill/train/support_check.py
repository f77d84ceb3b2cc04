"""The per-class check that ends ``distill``: is any class dead before the student is deployed?

Two IoUs per class, from the support folder alone: **leave-one-out** (the teacher segments each support image with
every other support as its support set: a held-out estimate; near 0, the class does not carry over between
supports) and **fit** (the student on the support images it trained on; low, the class was not learned). The
leave-one-out check needs two support images that show a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fsdistill.infer.postprocess import logits_to_mask
from fsdistill.metrics import ConfusionMatrix
from fsdistill.models.student import DistilledStudent
from fsdistill.models.teacher import DCAMATeacher
from fsdistill.train.episodes import Episode, FeatureCache

__all__ = ["ClassCheck", "SupportCheck", "check_supports", "LOW_LEAVE_ONE_OUT", "LOW_FIT"]

LOW_LEAVE_ONE_OUT = 0.1  # leave-one-out IoU below this: the class does not carry over between supports
LOW_FIT = 0.5  # student IoU on its own training images below this: the class was not learned


@dataclass
class ClassCheck:
    """One foreground class: its name, supports showing it, and the two IoUs (None where undefined)."""

    name: str
    supports: int
    leave_one_out: float | None
    fit: float | None

    @property
    def advice(self) -> str | None:
        """One sentence on what to do when the class looks dead, else None."""
        if self.fit is not None and self.fit < LOW_FIT:
            return (
                f"class '{self.name}' is not learned even on the supports (IoU {self.fit:.2f}): train longer "
                "(--steps) or add support images that show it"
            )
        if self.leave_one_out is not None and self.leave_one_out < LOW_LEAVE_ONE_OUT:
            return (
                f"class '{self.name}' does not carry over from one support to another (leave-one-out IoU "
                f"{self.leave_one_out:.2f}, in {self.supports} supports): add support images that show it"
            )
        return None


@dataclass
class SupportCheck:
    """The per-class check of a distill run (``note`` says why a part is missing)."""

    classes: list[ClassCheck] = field(default_factory=list)
    queries: int = 0  # support images used as leave-one-out queries
    note: str = ""

    def warnings(self) -> list[str]:
        return [c.advice for c in self.classes if c.advice]

    def to_dict(self) -> dict:
        return {
            "queries": self.queries,
            "note": self.note,
            "classes": [
                {"name": c.name, "supports": c.supports, "leave_one_out_iou": c.leave_one_out, "fit_iou": c.fit}
                for c in self.classes
            ],
        }


def _ious(matrix: ConfusionMatrix) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in matrix.iou()]


@torch.no_grad()
def check_supports(
    teacher: DCAMATeacher,
    student: DistilledStudent,
    cache: FeatureCache,
    class_names: list[str],
    max_queries: int = 20,
) -> SupportCheck:
    """Leave-one-out IoU of the teacher and fit IoU of the student per class, on the cached support features.

    Args:
        cache: the training cache (view 0 is the unflipped support set). class_names: background first.
        max_queries: at most this many supports, taken evenly over the folder, are leave-one-out queries.
    """
    teacher.eval()
    student.eval()
    present = cache.present  # S×N
    count = present.shape[0]
    height, width = cache.masks[0].shape[-2:]
    fit = ConfusionMatrix(len(class_names))
    for i in range(count):
        query, target = cache.query(i, 0)
        fit.update(target[0].cpu().numpy(), logits_to_mask(student.forward_features(query)[0], height, width))
    loo = ConfusionMatrix(len(class_names))
    queries = []
    note = ""
    if count < 2:
        note = "one support image: no leave-one-out check (add supports to get one)"
    else:
        queries = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(max_queries, count))})
        # The training's attention sums (kept when its attention was frozen): with all other supports in one
        # voting chunk, the inference pass is the episode of those supports, whose pairs training mostly computed.
        pairs = cache.pairs if cache.pairs is not None and count - 1 <= teacher.voting else None
        for i in queries:
            others = [(j, 0) for j in range(count) if j != i]
            query, target = cache.query(i, 0)
            support = cache.supports(others)
            if pairs is not None:
                coarse = pairs.coarse_maps(Episode(i, 0, tuple(others)), query, support)
                logits = teacher.decode_episode(query, support, coarse, support.present.any(dim=0))
            else:
                logits = teacher.predict_features(query, support)
            loo.update(target[0].cpu().numpy(), logits_to_mask(logits, height, width))
    fit_iou, loo_iou = _ious(fit), _ious(loo)
    result = SupportCheck(queries=len(queries), note=note)
    for c, name in enumerate(class_names[1:]):
        shown = int(present[:, c].sum())
        # A class in one support only has no other support to be found from: its leave-one-out is undefined.
        leave_one_out = loo_iou[c + 1] if queries and shown >= 2 else None
        result.classes.append(ClassCheck(name, shown, leave_one_out, fit_iou[c + 1]))
    return result
