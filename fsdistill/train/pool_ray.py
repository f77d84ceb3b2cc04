"""``distill --unlabeled --engine ray``: label the unlabeled pool on Ray actors.

Each actor rebuilds the support-phase teacher and student once from state dicts in Ray's object store and returns
what :func:`fsdistill.train.pool.label_files` returns locally. The session, pool sizing and option checks are the
predict engine's (:mod:`fsdistill.infer.ray_engine`); Ray is imported only when the engine is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fsdistill.infer.ray_engine import RayEngine, pool_size, ray_session
from fsdistill.runtime import raise_if_interrupted
from fsdistill.train.pool import label_files

__all__ = ["RayPoolLabeller"]


class _PoolActor:
    """One Ray actor: rebuilds the support-phase teacher and student once, then labels the batches it is handed."""

    def __init__(self, payload: dict[str, Any], device: str) -> None:
        from fsdistill.models.build import build_student, build_teacher
        from fsdistill.runtime import flush_denormals, resolve_device

        flush_denormals()  # as the driver's distill: the same labels as a local run, denormals included
        self.device = resolve_device(device)
        # No backbone weights to fetch: the state dicts hold every weight the driver's models have.
        teacher = build_teacher(payload["teacher_cfg"], payload["num_classes"], pretrained=False)
        teacher.load_state_dict(payload["teacher_state"])
        student = build_student(teacher, payload["student_width"], payload["refiner"], payload["refiner_width"])
        student.load_state_dict(payload["student_state"])  # its backbone and decoder are the teacher's
        self.teacher, self.student = teacher.to(self.device).eval(), student.to(self.device).eval()
        self.support = payload["support"].to(self.device)
        self.size, self.labeller, self.threshold = payload["size"], payload["labeller"], payload["threshold"]
        self.trusted, self.shots = payload["trusted"], payload["shots"]

    def label(self, paths: list[str]) -> tuple[list[int], list[tuple[int, str]], Any]:
        """One batch of pool files → its :data:`fsdistill.train.pool.FileBatch`, on the CPU."""
        # One batch exactly (batch size = its length): the driver cut the batches a local run cuts.
        indices, errors, batch = next(
            label_files(
                self.teacher,
                self.student,
                self.support,
                [Path(p) for p in paths],
                self.size,
                self.labeller,
                self.threshold,
                self.trusted,
                len(paths),
                self.shots,
            )
        )
        if batch is not None:
            feats, coarse, labels = batch
            batch = ([[m.cpu() for m in level] for level in feats], [c.cpu() for c in coarse], labels.cpu())
        return indices, errors, batch


class RayPoolLabeller(RayEngine):
    """``distill --unlabeled``'s pool labelling on Ray actors, in the batches
    :func:`~fsdistill.train.pool.label_files` cuts locally (so the results are the local run's). Arguments as for
    :class:`RayRunner`."""

    def label_files(
        self,
        teacher: torch.nn.Module,
        teacher_cfg: Any,
        student: torch.nn.Module,
        support: Any,
        paths: list[Path],
        size: int,
        labeller: str,
        threshold: float,
        trusted: torch.Tensor,
        batch_size: int,
        shots: int | None = None,
    ) -> Iterator[tuple[list[int], list[tuple[int, str]], Any]]:
        """As :func:`~fsdistill.train.pool.label_files`, plus the teacher's ModelCfg to rebuild it (the student is
        rebuilt from its own widths and refiner); the batches come back in order, on the CPU."""
        ray = self.ray
        if not paths:
            return
        absolute = [str(Path(p).resolve()) for p in paths]
        chunks = [absolute[i : i + batch_size] for i in range(0, len(absolute), batch_size)]
        payload = {
            "teacher_cfg": teacher_cfg,
            "num_classes": teacher.num_classes,
            "teacher_state": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
            "student_width": student.width_arg,
            "refiner": student.refiner is not None,
            "refiner_width": student.refiner.width if student.refiner is not None else None,
            "student_state": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "support": support.to("cpu"),
            "size": size,
            "labeller": labeller,
            "threshold": threshold,
            "trusted": trusted.cpu(),
            "shots": shots,
        }
        with ray_session(ray, self.address):
            from ray.util import ActorPool

            shared = ray.put(payload)  # once in the object store, not once per actor
            # An actor that dies (a node lost, a process killed for memory) is restarted and its batch retried,
            # as Ray Data's actor pools do for predict; plain actors default to neither.
            actor = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker or 0, max_restarts=-1, max_task_retries=-1)(
                _PoolActor
            )
            size_of_pool = min(len(chunks), pool_size(ray, self.workers, self.gpus_per_worker))
            actors = ActorPool([actor.remote(shared, self.device) for _ in range(size_of_pool)])
            # map keeps the order of the batches: the pool's tensors are concatenated as a local run's.
            for start, (indices, errors, batch) in zip(
                range(0, len(paths), batch_size), actors.map(lambda a, chunk: a.label.remote(chunk), chunks)
            ):
                raise_if_interrupted()
                # The actors read absolute paths; report each path as the pool listing gave it.
                errors = [(start + i, msg.replace(absolute[start + i], str(paths[start + i]))) for i, msg in errors]
                yield [start + i for i in indices], errors, batch
