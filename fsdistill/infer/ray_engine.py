"""``predict --engine ray``: the student's forward passes on a Ray cluster, through Ray Data.

Only the model work moves: :class:`RayRunner` is a :class:`~fsdistill.infer.predictor.Runner` whose
:meth:`~RayRunner.iterate` streams the image list through ``Dataset.map_batches`` over a pool of actors
(``ActorPoolStrategy``), each of which loads the student once (in ``__init__``) and runs the same
:class:`~fsdistill.infer.predictor.Predictor` as local predict on its batches. The masks come back to the driver,
and :func:`~fsdistill.infer.predictor.predict_files` writes masks, overlays, CSV and manifest exactly as it does
for a local run (the same code), so the outputs are the same bytes and resume skips done images before the
dataset is built. An unreadable image comes back as that image's error, not a failed job. Input paths must be
readable by the workers (one machine, or a filesystem shared by the cluster's nodes).

Ray is optional (``pip install 'fsdistill[ray]'``) and imported only here, only when the engine is asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsdistill.errors import ConfigError, DependencyError
from fsdistill.infer.predictor import Predictor, Runner
from fsdistill.runtime import raise_if_interrupted

__all__ = ["ENGINES", "RayRunner", "require_ray"]

ENGINES = ("local", "ray")


def require_ray() -> Any:
    """Import ray (with Ray Data) or raise the DependencyError that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DependencyError(
            "--engine ray needs Ray Data, which is not installed; install it with pip install 'fsdistill[ray]'."
        ) from None
    return ray


class _PredictActor:
    """One Ray actor: loads the student once, then predicts the batches Ray Data hands it."""

    def __init__(self, model: str, device: str) -> None:
        from fsdistill.models.build import load_model
        from fsdistill.runtime import resolve_device

        self.predictor = Predictor(load_model(Path(model), kind=None), resolve_device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(str(p)) for p in batch["path"]]
        indices, masks, heights, widths, errors = [], [], [], [], []
        # One forward pass per Ray batch: no decode processes inside an actor (Ray's workers are the parallelism).
        for i, mask, error in self.predictor.iterate(paths, batch_size=max(1, len(paths)), workers=0):
            indices.append(int(batch["index"][i]))
            if error is not None:
                masks.append(b"")
                heights.append(0)
                widths.append(0)
                errors.append(error)
            else:
                masks.append(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
                heights.append(mask.shape[0])
                widths.append(mask.shape[1])
                errors.append("")
        return {
            "index": np.array(indices, dtype=np.int64),
            "mask": np.array(masks, dtype=object),
            "height": np.array(heights, dtype=np.int64),
            "width": np.array(widths, dtype=np.int64),
            "error": np.array(errors, dtype=object),
        }


class RayRunner(Runner):
    """A :class:`Runner` whose forward passes run in Ray actors (see the module docstring).

    Args:
        local: the driver's own runner of the same model (labels the outputs: classes, palette, identity; also
            computes the scores of a scored ``--format`` locally).
        model: the artifact folder the actors load. device: each actor's device (``auto``: its GPU when
            ``gpus_per_worker`` gives it one). address: the cluster to join (None: the one this process is
            connected to, else a new local one; ``auto``; ``ray://host:10001``). workers: actors (None: as many
            as the cluster has CPUs, at most 8, or its GPUs divided by ``gpus_per_worker``).
    """

    def __init__(
        self,
        local: Predictor,
        model: Path,
        device: str = "auto",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1 with --engine ray (got {workers}).")
        if gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be >= 0 (got {gpus_per_worker}).")
        self.ray = require_ray()
        self.local, self.model, self.device = local, Path(model), device
        self.address, self.workers, self.gpus_per_worker = address, workers, gpus_per_worker
        self.size, self.class_names, self.palette = local.size, local.class_names, local.palette
        self.on_gpu = local.on_gpu or gpus_per_worker > 0

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.local.logits(images)

    def identity(self) -> dict:
        return self.local.identity()  # the same model: a folder may be resumed with either engine

    def _pool_size(self) -> int:
        if self.workers is not None:
            return self.workers
        resources = self.ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, min(8, int(resources.get("CPU", 1))))

    def iterate(
        self, paths: list[Path], batch_size: int = 8, workers: int = 2
    ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        """Yield ``(index, mask or None, error or None)`` per path, in the order the actors finish them."""
        if not paths:
            return
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            # Ray's own log lines (the C++ core's warning about actor restarts, Ray Data's execution summary) would
            # interleave with predict's progress bar; its errors still reach the caller as exceptions.
            given = os.environ.get("RAY_BACKEND_LOG_LEVEL")
            os.environ["RAY_BACKEND_LOG_LEVEL"] = given or "fatal"
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            finally:
                if given is None:
                    del os.environ["RAY_BACKEND_LOG_LEVEL"]
        quieted = logging.getLogger("ray.data")
        level = quieted.level
        quieted.setLevel(logging.ERROR)
        try:
            from ray.data import ActorPoolStrategy, DataContext

            context = DataContext.get_current()
            context.enable_progress_bars = False  # predict shows its own bar
            context.print_on_execution_start = False
            absolute = [str(Path(p).resolve()) for p in paths]
            dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(absolute)])
            dataset = dataset.map_batches(
                _PredictActor,
                fn_constructor_kwargs={"model": str(self.model.resolve()), "device": self.device},
                compute=ActorPoolStrategy(size=self._pool_size()),
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=1,
                num_gpus=self.gpus_per_worker or None,
                # Ray Data's actor pools restart an actor that dies and retry its batch by default
                # (max_restarts=-1, max_task_retries=-1): nothing to set here.
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, mask, h, w, error in zip(
                    batch["index"], batch["mask"], batch["height"], batch["width"], batch["error"]
                ):
                    raise_if_interrupted()
                    index = int(index)
                    if error:
                        # The actors read absolute paths; report the path as the user gave it.
                        yield index, None, str(error).replace(absolute[index], str(paths[index]))
                    else:
                        yield index, np.frombuffer(bytes(mask), dtype=np.uint8).reshape(int(h), int(w)).copy(), None
        finally:
            quieted.setLevel(level)
            if started:
                ray.shutdown()
