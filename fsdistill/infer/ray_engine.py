"""``--engine ray``: the model work of ``predict`` (:class:`RayRunner`) and ``suggest`` (:class:`RayScorer`) on a
pool of Ray actors through Ray Data; the driver writes every output as a local run does (the same bytes).

Inputs must be readable by the workers (a shared filesystem, or an object store whose pyarrow filesystem is
pickled to the actors). Ray is optional (``pip install 'fsdistill[ray]'``) and imported only when asked for.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsdistill.errors import ConfigError, DependencyError
from fsdistill.infer.predictor import Predictor, Runner, Source
from fsdistill.runtime import raise_if_interrupted
from fsdistill.storage import StoredFile

__all__ = [
    "ENGINES",
    "RayEngine",
    "RayRunner",
    "RayScorer",
    "pool_size",
    "ray_session",
    "require_ray",
    "resolve_engine",
]

ENGINES = ("local", "ray")
RAY_BATCH_IMAGES = 32  # images per Ray task, at least (see _map_paths)


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


def resolve_engine(engine: str | None, address: str | None, gpus_per_worker: float | None) -> str:
    """The engine asked for, lower-cased (None: local), checked against the options given with it; for ray, Ray is
    imported now, before any model loads.

    Raises:
        ConfigError: an unknown engine, or ray's options without ``engine="ray"``. DependencyError: no Ray Data.
    """
    engine = (engine or "local").lower()
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'; use one of {', '.join(ENGINES)}.")
    if engine == "local" and (address is not None or gpus_per_worker is not None):
        raise ConfigError("--address and --gpus-per-worker apply to --engine ray; add --engine ray or drop them.")
    if engine == "ray":
        require_ray()
    return engine


def _rows(paths: list[Source]) -> tuple[list[str], list[int], list[Any]]:
    """The dataset's columns of ``paths``: each one as a string (an absolute local path, or a URI) and the index
    of its object store's filesystem in the returned list (-1: a local file), which goes to the actors once."""
    names, stores, filesystems = [], [], []
    for path in paths:
        if isinstance(path, StoredFile):
            if not any(path.fs is fs for fs in filesystems):
                filesystems.append(path.fs)
            stores.append(next(i for i, fs in enumerate(filesystems) if path.fs is fs))
            names.append(str(path))
        else:
            stores.append(-1)
            names.append(str(Path(path).resolve()))
    return names, stores, filesystems


def _sources(batch: dict[str, np.ndarray], filesystems: list[Any]) -> list[Source]:
    """The image sources of a batch of :func:`_rows`' columns, in an actor."""
    sources: list[Source] = []
    for name, store in zip(batch["path"], batch["store"]):
        name, store = str(name), int(store)
        if store < 0:
            sources.append(Path(name))
        else:
            scheme, path = name.split("://", 1)
            sources.append(StoredFile(filesystems[store], path, scheme))
    return sources


def _returned(
    batches: Iterator[dict[str, np.ndarray]],
    absolute: list[str],
    paths: list,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], int, int, str | None]]:
    """``(batch, row, index, error or None)`` per row of the actors' result ``batches``; ``on_progress`` gets each
    batch's row count after its rows."""
    for batch in batches:
        for j, index in enumerate(batch["index"]):
            raise_if_interrupted()
            index, error = int(index), str(batch["error"][j])
            # The actors read absolute paths; report the path as the user gave it.
            yield batch, j, index, error.replace(absolute[index], str(paths[index])) if error else None
        if on_progress is not None:
            on_progress(len(batch["index"]))


class _PredictActor:
    """One Ray actor: loads the student once, then predicts the batches Ray Data hands it."""

    def __init__(self, model: str, device: str, batch_size: int, filesystems: list[Any] | None = None) -> None:
        from fsdistill.models.build import load_model
        from fsdistill.runtime import resolve_device

        self.predictor = Predictor(load_model(Path(model), kind=None), resolve_device(device))
        self.batch_size = batch_size
        self.filesystems = filesystems or []

    def __call__(self, batch: dict[str, np.ndarray], scored: bool = False) -> dict[str, np.ndarray]:
        paths = _sources(batch, self.filesystems)
        rows: dict[str, list] = {k: [] for k in ("index", "mask", "height", "width", "probs", "probs_shape", "error")}
        # No decode processes inside an actor: the actors are the parallelism.
        for i, mask, probs, error in self.predictor.outputs(paths, self.batch_size, workers=0, scored=scored):
            rows["index"].append(int(batch["index"][i]))
            rows["error"].append(error or "")
            rows["mask"].append(b"" if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
            rows["height"].append(0 if mask is None else mask.shape[0])
            rows["width"].append(0 if mask is None else mask.shape[1])
            rows["probs"].append(b"" if probs is None else np.ascontiguousarray(probs, dtype=np.float32).tobytes())
            rows["probs_shape"].append(",".join(map(str, probs.shape)) if probs is not None else "")
        return {
            key: np.array(values, dtype=np.int64 if key in ("index", "height", "width") else object)
            for key, values in rows.items()
        }


class RayEngine:
    """What every job on Ray actors holds: each actor's ``device``, the cluster ``address``, the pool's ``workers``
    and ``gpus_per_worker`` (as for :func:`fsdistill.api.predict`), checked, and ray imported, before any work."""

    def __init__(
        self,
        device: str = "auto",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1 with --engine ray (got {workers}).")
        if gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be >= 0 (got {gpus_per_worker}).")
        if device.lower().startswith("cuda") and gpus_per_worker == 0:
            # Ray hides every GPU from an actor that asks for none (CUDA_VISIBLE_DEVICES=""): it could never start.
            raise ConfigError(
                f"--device {device} with --engine ray needs GPUs for the actors; add --gpus-per-worker 1 (or a "
                "fraction), or use --device cpu."
            )
        self.ray = require_ray()
        self.device, self.address, self.workers, self.gpus_per_worker = device, address, workers, gpus_per_worker


class RayRunner(Runner, RayEngine):
    """A :class:`Runner` whose forward passes run in Ray actors, each loading ``local``'s artifact once and
    running a :class:`Predictor` on ``device``; the masks come back in the order the actors finish them.
    ``local``, the driver's own copy, labels the outputs (classes, palette, identity); the other arguments are
    :func:`fsdistill.api.predict`'s."""

    def __init__(
        self,
        local: Predictor,
        device: str = "auto",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        RayEngine.__init__(self, device, address, workers, gpus_per_worker)
        self.local, self.model = local, local.loaded.path
        self.size, self.class_names, self.palette = local.size, local.class_names, local.palette
        self.on_gpu = local.on_gpu or gpus_per_worker > 0

    @property
    def category_ids(self) -> list[int] | None:  # type: ignore[override]
        """The model's COCO category ids (``--format coco`` wrote 1..N with this engine)."""
        return self.local.category_ids

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.local.logits(images)

    def identity(self) -> dict:
        return self.local.identity()  # the same model: a folder may be resumed with either engine

    def outputs(
        self, paths: list[Source], batch_size: int = 8, workers: int = 2, scored: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, str | None]]:
        """As :meth:`Runner.outputs`, in the order the actors finish the images."""
        if not paths:
            return
        absolute, stores, filesystems = _rows(paths)
        kwargs = {"model": str(self.model.resolve()), "device": self.device, "batch_size": batch_size}
        batches = _map_paths(
            self.ray,
            self.address,
            absolute,
            _PredictActor,
            {**kwargs, "filesystems": filesystems},
            {"scored": scored},
            batch_size,
            self.workers,
            self.gpus_per_worker,
            stores,
        )
        for batch, j, index, error in _returned(batches, absolute, paths):
            if error:
                yield index, None, None, error
                continue
            shape = (int(batch["height"][j]), int(batch["width"][j]))
            mask = np.frombuffer(bytes(batch["mask"][j]), dtype=np.uint8).reshape(shape).copy()
            probs = None
            if scored:
                probs_shape = tuple(int(n) for n in str(batch["probs_shape"][j]).split(","))
                probs = np.frombuffer(bytes(batch["probs"][j]), dtype=np.float32).reshape(probs_shape).copy()
            yield index, mask, probs, None


class _ScoreActor:
    """One Ray actor of ``suggest``: loads the student (and teacher) once, then scores the batches it is handed."""

    def __init__(self, student: str, teacher: str | None, device: str, batch_size: int) -> None:
        from fsdistill.infer.suggest import SuggestScorer
        from fsdistill.models.build import load_model
        from fsdistill.runtime import resolve_device

        self.scorer = SuggestScorer(
            load_model(Path(student), kind="student"),
            None if teacher is None else load_model(Path(teacher), kind="teacher"),
            resolve_device(device),
        )
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fsdistill.infer.suggest import score_images

        paths = [Path(str(p)) for p in batch["path"]]
        rows: dict[str, list] = {k: [] for k in ("index", "score", "embedding", "error")}
        # No decode processes inside an actor (the actors are the parallelism).
        for i, score, embedding, error in score_images(self.scorer, paths, self.batch_size, workers=0):
            rows["index"].append(int(batch["index"][i]))
            rows["error"].append(error or "")
            # An ImageScore is a small dataclass of floats and lists: pickled, it comes back exactly.
            rows["score"].append(b"" if score is None else pickle.dumps(score))
            rows["embedding"].append(
                b"" if embedding is None else np.ascontiguousarray(embedding, np.float32).tobytes()
            )
        return {key: np.array(values, dtype=np.int64 if key == "index" else object) for key, values in rows.items()}


class RayScorer(RayEngine):
    """``suggest``'s scoring pass on Ray actors, each loading the ``student`` and ``teacher`` artifacts once
    (teacher None: uncertainty only); the other arguments are :func:`fsdistill.api.predict`'s."""

    def __init__(
        self,
        student: Path,
        teacher: Path | None,
        device: str = "auto",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        super().__init__(device, address, workers, gpus_per_worker)
        self.student, self.teacher = Path(student), None if teacher is None else Path(teacher)

    def score_images(
        self, paths: list[Path], batch_size: int = 2, on_progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, Any, np.ndarray | None, str | None]]:
        """As :func:`fsdistill.infer.suggest.score_images`: ``(index, ImageScore, embedding, None)`` per readable
        path and ``(index, None, None, error)`` per unreadable one, in the order the actors finish them."""
        if not paths:
            return
        absolute = [str(Path(p).resolve()) for p in paths]
        kwargs = {
            "student": str(self.student.resolve()),
            "teacher": None if self.teacher is None else str(self.teacher.resolve()),
            "device": self.device,
            "batch_size": batch_size,
        }
        batches = _map_paths(
            self.ray, self.address, absolute, _ScoreActor, kwargs, {}, batch_size, self.workers, self.gpus_per_worker
        )
        for batch, j, index, error in _returned(batches, absolute, paths, on_progress):
            if error:
                yield index, None, None, error
            else:
                embedding = np.frombuffer(bytes(batch["embedding"][j]), dtype=np.float32).copy()
                yield index, pickle.loads(bytes(batch["score"][j])), embedding, None


def pool_size(ray: Any, workers: int | None, gpus_per_worker: float) -> int:
    """Actors in the pool: ``workers`` if given, else the cluster's GPUs / ``gpus_per_worker``, else its CPUs
    (at most 8).

    Raises:
        ConfigError: more GPUs per actor than the cluster has (Ray would wait for them forever).
    """
    resources = ray.cluster_resources()
    if gpus_per_worker > 0 and resources.get("GPU", 0) < gpus_per_worker:
        # Ray would wait forever for a GPU to place the actors on.
        raise ConfigError(
            f"The Ray cluster has {resources.get('GPU', 0):g} GPUs but --gpus-per-worker {gpus_per_worker:g} was "
            "asked; use --gpus-per-worker 0 (the default) or a cluster with GPUs."
        )
    if workers is not None:
        return workers
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, min(8, int(resources.get("CPU", 1))))


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) address nothing answers at, within ``timeout`` seconds:
    Ray itself retries an unreachable cluster for minutes, printing a line each time.

    Raises:
        ConfigError: the address's port does not accept a connection.
    """
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); start the cluster (ray start "
            "--head) or check the address."
        ) from None


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (C++ code writes there directly); restored after it, an
    exception included (which then says what went wrong)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray connected for the block (a new local instance, stopped after it, when none is running), with Ray
    Data's own progress bars and log lines off: the command shows its own bar."""
    started = not ray.is_initialized()
    if started:
        # Ray's own log lines (the C++ core's warning about actor restarts, Ray Data's execution summary) would
        # interleave with the command's progress bar; its errors still reach the caller as exceptions.
        _check_reachable(address)  # before the environment is touched: a refusal leaves it as it was
        given = os.environ.get("RAY_BACKEND_LOG_LEVEL")
        os.environ["RAY_BACKEND_LOG_LEVEL"] = given or "fatal"
        try:
            with _stderr_silenced():  # the core's own line "Set ray log level from environment variable …"
                ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ValueError, ConnectionError) as exc:  # a malformed address, no cluster at "auto"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({reason}).") from None
        finally:
            if given is None:
                del os.environ["RAY_BACKEND_LOG_LEVEL"]
    from ray.data import DataContext

    quieted = logging.getLogger("ray.data")
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    context = DataContext.get_current()
    settings = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = settings
        quieted.setLevel(level)
        if started:
            ray.shutdown()


def _map_paths(
    ray: Any,
    address: str | None,
    paths: list[str],
    actor: type,
    constructor_kwargs: dict[str, Any],
    call_kwargs: dict[str, Any],
    batch_size: int,
    workers: int | None,
    gpus_per_worker: float,
    stores: list[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``{"index", "path", "store"}`` rows of ``paths`` through a pool of ``actor`` (Ray Data
    ``map_batches`` with ``ActorPoolStrategy``) and yield the result batches (numpy columns) as they finish.
    ``stores``: per path, its filesystem's index among the actor's (see :func:`_rows`; None: all local)."""
    stores = stores if stores is not None else [-1] * len(paths)
    with ray_session(ray, address):
        from ray.data import ActorPoolStrategy

        rows = [{"index": i, "path": p, "store": k} for i, (p, k) in enumerate(zip(paths, stores))]
        dataset = ray.data.from_items(rows)
        dataset = dataset.map_batches(
            actor,
            fn_constructor_kwargs=constructor_kwargs,
            compute=ActorPoolStrategy(size=pool_size(ray, workers, gpus_per_worker)),
            # Each Ray task holds several model batches (a multiple of batch_size, at least 32 images): fewer
            # tasks to schedule and ship than one per batch of 2 (predict's CPU default).
            batch_size=batch_size * max(1, -(-RAY_BATCH_IMAGES // batch_size)),
            batch_format="numpy",
            fn_kwargs=call_kwargs,
            num_cpus=1,
            num_gpus=gpus_per_worker or None,
            # Ray Data's actor pools restart an actor that dies and retry its batch by default
            # (max_restarts=-1, max_task_retries=-1): nothing to set here.
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
