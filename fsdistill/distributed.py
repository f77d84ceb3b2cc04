"""Data-parallel training under ``torchrun``: one process per device, gradients averaged every step.

The CLI opens the process group (:func:`process_group`); the library, seeing it initialised, lets every process
draw its own episodes, averages gradients (:func:`average_gradients`), reduces the step's numbers for the stop
rule (:func:`reduce_step`, :func:`same_decision`) and writes files on rank 0 (:func:`on_main`). Gradients are
averaged by hand, not by ``DistributedDataParallel``: teacher and student share modules, and some parameters get
no gradient in a step. Without ``WORLD_SIZE > 1`` nothing here is used.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fsdistill.errors import ConfigError, DeviceError, FsdistillError, TrainingError

__all__ = [
    "Launch",
    "launch_from_env",
    "process_group",
    "rank",
    "world_size",
    "is_main",
    "broadcast_parameters",
    "average_gradients",
    "reduce_step",
    "same_decision",
    "on_main",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` launch (from its environment)."""

    rank: int
    local_rank: int
    world_size: int


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch ``torchrun`` describes in the environment; None for a plain run (no ``WORLD_SIZE`` above 1).

    Raises:
        ConfigError: ``WORLD_SIZE`` is above 1 but the other variables are missing or inconsistent (the process
            was not started by torchrun).
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={env['WORLD_SIZE']!r} is not a number; start the command with torchrun."
        ) from None
    if world <= 1:
        return None
    try:
        rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    except (KeyError, ValueError):
        raise ConfigError(
            f"WORLD_SIZE is {world} but RANK or LOCAL_RANK is missing or not a number; start the command with "
            "torchrun (torchrun --nproc-per-node N -m fsdistill ...), or unset WORLD_SIZE for one process."
        ) from None
    if not 0 <= rank < world or local_rank < 0:
        raise ConfigError(f"RANK {rank} does not fit WORLD_SIZE {world}; start the command with torchrun.")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:  # the env:// rendezvous needs both; torchrun always sets them
        raise ConfigError(
            f"WORLD_SIZE is {world} but {' and '.join(missing)} is not set; start the command with torchrun "
            "(torchrun --nproc-per-node N -m fsdistill ...), or unset WORLD_SIZE for one process."
        )
    return Launch(rank=rank, local_rank=local_rank, world_size=world)


def _device_for(launch: Launch, device: str) -> str:
    """The backend for ``device`` (gloo on the CPU, nccl on CUDA); selects this process's GPU by local rank."""
    from fsdistill.runtime import resolve_device

    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if chosen.index is not None:
            raise ConfigError(
                f"--device {device} names one GPU, but under torchrun each process uses the GPU of its LOCAL_RANK; "
                "pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs."
            )
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise DeviceError(
                f"torchrun started process {launch.local_rank} of this machine but it has {count} GPU(s); pass "
                f"--nproc-per-node {count} (one process per GPU), or --device cpu."
            )
        torch.cuda.set_device(launch.local_rank)  # "cuda" tensors of this process go to its own GPU
        return "nccl"
    if chosen.type != "cpu":
        raise DeviceError(
            f"Training under torchrun runs on CUDA (nccl) or the CPU (gloo), not {chosen.type}; pass --device cpu."
        )
    return "gloo"


def _needs_peers(fn: Callable[..., T]) -> Callable[..., T]:
    """A collective's failure (the backend's RuntimeError when another process of the launch died: gloo's
    "Connection reset by peer", nccl's DistBackendError) → one sentence, not a traceback on every survivor."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            if not _lost_peer(exc):  # out of memory, a CUDA fault: this process's own error, as it is
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            reason = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[…/pair.cc:545] " source location
            raise TrainingError(
                f"Another process of this torchrun launch stopped ({reason[:200]}), so this one stopped too; re-run "
                "the command (an unfinished run folder is taken over)."
            ) from None

    return wrapper


def _lost_peer(exc: RuntimeError) -> bool:
    """Whether a collective's error says another process of the launch is gone (nccl's DistBackendError; gloo's
    RuntimeErrors name the transport: "Connection reset by peer", "Connection closed by peer", a timeout)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "connection", "peer", "socket", "timed out", "timeout"))


@_needs_peers
def _barrier() -> None:
    dist.barrier()


@contextmanager
def process_group(launch: Launch | None, device: str) -> Iterator[Launch | None]:
    """Open the process group of ``launch`` for the block (nothing when None); ``device``: the command's
    ``--device``. A barrier at the end makes rank 0's files complete when any process exits."""
    if launch is None:
        yield None
        return
    backend = _device_for(launch, device)
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size)
    try:
        yield launch
        _barrier()
    finally:
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the initialised process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the initialised process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain run): the process that writes files and reports."""
    return rank() == 0


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Parameters without repeats (the student shares the teacher's decoder modules), in first-seen order."""
    return list({id(p): p for p in params}.values())


@_needs_peers
@torch.no_grad()
def broadcast_parameters(params: Iterable[nn.Parameter]) -> None:
    """Overwrite ``params`` with rank 0's values, so every process starts from the same weights."""
    for p in _unique(params):
        dist.broadcast(p.data, src=0)


@_needs_peers
@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the processes (one flat all-reduce per dtype).

    A process whose step did not reach a parameter contributes zeros; one no process reached keeps ``grad`` None,
    so the optimiser skips it. Every process must pass the same parameters in the same order.
    """
    params = _unique(params)
    if not params:
        return
    device = params[0].device
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(reached)  # how many processes have a gradient for each parameter
    live = [p for p, n in zip(params, reached.tolist()) if n > 0]
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    world = dist.get_world_size()
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])  # one collective instead of one per tensor
        dist.all_reduce(flat)
        flat /= world
        for p, part in zip(group, flat.split([p.grad.numel() for p in group])):
            p.grad.copy_(part.view_as(p.grad))


@_needs_peers
def reduce_step(
    totals: dict[str, float], class_queries: list[int], device: torch.device
) -> tuple[dict[str, float], list[int]]:
    """A step's losses (``totals``, the same keys in the same order on every process) averaged over the processes
    and the per-class query counts summed, in one all-reduce on ``device``."""
    values = torch.tensor([*totals.values(), *map(float, class_queries)], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    out, world = values.tolist(), dist.get_world_size()
    return {k: v / world for k, v in zip(totals, out)}, [round(c) for c in out[len(totals) :]]


@_needs_peers
def same_decision(stop: bool, reason: str, device: torch.device) -> tuple[bool, str]:
    """Rank 0's stop decision (and its reason when it stops) on every process: the wall-time cap reads each
    process's own clock, and one process stopping early would leave the others waiting in a collective."""
    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    stop = bool(flag.item())
    if stop:
        message = [reason]
        dist.broadcast_object_list(message, src=0)
        reason = message[0]
    return stop, reason


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every process; a user error (``FsdistillError``) it
    raises is raised on every process, so none is left waiting for a result."""
    if world_size() == 1:
        return fn()
    result: list[Any] = [None]
    if is_main():
        try:
            result[0] = fn()
        except FsdistillError as exc:
            result[0] = exc  # broadcast like a result (the other processes get a copy), raised everywhere below
    _needs_peers(dist.broadcast_object_list)(result, src=0)
    if isinstance(result[0], FsdistillError):
        if not is_main():  # rank 0 says it; the copies only stop their processes (see fsdistill.cli.common)
            result[0].said_by_main = True
        raise result[0]
    return result[0]
