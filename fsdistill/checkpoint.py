"""Artifact directories: ``model.safetensors`` + ``config.json``, written atomically, checked on load.

The config holds everything that rebuilds and runs the model with no flags repeated (kind, backbone, size,
normalisation, classes, palette, model arguments, training config, support fingerprint). The weights' header
carries ``config_sha256`` and the config records ``weights_sha256``, so either file changed alone is caught.
A run folder holds a ``teacher/`` and/or ``student/`` artifact (:func:`resolve_model_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: claims fall back to their text
    fcntl = None  # type: ignore[assignment]

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fsdistill import __version__
from fsdistill.errors import CheckpointError, DataError, disk_full
from fsdistill.runtime import new_file_mode, process_alive

__all__ = [
    "ARTIFACT_FORMAT",
    "FORMAT_VERSION",
    "save_artifact",
    "load_artifact",
    "recover_artifact",
    "config_sha256",
    "file_sha256",
    "is_artifact",
    "resolve_model_dir",
]

ARTIFACT_FORMAT = "fsdistill-artifact"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RUN_CONFIG_FILE = "config.resolved.yaml"  # a run folder's resolved config, written before training starts
# In a run folder while a training command writes into it: "HOST PID" of that process (fsdistill.api.runs).
CLAIM_FILE = ".fsdistill-training"
_CLAIM_GRACE_S = 60.0  # a claim file without a readable holder (being written) is live this long


def claim_text() -> str:
    """What this process writes into a run folder's :data:`CLAIM_FILE`."""
    return f"{socket.gethostname()} {os.getpid()}"


def claim_lock(fd: int, exclusive: bool) -> bool | None:
    """Lock the claim file open as ``fd`` without waiting (flock: the kernel drops it when its process ends, however
    it ends; network file systems that support locks share it between machines): True when locked, False when
    another process holds it, None where file locks are missing (Windows, some FUSE file systems)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def claim_held(claim: Path) -> bool | None:
    """Whether a live process holds ``claim``'s lock (None: no such file, or no file locks here). A claim this user
    may not read (another user's, created 0600) cannot be checked, so it counts as held."""
    try:
        fd = os.open(claim, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except PermissionError:
        return True
    except OSError:
        return None
    try:
        locked = claim_lock(fd, exclusive=False)
        return None if locked is None else not locked
    finally:
        os.close(fd)  # releases a lock taken just now


def live_claim(run_dir: Path, ignore_own: bool = False) -> str | None:
    """Who trains into ``run_dir`` now ("process 123", "process 123 on node-7"), or None: no claim, or one whose
    process has ended (a killed run; a claim left by another machine or a reused process id included). The
    claim's lock decides; where file systems have no locks, its text does, and a process on another machine is
    taken to run (it cannot be checked from here). ``ignore_own``: a claim of this process counts as ended."""
    claim = run_dir / CLAIM_FILE
    try:
        text = claim.read_text().strip()
        age = time.time() - claim.stat().st_mtime
    except PermissionError:  # another user's claim: it cannot be checked, so it is taken to be live
        if not os.access(run_dir, os.X_OK):
            return None  # the folder itself cannot be read (reading the model says so), no claim known
        return "a run of another user, whose claim this user cannot read"
    except OSError:
        return None
    host, _, pid = text.partition(" ")
    own = host == socket.gethostname() and pid == str(os.getpid())
    if ignore_own and own:
        return None
    who = f"process {pid}" if host == socket.gethostname() else f"process {pid} on {host}"
    held = claim_held(claim)  # flock: this process's own lock blocks another open of the file too
    if held is not None:
        return (who if pid.isdigit() else "another process") if held else None
    if not host or not pid.isdigit():
        return "another process" if age < _CLAIM_GRACE_S else None
    if host != socket.gethostname():
        return who
    if not process_alive(int(pid)):
        return None
    return who


WEIGHTS_SHA_KEY = "weights_sha256"


def config_sha256(config: dict[str, Any]) -> str:
    """Hash of the canonical JSON form (sorted keys, no whitespace), leaving out ``weights_sha256``: that is
    added after the weights, whose header holds this hash, are written."""
    config = {k: v for k, v in config.items() if k != WEIGHTS_SHA_KEY}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _missing_file(directory: Path) -> Path | None:
    """The first of config.json and model.safetensors that ``directory`` lacks (None: both are there)."""
    return next((directory / name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()), None)


def is_artifact(path: Path) -> bool:
    return _missing_file(Path(path)) is None


def recover_artifact(directory: Path) -> Path:
    """Put back an artifact that a killed save left only under its hidden ``.NAME.old-*`` name; returns ``directory``.

    :func:`save_artifact` replaces an artifact with two renames (the old one aside, the new one in); a SIGKILL
    between them leaves no ``NAME/``, as if the save had not happened. Does nothing when ``NAME`` exists, no
    complete old copy is there or the rename fails (loading then reports what is missing).
    """
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir():
        return directory
    retired = [p for p in directory.parent.glob(f".{directory.name}.old-*") if is_artifact(p)]
    if retired and live_claim(directory.parent, ignore_own=True) is not None:
        return directory  # a run saving there now set it aside: putting it back would fail that save
    for old in sorted(retired, key=lambda p: p.stat().st_mtime, reverse=True):  # the newest complete copy first
        try:
            os.replace(old, directory)
            break
        except OSError:
            pass
    return directory


def save_artifact(directory: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``directory/{model.safetensors,config.json}`` atomically (replacing an artifact there); returns it.

    Both files are written into a hidden sibling folder renamed into place when complete. Leftovers of a killed
    save are dealt with first: a moved-aside old copy goes back (:func:`recover_artifact`), staging folders and
    other old copies are removed. Both files get the umask's permissions.
    """
    directory = Path(directory)
    config = {"format": ARTIFACT_FORMAT, "format_version": FORMAT_VERSION, "fsdistill_version": __version__, **config}
    if "kind" not in config:
        raise ValueError("artifact config needs a 'kind'")
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_artifact(directory)
    for stale in [
        *directory.parent.glob(f".{directory.name}.partial-*"),
        *directory.parent.glob(f".{directory.name}.old-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    staging = directory.parent / f".{directory.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        _write_staged(directory, staging, tensors, config)
    except (OSError, SafetensorError) as exc:
        # A full disk or a size limit while writing: the old artifact, if any, is still in place.
        reason = getattr(exc, "strerror", None) or str(exc).split(": ")[-1] or type(exc).__name__
        full = not isinstance(exc, OSError) or disk_full(exc) or exc.errno is None
        fix = "free some space or choose another output folder" if full else "make sure nothing else writes there"
        raise DataError(
            f"Cannot write the model to {directory} ({reason}); {fix}, then run the command again."
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful save
    return directory


def _write_staged(directory: Path, staging: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """The two files of an artifact into ``staging``, then ``staging`` renamed to ``directory`` (an artifact there
    moved aside first and removed after)."""
    metadata = {
        "format": ARTIFACT_FORMAT,
        "fsdistill_version": __version__,
        "kind": str(config["kind"]),
        "config_sha256": config_sha256(config),
    }
    weights = staging / WEIGHTS_FILE
    save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(weights), metadata)
    os.chmod(weights, new_file_mode())  # safetensors creates its file 0o600, whatever the umask
    config[WEIGHTS_SHA_KEY] = file_sha256(weights)
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    if directory.exists():
        retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)


def _major_minor(version: str) -> tuple[int, ...]:
    """The first two numbers of a version (``1.2.0`` → (1, 2)); a piece without digits counts as 0."""
    return tuple(int("".join(filter(str.isdigit, piece)) or 0) for piece in version.split(".")[:2])


def _read_config(config_path: Path) -> dict[str, Any]:
    """An artifact's config.json as a dict.

    Raises:
        CheckpointError: not JSON (a damaged artifact), or not an fsdistill artifact config.
    """
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{config_path} is not valid JSON; the artifact is damaged: re-run the command that made it."
        ) from None
    if not isinstance(config, dict) or config.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{config_path} is not an fsdistill artifact config (format key missing or foreign).")
    return config


def load_artifact(directory: Path, expected_kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artifact directory. Returns ``(tensors, config)``.

    Raises:
        CheckpointError: missing files, unparsable or foreign config, newer format, corrupt weights, hash mismatch,
            or a kind other than ``expected_kind``.
    """
    directory = recover_artifact(Path(directory))
    if not directory.is_dir():
        raise CheckpointError(
            f"Model folder {directory} does not exist; check the path (a run folder or an artifact folder)."
        )
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    missing = _missing_file(directory)
    if missing is not None:
        raise CheckpointError(f"{directory} is not an fsdistill artifact: {missing.name} is missing.")
    config = _read_config(config_path)
    newer_version = _major_minor(str(config.get("fsdistill_version", "0"))) > _major_minor(__version__)
    if int(config.get("format_version", 0)) > FORMAT_VERSION or newer_version:
        raise CheckpointError(
            f"{directory} was written by fsdistill {config.get('fsdistill_version')} (artifact format "
            f"{config.get('format_version')}); upgrade fsdistill (this is {__version__}) to load it."
        )
    if expected_kind is not None and config.get("kind") != expected_kind:
        raise CheckpointError(f"{directory} holds a {config.get('kind')} model, but a {expected_kind} is needed here.")
    try:
        tensors = load_file(str(weights_path))
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is corrupt or not a safetensors file ({exc}); re-run the command that made it."
        ) from None
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{weights_path} was not written by fsdistill (no fsdistill header metadata).")
    if metadata.get("config_sha256") != config_sha256(config):
        raise CheckpointError(
            f"{config_path} does not belong to {weights_path.name} (config hash mismatch); restore the original config.json."
        )
    # Checked after the parse so a truncated or foreign file keeps its more telling message; older artifacts have
    # no recorded hash.
    recorded = config.get(WEIGHTS_SHA_KEY)
    if recorded is not None and recorded != file_sha256(weights_path):
        raise CheckpointError(
            f"{weights_path} does not match the sha256 recorded in its config.json (the file was changed or damaged "
            "after it was written); re-run the command that made it."
        )
    return tensors, config


def recorded_train_config(artifact: Path) -> dict[str, Any] | None:
    """The training config the artifact at ``artifact`` records (None: none, or no readable config.json)."""
    try:
        config = json.loads((artifact / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    train_config = config.get("train_config") if isinstance(config, dict) else None
    return train_config if isinstance(train_config, dict) else None


def written_by_distill(artifact: Path) -> bool:
    """Whether the artifact at ``artifact`` was written by ``distill`` (its recorded training config has distill's
    ``teacher`` field), as a distill killed before its student leaves its teacher; not an adapt run's teacher."""
    train_config = recorded_train_config(artifact)
    return train_config is not None and "teacher" in train_config


def _newest_run(root: Path, kind: str, finished: bool = True) -> Path | None:
    """The run folder under ``root`` whose complete ``kind`` artifact was written last, or None. By the artifact's
    time, not the run folder's: exporting an old run (``student.onnx``) touches its folder, not its student. A
    distill stopped before its student is no run to default to (``finished``): its teacher would be compared with
    another run's student."""
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    runs = [p for p in runs if is_artifact(recover_artifact(p / kind))]
    if kind == "teacher" and finished:
        runs = [p for p in runs if is_artifact(p / "student") or not written_by_distill(p / "teacher")]
    return max(runs, key=lambda p: ((p / kind / CONFIG_FILE).stat().st_mtime, p.name)) if runs else None


def resolve_model_dir(path: Path | None, kind: str | None = None) -> Path:
    """Artifact dir as given; a run dir → its ``kind`` artifact (None: ``student/``); None → the newest run under
    ./runs that has one. A run never falls back to its teacher for the student: their results would pass for the
    student's.

    Raises:
        CheckpointError: no such folder, a run without a complete ``kind`` artifact (the message names the
            missing folder or file), or an artifact whose config.json is damaged.
    """
    wanted = kind or "student"
    if path is None:
        newest = _newest_run(Path("runs"), wanted)
        if newest is None and _newest_run(Path("runs"), "teacher", finished=False) is not None:
            if wanted == "teacher":  # evaluate --teacher: only distills stopped before their student are there
                raise CheckpointError(
                    "No model given, and the runs under ./runs hold only distills stopped before their student; pass "
                    "--model RUN to use one's teacher, or finish it (fsdistill distill --teacher RUN/teacher --out "
                    "RUN)."
                )
            raise CheckpointError(
                f"No model given, and the runs under ./runs hold no {wanted} to use (only teachers: from adapt, or a "
                "distill stopped before its student); run fsdistill distill, or pass --model RUN (with --teacher "
                "for evaluate) to use a teacher."
            )
        if newest is None:
            raise CheckpointError(
                "No model given and no run found under ./runs; run fsdistill distill first or pass --model."
            )
        path = newest
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(
            f"A model is a run or artifact folder (a str or Path), not {type(path).__name__} {path!r}."
        )
    path = Path(path).expanduser()
    # A run being trained, given as the run or as one of its artifacts, is neither read nor touched (recovering a
    # set-aside artifact would put its old model back in the trainer's way); this process's own run is its own.
    for folder in (path, path.parent):
        training = live_claim(folder, ignore_own=True)
        if training is not None:
            raise CheckpointError(
                f"{folder} is still being trained ({training}); wait for it to finish (if no run is going on, delete "
                f"{folder / CLAIM_FILE})."
            )
    recover_artifact(path)
    if is_artifact(path):
        if kind is not None:
            found = _read_config(path / CONFIG_FILE).get("kind")
            if found != kind:
                raise CheckpointError(f"{path} holds a {found} model, but a {kind} is needed here.")
        return path
    if is_artifact(recover_artifact(path / wanted)):
        return path / wanted
    if not path.exists():
        raise CheckpointError(
            f"Model folder {path} does not exist; check the path (a run folder or an artifact folder)."
        )
    if path.is_file():
        if path.name in (CONFIG_FILE, WEIGHTS_FILE) and is_artifact(path.parent):
            raise CheckpointError(f"{path} is a file of the artifact {path.parent}; pass that folder (or its run).")
        raise CheckpointError(f"{path} is a file; pass a run folder or an artifact folder.")
    if wanted == "student" and (path / "teacher").exists():
        student = path / "student"
        missing = (_missing_file(student) if student.is_dir() else None) or student
        raise CheckpointError(
            f"{path} has no usable student ({missing} is missing); re-run fsdistill distill (--teacher "
            f"{path / 'teacher'} reuses its teacher), or evaluate the teacher with evaluate --teacher (it is never "
            "used in the student's place)."
        )
    if wanted == "teacher" and is_artifact(path / "student"):  # distill --freeze-teacher leaves it where it was
        source = (_read_config(path / "student" / CONFIG_FILE).get("train_config") or {}).get("teacher")
        raise CheckpointError(
            f"{path} has no teacher/ (its student learned from "
            f"{f'the frozen teacher {source}' if source else 'a teacher kept elsewhere'}); pass --model "
            f"{source or 'THAT_TEACHER'} for the teacher."
        )
    if (path / RUN_CONFIG_FILE).is_file() and not (path / "teacher").exists():
        raise CheckpointError(
            f"{path} is a run that stopped before its model was saved ({RUN_CONFIG_FILE} only); re-run the command "
            "that started it."
        )
    if any((path / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE)):  # an artifact folder missing a file
        raise CheckpointError(
            f"{path} is an incomplete artifact: {_missing_file(path)} is missing; copy the whole artifact folder "
            "(model.safetensors and config.json) again."
        )
    raise CheckpointError(f"{path} holds no {wanted} artifact (model.safetensors + config.json); pass a run folder.")
