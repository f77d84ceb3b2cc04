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
RAY_BATCH_IMAGES = 32  # images per Ray task, at least (see RayRunner._remote)


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

    def __init__(self, model: str, device: str, batch_size: int) -> None:
        from fsdistill.models.build import load_model
        from fsdistill.runtime import resolve_device

        self.predictor = Predictor(load_model(Path(model), kind=None), resolve_device(device))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray], scored: bool = False) -> dict[str, np.ndarray]:
        paths = [Path(str(p)) for p in batch["path"]]
        rows: dict[str, list] = {k: [] for k in ("index", "mask", "height", "width", "probs", "probs_shape", "error")}
        # Forward passes of predict's batch size; no decode processes inside an actor (the actors are the
        # parallelism).
        size = self.batch_size
        if scored:
            outputs = self.predictor.iterate_scored(paths, size, workers=0)
        else:
            outputs = ((i, m, None, e) for i, m, e in self.predictor.iterate(paths, size, workers=0))
        for i, mask, probs, error in outputs:
            rows["index"].append(int(batch["index"][i]))
            rows["error"].append(error or "")
            rows["mask"].append(b"" if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
            rows["height"].append(0 if mask is None else mask.shape[0])
            rows["width"].append(0 if mask is None else mask.shape[1])
            # The scored formats' class probabilities (K×h×w float32 on the model's grid), as local predict has them.
            rows["probs"].append(b"" if probs is None else np.ascontiguousarray(probs, dtype=np.float32).tobytes())
            rows["probs_shape"].append(",".join(map(str, probs.shape)) if probs is not None else "")
        return {
            key: np.array(values, dtype=np.int64 if key in ("index", "height", "width") else object)
            for key, values in rows.items()
        }


class RayRunner(Runner):
    """A :class:`Runner` whose forward passes run in Ray actors (see the module docstring).

    Args:
        local: the driver's own runner of the same model (labels the outputs: classes, palette, identity).
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
        for index, mask, _, error in self._remote(paths, batch_size, scored=False):
            yield index, mask, error

    def iterate_scored(
        self, paths: list[Path], batch_size: int = 8, workers: int = 2
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, str | None]]:
        """As :meth:`iterate`, plus each image's class probabilities (see :meth:`Runner.iterate_scored`)."""
        yield from self._remote(paths, batch_size, scored=True)

    def _remote(
        self, paths: list[Path], batch_size: int, scored: bool
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, str | None]]:
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
        from ray.data import ActorPoolStrategy, DataContext

        quieted = logging.getLogger("ray.data")
        level = quieted.level
        quieted.setLevel(logging.ERROR)
        context = DataContext.get_current()
        settings = context.enable_progress_bars, context.print_on_execution_start
        context.enable_progress_bars = False  # predict shows its own bar
        context.print_on_execution_start = False
        try:
            absolute = [str(Path(p).resolve()) for p in paths]
            dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(absolute)])
            dataset = dataset.map_batches(
                _PredictActor,
                fn_constructor_kwargs={
                    "model": str(self.model.resolve()),
                    "device": self.device,
                    "batch_size": batch_size,
                },
                compute=ActorPoolStrategy(size=self._pool_size()),
                # Each Ray task holds several model batches (a multiple of batch_size, at least 32 images): fewer
                # tasks to schedule and ship than one per batch of 2 (predict's CPU default).
                batch_size=batch_size * max(1, -(-RAY_BATCH_IMAGES // batch_size)),
                batch_format="numpy",
                fn_kwargs={"scored": scored},
                num_cpus=1,
                num_gpus=self.gpus_per_worker or None,
                # Ray Data's actor pools restart an actor that dies and retry its batch by default
                # (max_restarts=-1, max_task_retries=-1): nothing to set here.
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for j, index in enumerate(batch["index"]):
                    raise_if_interrupted()
                    index, error = int(index), str(batch["error"][j])
                    if error:
                        # The actors read absolute paths; report the path as the user gave it.
                        yield index, None, None, error.replace(absolute[index], str(paths[index]))
                        continue
                    shape = (int(batch["height"][j]), int(batch["width"][j]))
                    mask = np.frombuffer(bytes(batch["mask"][j]), dtype=np.uint8).reshape(shape).copy()
                    probs = None
                    if scored:
                        probs_shape = tuple(int(n) for n in str(batch["probs_shape"][j]).split(","))
                        probs = np.frombuffer(bytes(batch["probs"][j]), dtype=np.float32).reshape(probs_shape).copy()
                    yield index, mask, probs, None
        finally:
            context.enable_progress_bars, context.print_on_execution_start = settings
            quieted.setLevel(level)
            if started:
                ray.shutdown()
