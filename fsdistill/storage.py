"""Where predict reads its images and writes its outputs: a local folder or an object-store prefix.

:class:`Storage` is the files below one root, addressed by relative POSIX keys (``masks/a/b.png``), with only
what predict needs. :class:`ObjectStorage` reaches ``s3://`` and ``gs://`` prefixes through pyarrow's
filesystems (the ray extra, imported only when a URI is given), whose credentials and endpoint options apply
(README, "Object stores").
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fsdistill.errors import ConfigError, DataError, DependencyError, disk_full
from fsdistill.runtime import ensure_writable_dir, write_atomic

__all__ = ["Storage", "LocalStorage", "ObjectStorage", "StoredFile", "open_storage", "OBJECT_SCHEMES"]

OBJECT_SCHEMES = ("s3", "gs")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_REASON_CHARS = 200  # pyarrow's messages carry request ids and nested retry records: the start says what failed


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.split(r" \(Request ID:| error_info=", text)[0].rstrip(" .;")
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _pyarrow_fs() -> Any:
    try:
        import pyarrow.fs
    except ImportError:
        raise DependencyError(
            "s3:// and gs:// locations need pyarrow, which is not installed; install it with pip install "
            "'fsdistill[ray]'."
        ) from None
    return pyarrow.fs


@dataclass(frozen=True)
class StoredFile:
    """One file in an object store, as predict's image sources hold it (a local image is a plain Path).

    Picklable with its filesystem, so DataLoader workers and Ray actors read it themselves; ``str()`` is its URI.
    """

    fs: Any  # a pyarrow.fs.FileSystem
    path: str  # bucket/key
    scheme: str
    # "size:mtime_ns" from the listing that found it (predict's resume check), if any; not part of its identity
    stamp: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def read_bytes(self) -> bytes:
        """The object's bytes (OSError when it cannot be read)."""
        with self.fs.open_input_file(self.path) as handle:
            return handle.read()


class Storage(ABC):
    """The files below one root (a local folder or an object-store prefix), addressed by relative POSIX keys;
    the key ``""`` is the root itself (which may be a single file)."""

    @property
    def local(self) -> Path | None:
        """The root as a local folder, or None for an object store."""
        return None

    @abstractmethod
    def display(self, key: str = "") -> str:
        """The path or URI of ``key`` as the user writes it."""

    def identity(self, key: str = "") -> str:
        """A name that is equal for equal files (a resolved path, a URI): finds files reached twice."""
        return self.display(key)

    @abstractmethod
    def kind(self, key: str = "") -> str:
        """``file``, ``dir`` or ``missing``."""

    def is_file(self, key: str) -> bool:
        return self.kind(key) == "file"

    def location(self, key: str) -> Path | str:
        """Where ``key`` is, as results report it: a Path on this machine, else its URI."""
        return self.local / key if self.local is not None else self.display(key)

    @abstractmethod
    def walk(self) -> Iterator[tuple[str, list[str], list[str]]]:
        """Top-down ``(folder key, sub-folder names, file names)`` below the root, as :func:`os.walk` (removing
        names from the sub-folder list in place keeps the walk out of them)."""

    @abstractmethod
    def files(self, key: str) -> set[str]:
        """Keys of every file below folder ``key`` (relative to the root; empty when it does not exist)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The bytes of file ``key``."""

    @abstractmethod
    def write_bytes(self, key: str, payload: bytes, unique: bool = False) -> None:
        """Write file ``key`` whole or not at all; ``unique``: another process may write it at the same time."""

    @abstractmethod
    def ensure_writable(self, flag: str) -> None:
        """Raise DataError (naming the option ``flag``) when outputs cannot be written here."""

    @abstractmethod
    def source(self, key: str = "") -> Path | StoredFile:
        """File ``key`` as an image source for the runners (a Path, or a :class:`StoredFile`)."""

    def __str__(self) -> str:
        return self.display()


class LocalStorage(Storage):
    """A folder (or file) on this machine; writes go through a temporary name and a rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def local(self) -> Path:
        return self.root

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def display(self, key: str = "") -> str:
        return str(self._path(key))

    def identity(self, key: str = "") -> str:
        return str(self._path(key).resolve())

    def kind(self, key: str = "") -> str:
        path = self._path(key)
        try:
            return "file" if path.is_file() else "dir" if path.is_dir() else "missing"
        except PermissionError:  # in a folder that may not be searched (mode 000): a traceback before
            raise DataError(f"Cannot look into {path.parent} (permission denied); make it readable.") from None

    def walk(self) -> Iterator[tuple[str, list[str], list[str]]]:
        def unlistable(exc: OSError) -> None:  # os.walk passed over a folder it could not list, in silence
            raise DataError(
                f"Cannot list {exc.filename} ({exc.strerror}); make it readable, or leave it out of the inputs."
            )

        for folder, dirs, names in os.walk(self.root, onerror=unlistable):
            rel = Path(folder).relative_to(self.root).as_posix()
            yield ("" if rel == "." else rel), dirs, names

    def files(self, key: str) -> set[str]:
        return {
            (Path(folder) / name).relative_to(self.root).as_posix()
            for folder, _, names in os.walk(self._path(key))
            for name in names
        }

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, payload: bytes, unique: bool = False) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, payload, unique=unique)
        except OSError as exc:  # a file where a folder must go, a name too long, a full disk
            fix = (
                "free some space, or choose another output folder"
                if disk_full(exc)
                else "move what is in the way, or choose another output folder"
            )
            raise DataError(f"Cannot write {path} ({exc.strerror or exc}); {fix}.") from None

    def ensure_writable(self, flag: str) -> None:
        ensure_writable_dir(self.root, flag)

    def source(self, key: str = "") -> Path:
        return self._path(key)


class ObjectStorage(Storage):
    """A prefix in an object store, through a pyarrow filesystem.

    Every write is one object put, which the store makes visible whole or not at all, so no temporary name is
    needed. The store's errors become a DataError naming the URI.
    """

    def __init__(self, fs: Any, root: str, scheme: str) -> None:
        self.fs, self.root, self.scheme = fs, root.strip("/"), scheme
        self._stamps: dict[str, str] = {}  # "size:mtime_ns" of each file the listings found, by path

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def display(self, key: str = "") -> str:
        return f"{self.scheme}://{self._path(key)}"

    @contextmanager
    def _errors(self, what: str, key: str = "") -> Iterator[None]:
        """The store's OSErrors inside the block as the DataError that names what failed on ``key``."""
        try:
            yield
        except OSError as exc:
            raise DataError(
                f"Cannot {what} {self.display(key)} ({_reason(exc)}); check the bucket name, the credentials and "
                "the endpoint."
            ) from None

    def kind(self, key: str = "") -> str:
        fs = _pyarrow_fs()
        with self._errors("reach", key):
            info = self.fs.get_file_info(self._path(key))
        if info.type == fs.FileType.File:
            self._remember_stamps([info])  # a file given alone is never listed
        return {fs.FileType.File: "file", fs.FileType.Directory: "dir"}.get(info.type, "missing")

    def files(self, key: str) -> set[str]:
        fs = _pyarrow_fs()
        with self._errors("list", key):
            infos = self.fs.get_file_info(fs.FileSelector(self._path(key), recursive=True, allow_not_found=True))
        start = len(self.root) + 1
        files = [info for info in infos if info.type == fs.FileType.File]
        self._remember_stamps(files)
        return {info.path[start:] for info in files}

    def _remember_stamps(self, infos: list[Any]) -> None:
        """The size and date a request gave of each file (pyarrow FileInfo): the sources' stamps (predict's resume
        check), without a request per object."""
        self._stamps.update(
            (info.path, f"{info.size}:{info.mtime_ns}")
            for info in infos
            if info.size is not None and info.mtime_ns is not None
        )

    def walk(self) -> Iterator[tuple[str, list[str], list[str]]]:
        # One listing of the whole prefix (an object store has no folders to descend into), laid out as folders.
        folders: defaultdict[str, tuple[set[str], list[str]]] = defaultdict(lambda: (set(), []))
        for key in sorted(self.files("")):
            parts = key.split("/")
            for depth in range(len(parts) - 1):
                folders["/".join(parts[:depth])][0].add(parts[depth])
            folders["/".join(parts[:-1])][1].append(parts[-1])
        pending = [""]
        while pending:
            folder = pending.pop()
            subs, names = folders[folder]
            dirs = sorted(subs)
            yield folder, dirs, names
            pending.extend(f"{folder}/{d}" if folder else d for d in reversed(dirs))

    def read_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            return self.source(key).read_bytes()

    def write_bytes(self, key: str, payload: bytes, unique: bool = False) -> None:
        with self._errors("write", key), self.fs.open_output_stream(self._path(key)) as handle:
            handle.write(payload)

    def ensure_writable(self, flag: str) -> None:
        bucket = self.root.split("/")[0]
        with self._errors("reach"):
            found = self.fs.get_file_info(bucket).type
        if found == _pyarrow_fs().FileType.NotFound:
            raise DataError(
                f"The bucket of {flag} {self.display()} does not exist (or these credentials cannot see it); create "
                f"it or choose another {flag} location."
            )

    def source(self, key: str = "") -> StoredFile:
        return StoredFile(self.fs, self._path(key), self.scheme, self._stamps.get(self._path(key)))


GCS_RETRY_LIMIT_S = 20  # gs:// requests: how long to retry a failing one (the URI's retry_limit_seconds= wins)


def open_storage(location: str | os.PathLike) -> Storage:
    """The :class:`Storage` of a local path (a Path, or a str without ``scheme://``) or an object-store URI.

    Raises:
        ConfigError: a scheme other than s3:// and gs://, or a URI pyarrow cannot parse or without a bucket.
        DependencyError: a URI without pyarrow installed. DataError: the store cannot be reached.
    """
    if not isinstance(location, (str, os.PathLike)):
        raise ConfigError(
            f"A path is a str or Path (or an s3:// / gs:// URI), not {type(location).__name__} {location!r}."
        )
    if not (isinstance(location, str) and _URI.match(location)):
        return LocalStorage(Path(location).expanduser())
    scheme = location.split("://", 1)[0].lower()
    if scheme not in OBJECT_SCHEMES:
        raise ConfigError(
            f"{location} has the scheme {scheme}://, which predict cannot read or write; use a local path, "
            "s3://bucket/prefix or gs://bucket/prefix."
        )
    fs_module = _pyarrow_fs()
    uri = location
    if scheme == "gs" and "retry_limit_seconds=" not in location:
        # pyarrow's GCS client retries for up to 15 minutes, in silence (no credentials, no network); a bound of
        # its own makes that one sentence within a minute. A query's own bound wins.
        uri += f"{'&' if '?' in location else '?'}retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    try:
        fs, path = fs_module.FileSystem.from_uri(uri)
    except ValueError as exc:  # pyarrow.ArrowInvalid: an option of the query it does not know, a malformed URI
        raise ConfigError(f"Cannot use {location} ({_reason(exc)}); write it as {scheme}://bucket/prefix.") from None
    except OSError as exc:  # resolving an S3 bucket's region needs the endpoint
        shown = location.split("?", 1)[0]
        raise DataError(
            f"Cannot reach {shown} ({_reason(exc)}); check the bucket name, the credentials and the endpoint."
        ) from None
    if not path.strip("/"):
        raise ConfigError(f"{location} names no bucket; write it as {scheme}://bucket/prefix.")
    return ObjectStorage(fs, path, scheme)
