"""Device selection, process set-up for running models, seeding, progress bars and library versions."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import random
import stat
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fsdistill.errors import DataError, DeviceError

__all__ = [
    "check_device_name",
    "resolve_device",
    "seed_everything",
    "global_random_state_kept",
    "progress",
    "library_versions",
    "device_name",
    "ensure_writable_dir",
    "ensure_writable_file",
    "write_atomic",
    "new_file_mode",
    "proc_status",
    "inference_memory_format",
    "training_dtype",
    "inference_dtype",
    "mixed_precision",
    "training_layout",
    "retain_freed_memory",
    "release_freed_memory",
    "flush_denormals",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def check_device_name(name: str | None) -> str:
    """The lower-cased device name, or DeviceError for one that is not auto/cpu/cuda/cuda:N/mps."""
    if name is not None and not isinstance(name, str):
        raise DeviceError(f"A device is a name ({', '.join(DEVICE_CHOICES)} or cuda:N), not {name!r}.")
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise DeviceError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)} or cuda:N (a GPU's index).")
    return name


# glibc malloc settings while fsdistill runs models (see retain_freed_memory): allocations up to 32 MB (glibc's
# largest mmap threshold) come from the heap, whose free top is kept up to 1 GB and grown 64 MB at a time.
_MALLOPT = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 1 << 30), "M_TOP_PAD": (-2, 64 << 20)}
_retaining = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; returns whether it does.

    With glibc's defaults every forward pass page-faults its tens of MB of activations in anew (large tensors are
    mmap-ed one by one, the heap top is handed back). The cost: the process keeps its peak memory until it exits.
    All three settings are needed: glibc stops adapting its mmap threshold once any is set. Process-wide, so it is
    called where a process starts running models (CLI model commands, Predictor, profile). Linux with glibc only;
    ``FSDISTILL_RETAIN_MEMORY=0`` switches it off.
    """
    global _retaining
    if os.environ.get("FSDISTILL_RETAIN_MEMORY", "1").strip() == "0":
        return False
    if _retaining:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _retaining = all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.values())
    return _retaining


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the OS now (glibc ``malloc_trim``), for measuring RSS growth."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    """The C library through ctypes on Linux with glibc, else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the memory behind ``tensors``, each storage counted once (views and a tensor listed twice share
    theirs; a view counts its whole storage)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    name = check_device_name(name)
    mps_ok = torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA device is available here; use --device cpu or auto.")
    if name == "mps" and not mps_ok:
        raise DeviceError("MPS was requested but is not available here; use --device cpu or auto.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DeviceError(
            f"--device {name} names GPU {name[5:]}, but this machine has {count} (cuda:0 to cuda:{count - 1})."
        )
    return torch.device(name)


def inference_memory_format(device: torch.device, kind: str) -> torch.memory_format:
    """The tensor layout a ``kind`` ("student" / "teacher") model runs in on ``device`` at inference: channels-last
    for the student on the CPU, where oneDNN convolutions then skip reordering every layer's input and output."""
    return torch.channels_last if device.type == "cpu" and kind == "student" else torch.contiguous_format


@functools.cache
def cpu_computes_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (x86 AMX or AVX-512 BF16, from the flags in Linux's
    ``cpuinfo``; False where that cannot be read). Elsewhere oneDNN emulates bfloat16, slower than float32."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The arithmetic a training run's forward passes use (``TrainCfg.precision``): ``auto`` = bfloat16 mixed
    precision where ``device`` computes bfloat16 in hardware (a CUDA GPU that supports it, a CPU with AMX or AVX-512
    BF16), else float32."""
    if precision == "float32":
        return torch.float32
    if precision == "auto":
        if device.type == "cuda":
            # Without the flag torch also says yes where it only emulates bfloat16 (GPUs before Ampere): slower.
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            native = device.type == "cpu" and cpu_computes_bfloat16()
        return torch.bfloat16 if native else torch.float32
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"bfloat16 training runs on CUDA and the CPU, not on {device.type}; use precision float32.")
    return torch.bfloat16


def inference_dtype(device: torch.device) -> torch.dtype:
    """The arithmetic of predict's and suggest's forward passes: bfloat16 autocast on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def mixed_precision(device: torch.device, dtype: torch.dtype) -> Any:
    """Context of a forward pass (a training step's, or an inference batch's): autocast to ``dtype`` (convolutions
    and matrix products in bfloat16; weights, and in training the optimiser and losses, in float32), or nothing for
    float32.

    Enter it once per training step: autocast keeps its bfloat16 copies of the weights until the context exits, so a
    loop inside one context would keep running on the first step's weights.
    """
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def training_layout(device: torch.device, *models: torch.nn.Module | None) -> Iterator[None]:
    """Train ``models`` with channels-last weights on the CPU, back to the contiguous layout on exit (artifacts store
    contiguous tensors). Why: oneDNN then keeps every convolution's input and output channels-last instead of
    reordering them each layer, forward and backward (a float32 distill step measured ~20 % faster)."""
    present = [m for m in models if m is not None]
    if device.type != "cpu":
        yield
        return
    for model in present:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for model in present:
            model.to(memory_format=torch.contiguous_format)


def device_name(device: torch.device) -> str:
    """Human-readable device description, e.g. ``cuda (NVIDIA H100)`` or ``cpu (x86_64, 2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a CPU generator for samplers that must not share global state."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def global_random_state_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global random states (CUDA's too once it runs) restored after the block: the
    library seeds them for a reproducible run (:func:`seed_everything`) without changing what a caller's own
    draws give afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def flush_denormals() -> bool:
    """Make the CPU flush denormal floats to zero in this process from now on; returns whether it does.

    Why: as training fits, the softmax of confident pixels puts probabilities below float32's normal range into
    the loss's gradients (0.2 % of the logits' gradients by step 120 of a distill), and the CPU's convolution and
    interpolation backward kernels run several times slower on such operands: distill's steps slowed from 0.35 s
    to 0.6 s over its first 300 (10 supports, 4 classes, 2 threads). Values that small change no result that
    matters; GPUs are not affected either way. Threads take the floating-point mode of the thread that starts them:
    torch's worker threads flush too only when this runs before its first multi-threaded op, so the CLI's model
    commands call it before any model runs, and ``api.adapt`` / ``api.distill`` call it for Python users (where
    torch's workers run already, only the calling thread flushes). ``FSDISTILL_FLUSH_DENORMALS=0`` switches it off.
    """
    if os.environ.get("FSDISTILL_FLUSH_DENORMALS", "1").strip() == "0":
        return False
    # numpy works out (and caches) its float limits on first use, and warns when denormals flush by then.
    for dtype in (np.float16, np.float32, np.float64, np.longdouble):
        np.finfo(dtype)
    return torch.set_flush_denormal(True)


def progress(iterable: Iterable | None = None, *, quiet: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal, silent off one (``disable=None``) or when ``quiet``."""
    return tqdm(iterable, disable=True if quiet else None, dynamic_ncols=True, **kwargs)


def library_versions() -> dict[str, str]:
    import timm

    from fsdistill import __version__

    return {
        "fsdistill": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it, else raise DataError quoting
    ``flag``, the option that named it."""
    if str(path) == "-":  # "standard output" in many tools: here it would be a folder named "-"
        raise DataError(f"{flag} - would write into a folder named '-'; give a folder name.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} is a file, not a folder; choose a writable {flag} location.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fsdistill-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"Cannot write to {path} ({reason}); choose a writable {flag} location.") from None
    return path


def ensure_writable_file(path: Path, flag: str, example: str) -> Path:
    """Check that file ``path`` can be written (its folder created if needed) before a command's work, else raise
    DataError quoting ``flag``; a folder given where a file is due is told so, with an ``example`` name."""
    path = Path(path)
    if str(path) == "-":  # "standard output" in many tools: here it would be a file named "-"
        raise DataError(f"{flag} - would write a file named '-'; give a file name, or /dev/stdout for the terminal.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give {flag} a file name (for example {example}).")
    if is_stream(path):  # /dev/stdout, a pipe: no temporary file beside it
        if not os.access(path, os.W_OK):
            raise DataError(f"Cannot write to {path} (permission denied); choose another {flag}.")
        return path
    ensure_writable_dir(resolved_link(path).parent, flag)
    return path


def proc_status(field: str) -> str | None:
    """The value of ``field`` in /proc/self/status (``Umask``, ``VmRSS`` in kB...); None off Linux."""
    try:
        with open("/proc/self/status") as status:
            return next((line.split()[1] for line in status if line.startswith(field + ":")), None)
    except OSError:
        return None


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file (0o666 less the umask), for files created 0o600 (mkstemp,
    safetensors). Read from /proc where possible: ``os.umask`` is read by setting it, racing other threads."""
    umask = proc_status("Umask")
    if umask is not None:
        return 0o666 & ~int(umask, 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def process_temp_path(target: Path) -> Path:
    """A temporary name beside ``target`` of this process's own, ``.NAME.tmp-PID-HEX``, for a file written in
    several steps and renamed to ``target`` when complete; a killed process's is removed by
    :func:`remove_dead_temps`."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_dead_temps(target: Path) -> None:
    """Delete the :func:`process_temp_path` files of ``target`` whose process is gone (a killed export or predict),
    so a process writing it at the same time keeps its own (a name without a process id is always stale)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        parts = tmp.name[len(f".{target.name}.tmp-") :].split("-")
        if len(parts) == 2 and parts[0].isdigit() and process_alive(int(parts[0])):
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: the caller goes on without it
            tmp.unlink()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (another user's included)."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def resolved_link(path: Path) -> Path:
    """The file a symlink names (the path itself when it is none): what a write through the link replaces."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number given as one (an int, an integer numpy scalar; not a bool, a float or a
    string): what options that count things (batch sizes, workers, top, ways) accept."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_stream(path: Path) -> bool:
    """Whether ``path`` is written to in place, never through a temporary file and a rename (which would replace
    it): a terminal, a pipe or another non-regular file (symlinks followed), or a link through a process's open
    file (/dev/stdout, /dev/fd/3: redirected into a log file, it is the shell's open file, not a file to swap). A
    regular file under /dev (/dev/shm, a tmpfs), or a link to one, is an ordinary file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    if not stat.S_ISREG(mode):
        return True
    return _leads_through_an_open_file(Path(path))


def _leads_through_an_open_file(path: Path) -> bool:
    """Whether ``path``'s chain of symlinks passes a process's open file (``/proc/PID/fd/N``, ``/dev/fd/N``), as
    /dev/stdout does; a link to an ordinary file (even under /dev, as on /dev/shm) does not."""
    for _ in range(40):  # the kernel's own limit on a chain of links
        absolute = os.path.abspath(path)
        parts = Path(absolute).parts
        if parts[1:2] == ("proc",) and "fd" in parts[2:4] or parts[1:3] == ("dev", "fd"):
            return True
        if not path.is_symlink():
            return False
        path = Path(os.path.dirname(absolute)) / os.readlink(path)
    return False


def write_atomic(path: Path, payload: bytes | str, unique: bool = False) -> Path:
    """Write ``payload`` (str as UTF-8) to ``path`` through a hidden ``.NAME.tmp`` and a rename, so a crash leaves
    the old file or the new one; returns ``path``. ``unique``: a temporary name of this process's own, for a file
    that several processes may write at once (the manifest of ``predict --shard``). A symlink is written through
    (the file it names replaced, the link kept); a stream (:func:`is_stream`) is written to directly."""
    path = Path(path)
    data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
    if is_stream(path):  # /dev/stdout, a pipe (--json >(jq .)): written to, never renamed over
        sys.stdout.flush()  # what the command printed first stays first
        # Appending: /dev/stdout redirected into a file (">> run.log") keeps what the file held.
        with open(path, "ab") as stream:
            stream.write(data)
        return path
    # Through a symlink to the file it names: the link stays a link (renaming over it replaced it by a file).
    target = resolved_link(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp" if unique else f".{target.name}.tmp")
    try:
        tmp.write_bytes(data)
        # A temp file left by a killed run keeps its old mode when reopened; set it as a new file would have it.
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupted) leaves no hidden file behind
        raise
    return path


# Set by the CLI's SIGINT handler, which also raises KeyboardInterrupt; Python drops that exception inside a
# finaliser, so the library's loops check this flag once per step.
_INTERRUPTED = threading.Event()


def request_interrupt() -> None:
    """Mark the running command as interrupted (see :func:`raise_if_interrupted`)."""
    _INTERRUPTED.set()


def clear_interrupt() -> None:
    _INTERRUPTED.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if an interrupt was requested and swallowed somewhere."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
