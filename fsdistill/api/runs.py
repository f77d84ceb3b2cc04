"""Run folders: where a training command writes, what it refuses to overwrite, and what its artifacts record
about the supports (so that ``evaluate`` can refuse support images)."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fsdistill.checkpoint import (
    CLAIM_FILE,
    RUN_CONFIG_FILE,
    claim_held,
    claim_lock,
    claim_text,
    is_artifact,
    live_claim,
    recover_artifact,
    resolve_model_dir,
    written_by_distill,
)
from fsdistill.config import AdaptCfg, DistillCfg
from fsdistill.data.discover import SupportIndex
from fsdistill.data.images import image_size, pixel_sha256, read_image
from fsdistill.data.support_tensors import SupportTensors
from fsdistill.errors import DataError, FsdistillError
from fsdistill.runtime import ensure_writable_dir, write_atomic
from fsdistill.train.support_check import SupportCheck

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunResult:
    """What a training command produced."""

    run_dir: Path
    teacher_dir: Path | None = None
    student_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    check: SupportCheck | None = None  # distill: the per-class check on the support folder
    student_parameters: int | None = None  # distill: numbers in the student artifact (weights and buffers)
    student_mb: float | None = None  # distill: size of its model.safetensors in MiB


def new_run_dir(out: Path | None) -> Path:
    """``out`` if given (created), else ``runs/<date>-<time>`` made unique: a run never overwrites another."""
    if out is not None:
        return ensure_writable_dir(Path(out), "--out")
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return ensure_writable_dir(candidate, "--out")


def _is_artifact_at(model: Path, directory: Path) -> bool:
    """Whether the teacher ``model`` names (artifact or run folder) is ``directory``."""
    try:
        return resolve_model_dir(model, "teacher").resolve() == directory.resolve()
    except FsdistillError:
        return False


def check_run_dir(out: Path | None, command: str, teacher: Path | None = None, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds a finished run (a complete ``teacher/`` or ``student/``), unless
    ``overwrite``. Allowed: a missing or empty folder, a killed run (no complete artifact, or a ``distill`` killed
    after saving its teacher: a teacher that distill wrote, never adapt's), and ``distill --teacher OUT/teacher
    --out OUT`` (replaces nothing).

    Raises:
        DataError: the folder holds a finished run (the message asks for --overwrite or another --out).
    """
    if out is None or overwrite or not Path(out).is_dir():
        return
    out = Path(out)
    finished = [name for name in ("teacher", "student") if is_artifact(recover_artifact(out / name))]
    if not finished:
        return
    if command == "distill" and "student" not in finished:
        if teacher is not None and _is_artifact_at(teacher, out / "teacher"):
            return
        if teacher is None and written_by_distill(out / "teacher"):
            return
    raise DataError(
        f"{out} already holds a run ({', '.join(name + '/' for name in finished)}); pass --overwrite (overwrite=True "
        "in Python) to replace it, or "
        "choose a new --out (a run's config.resolved.yaml names that run as its out:)."
    )


# One training command at a time in a process: they seed and restore the process's random generators (two at once
# in threads were not reproducible), and a second one into the same --out must find the first one's run.
_TRAINING = threading.Lock()
# Run folders the running training command claimed, each with the open claim file whose lock it holds (None where
# file systems have no locks).
_claimed: list[tuple[Path, int | None]] = []


def training_command(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a training command (adapt, distill): calls from several threads run one after the other, and the
    run folder a call claims (:func:`claim_run_dir`) is released when it returns or fails."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with _TRAINING:
            try:
                return fn(*args, **kwargs)
            finally:
                for run_dir, fd in _claimed:
                    if _own_claim(run_dir):  # removed while locked: a run waiting for it finds a new file
                        (run_dir / CLAIM_FILE).unlink(missing_ok=True)
                    if fd is not None:
                        os.close(fd)
                _claimed.clear()

    return wrapper


def claim_run_dir(run_dir: Path) -> None:
    """Mark ``run_dir`` as trained into by this process (:data:`~fsdistill.checkpoint.CLAIM_FILE`), so that a
    command started into it meanwhile is refused (two runs saving into one folder: the first finished run replaced
    without ``--overwrite``, or one run's teacher beside the other's student). A claim whose process has ended (a
    killed run, on this machine or another) is taken over. Called within a :func:`training_command`.

    The claim file is locked for as long as the command runs (:func:`~fsdistill.checkpoint.claim_lock`): whoever
    gets the lock holds the claim, so two runs taking over one stale claim cannot both win, and a claim is free the
    moment its process dies, whatever its file says. Where file systems have no locks, the file is created
    exclusively and its text ("HOST PID") tells whether its process still runs.

    Raises:
        DataError: another live process holds the claim.
    """
    claim = run_dir / CLAIM_FILE
    busy = 0  # tries that found the lock held
    for _ in range(50):
        if claim.is_symlink() or (claim.exists() and not claim.is_file()):
            # Never written through: a link would have its target overwritten (another user's file, say).
            raise DataError(f"{claim} is not a regular file; remove it, then run the command again.")
        try:
            fd, created = _open_claim(claim)
        except FileNotFoundError:  # its holder just finished
            continue
        except PermissionError:  # a claim file of another user: read its lock, take it over if its run ended
            held = claim_held(claim)
            if held is None:  # no file locks here
                _claim_by_text(run_dir)
                return
            if not held:
                _remove_stale_claim(claim)
                continue
            fd, created = None, False
        except OSError as exc:
            raise _cannot_write(run_dir, exc) from None
        locked = claim_lock(fd, exclusive=True) if fd is not None else False
        if locked is None:  # no file locks here
            os.close(fd)
            if created:  # empty: it would pass for a claim being written
                claim.unlink(missing_ok=True)
            _claim_by_text(run_dir)
            return
        if not locked:  # held by a live process (or, for a moment, by a command checking it)
            if fd is not None:
                os.close(fd)
            busy += 1
            holder = live_claim(run_dir, ignore_own=True)
            if holder is not None and busy >= 3:
                raise DataError(
                    f"Another fsdistill run ({holder}) is training into {run_dir}; wait for it to finish or "
                    f"choose another --out (if no run is going on, delete {claim})."
                )
            time.sleep(0.05)
            continue
        try:
            opened = os.fstat(fd)
            if opened.st_nlink > 1:  # another name of some file: writing would change that file too
                os.close(fd)
                raise DataError(f"{claim} is a hard link to another file; remove it, then run the command again.")
            if opened.st_ino != os.stat(claim, follow_symlinks=False).st_ino:
                os.close(fd)  # its holder removed it as it finished, between our open and our lock
                continue
            os.ftruncate(fd, 0)
            os.write(fd, claim_text().encode())
        except OSError as exc:  # a full disk, say: nothing of this attempt is left behind
            os.close(fd)
            if created:
                claim.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):
                continue
            raise _cannot_write(run_dir, exc) from None
        _claimed.append((run_dir.absolute(), fd))
        return
    raise DataError(f"Cannot claim {run_dir}: other runs keep taking it; choose another --out.")


def _cannot_write(run_dir: Path, exc: OSError) -> DataError:
    return DataError(f"Cannot write into {run_dir} ({exc.strerror}); choose a writable --out.")


def _open_claim(claim: Path) -> tuple[int, bool]:
    """The claim file opened for writing, never through a link: (fd, whether this call created it)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(claim, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(claim, flags), False


def _remove_stale_claim(claim: Path) -> None:
    """Remove a claim whose run ended, which this user may not write (another user's, in a shared folder)."""
    try:
        claim.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot take over {claim}, left by a run that has ended ({exc.strerror}); remove it, then run the "
            "command again."
        ) from None


def _claim_by_text(run_dir: Path) -> None:
    """:func:`claim_run_dir` where file systems have no locks: the claim created exclusively, a dead holder's
    (by its text) removed first."""
    claim = run_dir / CLAIM_FILE
    tmp = run_dir / f".{CLAIM_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(claim_text())
        for _ in range(3):
            try:
                _create_claim(claim, tmp)
            except FileExistsError:
                holder = live_claim(run_dir, ignore_own=True)  # this process trains one command at a time
                if holder is not None:
                    raise DataError(
                        f"Another fsdistill run ({holder}) is training into {run_dir}; wait for it to finish or "
                        f"choose another --out (if no run is going on, delete {claim})."
                    ) from None
                claim.unlink(missing_ok=True)  # its process has ended
                continue
            _claimed.append((run_dir.absolute(), None))
            return
    except OSError as exc:
        raise _cannot_write(run_dir, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _create_claim(claim: Path, written: Path) -> None:
    """Create ``claim`` as a link to the ``written`` file, so it appears with its holder in it or not at all; on a
    file system without hard links, created exclusively and then written. FileExistsError: there is one."""
    try:
        os.link(written, claim)
        return
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        pass
    with open(claim, "x") as f:
        f.write(claim_text())


def _own_claim(run_dir: Path) -> bool:
    try:
        return (run_dir / CLAIM_FILE).read_text().strip() == claim_text()
    except OSError:
        return False


def _drop_stale(run_dir: Path, keep: set[str]) -> None:
    """Remove the ``teacher/``, ``student/`` and ``student.onnx`` a replaced run left in ``run_dir`` that this run
    did not write (they would be paired with the new model); other files are the user's."""
    for name in {"teacher", "student", "student.onnx"} - keep:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_run_config(run_dir: Path, cfg: AdaptCfg | DistillCfg, command: str) -> Path:
    """Write ``run_dir``'s config.resolved.yaml; returns ``run_dir``."""
    data = {"command": command, **json.loads(cfg.model_dump_json())}
    write_atomic(run_dir / RUN_CONFIG_FILE, yaml.safe_dump(data, sort_keys=False))
    return run_dir


def _support_info(index: SupportIndex, support: SupportTensors) -> dict[str, Any]:
    """What an artifact records of its support folder: each support's size and :func:`pixel_sha256` as the
    supports were read for training (``support``), and the folder's fingerprint taken then (a file changed while
    the run trained must not stand in the record of what it learned from)."""
    images = [
        {"key": key, "size": [width, height], "sha256": digest}
        for key, (height, width), digest in zip(support.keys, support.sizes, support.pixel_sha256)
    ]
    info = {
        "root": str(index.root),
        "layout": index.layout,
        "count": len(index),
        "keys": [s.key for s in index.samples],
        "fingerprint": support.fingerprint,
        "images": images,
    }
    if index.coco is not None:  # predict --format coco writes its pre-labels with the folder's own category ids
        info["category_ids"] = list(index.coco.category_ids)
    return info


def support_matcher(support: dict[str, Any]) -> Callable[[Path], str | None] | None:
    """For an artifact's ``support_info``: a function giving the key of the recorded support an image file is (by
    :func:`pixel_sha256`; only files of a support's size are decoded), else None. None for an artifact that
    recorded no hashes."""
    recorded = support.get("images")
    if recorded is None:
        return None
    by_size: dict[tuple[int, int], dict[str, str]] = {}
    for entry in recorded:
        by_size.setdefault(tuple(entry["size"]), {})[entry["sha256"]] = entry["key"]

    def support_of(path: Path) -> str | None:
        candidates = by_size.get(image_size(path))
        return candidates.get(pixel_sha256(read_image(path))) if candidates else None

    return support_of


def _leaked_supports(support: dict[str, Any], index: SupportIndex) -> list[str]:
    """Images of ``index`` that are support images of the model, as ``KEY (support KEY)``: by
    :func:`support_matcher`, or by file name for an artifact that recorded no hashes."""
    support_of = support_matcher(support)
    if support_of is None:
        keys = set(support.get("keys", []))
        return [f"{s.key} (support {s.key})" for s in index.samples if s.key in keys]
    matches = ((sample.key, support_of(sample.image_path)) for sample in index.samples)
    return [f"{key} (support {match})" for key, match in matches if match is not None]
