"""Support folders given as a ``.zip`` (a CVAT export as downloaded), unpacked once into a cache folder.

The folder is keyed by the zip's path, size and mtime (a changed zip gets a fresh one) and appears complete or
not at all (unpacked under a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fsdistill.errors import DataError

__all__ = ["cache_root", "unpack_zip"]


def cache_root() -> Path:
    """``$FSDISTILL_CACHE``, else ``$XDG_CACHE_HOME/fsdistill``, else ``~/.cache/fsdistill``."""
    if os.environ.get("FSDISTILL_CACHE"):
        return Path(os.environ["FSDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fsdistill"


def unpack_zip(path: Path) -> Path:
    """The folder holding the contents of the zip archive ``path`` (unpacked on first use).

    Raises:
        DataError: not a zip archive, a member outside the archive's folder, or no room to unpack it.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "unpacked" / f"{path.stem}-{key}"
    if target.is_dir():
        return target
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(
                        f"Zip archive {path} holds {name!r}, which would unpack outside its folder; unpack it by hand "
                        "and pass the folder."
                    )
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                archive.extractall(staging)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{path} is not a readable zip archive ({exc}); download it again or unpack it by hand."
        ) from None
    except OSError as exc:
        if target.is_dir():  # another process unpacked the same archive first
            return target
        raise DataError(
            f"Cannot unpack {path} into {target.parent} ({exc.strerror or exc}); free some space, set FSDISTILL_CACHE "
            "to another folder, or unpack it by hand and pass the folder."
        ) from None
    return target
