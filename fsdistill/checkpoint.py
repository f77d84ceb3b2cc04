"""Artifact directories: ``model.safetensors`` + ``config.json``, written atomically, checked on load.

An artifact is everything needed to rebuild and run a model with no flags repeated: the config names the kind
(teacher or student), the backbone, the input size and normalisation, the class names and palette, the model
arguments, the resolved training configuration and the support-set fingerprint. The safetensors header carries
``config_sha256`` so a config.json that does not belong to the weights is caught, and ``config.json`` records the
``weights_sha256`` of ``model.safetensors`` so changed weight bytes are caught too (a safetensors file with random
bytes in its tensor data parses fine and loads as a silently different model).

A run folder holds a ``teacher/`` and/or ``student/`` artifact; :func:`resolve_model_dir` finds the one a
command means. Building models from an artifact is :mod:`fsdistill.models.build`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fsdistill import __version__
from fsdistill.errors import CheckpointError
from fsdistill.runtime import new_file_mode

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
WEIGHTS_SHA_KEY = "weights_sha256"


def config_sha256(config: dict[str, Any]) -> str:
    """Hash of the canonical JSON form (sorted keys, no whitespace), independent of pretty-printing.

    ``weights_sha256`` is left out: it is the hash of the file whose header holds this hash, so it can only be
    added to config.json after the weights are written. (Artifacts from before that key hash the same as ever.)
    """
    config = {k: v for k, v in config.items() if k != WEIGHTS_SHA_KEY}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def is_artifact(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def _retired(directory: Path) -> list[Path]:
    """Complete artifacts a save moved aside (``.NAME.old-*``), newest first."""
    old = [p for p in directory.parent.glob(f".{directory.name}.old-*") if is_artifact(p)]
    return sorted(old, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_artifact(directory: Path) -> Path:
    """Put back an artifact that a killed save left only under its hidden ``.NAME.old-*`` name; returns ``directory``.

    :func:`save_artifact` replaces an artifact with two renames (the old one aside, the new one in); a SIGKILL
    between them leaves no ``NAME/``. The old copy is complete, so it goes back into place (the new one was never
    in place, as if the save had not happened; its staging folder is removed by the next save). Does nothing when
    ``NAME`` exists or no complete old copy is there. If the rename fails (a read-only folder, another process
    restored it first), ``directory`` is returned as it is and loading reports what is missing.
    """
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir():
        return directory
    for old in _retired(directory):
        try:
            os.replace(old, directory)
            break
        except OSError:
            pass
    return directory


def save_artifact(directory: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``directory/{model.safetensors,config.json}`` atomically and return ``directory``.

    Both files are written into a hidden sibling folder that is renamed into place only when complete, so an
    interrupted save never leaves a directory that loads. An existing artifact at ``directory`` is replaced.
    Leftovers of a killed save of the same artifact are dealt with first: an old copy moved aside but not
    replaced goes back into place (:func:`recover_artifact`), staging folders (``.NAME.partial-*``, never
    loadable) and other old copies are removed. ``config.json`` records the sha256 of the weights file, and both
    files get the umask's permissions.
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
    staging.mkdir()
    try:
        metadata = {
            "format": ARTIFACT_FORMAT,
            "fsdistill_version": __version__,
            "kind": str(config["kind"]),
            "config_sha256": config_sha256(config),
        }
        contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        weights = staging / WEIGHTS_FILE
        save_file(contiguous, str(weights), metadata=metadata)
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
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful save
    return directory


def _major_minor(version: str) -> tuple[int, ...]:
    """The first two numbers of a version (``1.2.0`` → (1, 2)); a piece without digits counts as 0."""
    return tuple(int("".join(filter(str.isdigit, piece)) or 0) for piece in version.split(".")[:2])


def load_artifact(directory: Path, expected_kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artifact directory. Returns ``(tensors, config)``.

    Raises:
        CheckpointError: missing files, unparsable or foreign config, newer format, corrupt weights, hash mismatch,
            or a kind other than ``expected_kind``.
    """
    directory = recover_artifact(Path(directory))
    if not directory.is_dir():
        raise CheckpointError(f"Model folder {directory} does not exist; pass a run or artifact folder to --model.")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{directory} is not an fsdistill artifact: {path.name} is missing.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{config_path} is not valid JSON; the artifact is damaged: re-run the command that made it."
        ) from None
    if not isinstance(config, dict) or config.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{config_path} is not an fsdistill artifact config (format key missing or foreign).")
    if int(config.get("format_version", 0)) > FORMAT_VERSION or _major_minor(
        str(config.get("fsdistill_version", "0"))
    ) > _major_minor(__version__):
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
    # Checked after the parse so a truncated or foreign file keeps its more telling message. Artifacts written
    # before the key existed have none and load as before.
    recorded = config.get(WEIGHTS_SHA_KEY)
    if recorded is not None and recorded != file_sha256(weights_path):
        raise CheckpointError(
            f"{weights_path} does not match the sha256 recorded in its config.json (the file was changed or damaged "
            "after it was written); re-run the command that made it."
        )
    return tensors, config


def _newest_run(root: Path, kind: str) -> Path | None:
    """The newest run folder under ``root`` that holds a complete ``kind`` artifact, or None."""
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    runs = [p for p in runs if is_artifact(recover_artifact(p / kind))]
    return max(runs, key=lambda p: (p.stat().st_mtime, p.name)) if runs else None


def _missing_part(directory: Path) -> str:
    """What keeps ``directory`` from being an artifact, for messages: the folder or the first missing file."""
    if not directory.is_dir():
        return f"{directory} is missing"
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            return f"{directory / name} is missing"
    return f"{directory} is incomplete"


def resolve_model_dir(path: Path | None, kind: str | None = None) -> Path:
    """Artifact dir as given; a run dir → its ``kind`` artifact (None: ``student/``); None → the newest run under
    ./runs that has one.

    A run folder never falls back to its teacher when the student is asked for (or ``kind`` is None): the teacher
    is a different, support-based model whose results would pass for the student's. Callers ask for
    ``kind="teacher"`` only when the user did (``evaluate --teacher``). An artifact folder is used as it is.

    Raises:
        CheckpointError: no such folder, or a run without a complete ``kind`` artifact (the message names the
            missing folder or file).
    """
    wanted = kind or "student"
    if path is None:
        newest = _newest_run(Path("runs"), wanted)
        if newest is None:
            raise CheckpointError(
                "No model given and no run found under ./runs; run fsdistill distill first or pass --model."
            )
        path = newest
    path = Path(path)
    recover_artifact(path)
    if is_artifact(path):
        if kind is not None:
            found = json.loads((path / CONFIG_FILE).read_text()).get("kind")
            if found != kind:
                raise CheckpointError(f"{path} holds a {found} model, but a {kind} is needed here.")
        return path
    if is_artifact(recover_artifact(path / wanted)):
        return path / wanted
    if not path.exists():
        raise CheckpointError(f"Model folder {path} does not exist; pass a run or artifact folder to --model.")
    if wanted == "student" and (path / "teacher").exists():
        raise CheckpointError(
            f"{path} has no usable student ({_missing_part(path / 'student')}); re-run fsdistill distill, or evaluate "
            "the run's teacher with evaluate --teacher (it is never used in the student's place)."
        )
    raise CheckpointError(f"{path} holds no {wanted} artifact (model.safetensors + config.json); pass a run folder.")
