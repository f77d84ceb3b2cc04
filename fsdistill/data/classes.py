"""Class names of a support folder (background first at id 0, unique): names files, and the defaults without one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

from fsdistill.data.layouts import is_hidden
from fsdistill.data.masks import BACKGROUND_NAMES, IGNORE_INDEX, parse_labelmap
from fsdistill.errors import DataError

__all__ = [
    "BINARY_NAMES",
    "background_first",
    "binary_class_names",
    "find_names_file",
    "is_labelmap",
    "names_source",
    "read_class_names",
]

BINARY_NAMES = ("background", "foreground")  # names of binary masks without a names file


def is_labelmap(path: Path | None) -> bool:
    """Whether a names file is a CVAT/Datumaro ``labelmap.txt`` (names with colours, not just names)."""
    return path is not None and path.name.lower() == "labelmap.txt"


def names_source(names_file: Path | None) -> str:
    """Where class names came from, for messages and reports: the names file's name, else "defaults"."""
    return names_file.name if names_file else "defaults"


def background_first(names: list[str], path: Path) -> list[str]:
    """``names`` stripped, with "background" put first at id 0 when no background name is listed."""
    names = [n.strip() for n in names]
    if any(not n for n in names):
        raise DataError(f"Names file {path} has an empty class name; give every class a name.")
    bg = [k for k, n in enumerate(names) if n.lower() in BACKGROUND_NAMES]
    if bg and bg != [0]:
        raise DataError(f"Names file {path} lists background at position {bg[0]}; move it to the first line (id 0).")
    if not bg:
        names = ["background", *names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"Names file {path} lists {dup!r} twice; each class needs its own name.")
    return names


def read_class_names(path: Path | str) -> list[str]:
    """Class names from ``classes.txt`` (one per line, line = id), ``labelmap.txt`` or a YAML/JSON with
    ``names:`` (a list, or {id: name}; missing ids are named ``class_<id>``), "background" first at id 0.

    Raises:
        DataError: unreadable file, no names, names that are not plain values, an id above 254, duplicates, or
            background not first.
    """
    path = Path(path)
    if is_labelmap(path):
        return parse_labelmap(path)[0]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"Cannot read names file {path}: {e}; "
            + ("make it readable (chmod)." if isinstance(e, PermissionError) else "save it as UTF-8 text.")
        ) from e
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in text.rstrip().splitlines()]  # trailing blank lines are not names
        names = [ln for ln in lines if not ln.startswith("#")]
    else:
        is_json = path.suffix.lower() == ".json"
        try:
            # Numbers as written (1.10 stays "1.10", not 1.1), in JSON and (below) in YAML.
            data = json.loads(text, parse_int=str, parse_float=str) if is_json else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            raise DataError(f"Cannot parse names file {path}: {str(e).splitlines()[0]}; fix its syntax.") from e
        raw = data.get("names") if isinstance(data, dict) else None
        if isinstance(raw, dict) or isinstance(raw, list):
            values = list(raw.values()) if isinstance(raw, dict) else raw
            if not all(isinstance(n, (str, int, float)) for n in values):  # nested lists (YAML aliases): no names
                raise DataError(
                    f"Names file {path} lists something other than plain names in names:; give one name each."
                )
            if not is_json and not all(isinstance(n, str) for n in values):
                # YAML reads no/on as booleans, 010 as 8, 1:30 as 90: each name as written in the file instead (the
                # ids as YAML reads them; where merge keys make the two readings differ, the names as read).
                verbatim = (yaml.load(text, Loader=yaml.BaseLoader) or {}).get("names")
                if isinstance(raw, list) and isinstance(verbatim, list) and len(verbatim) == len(raw):
                    raw = verbatim
                elif isinstance(raw, dict) and isinstance(verbatim, dict) and len(verbatim) == len(raw):
                    raw = dict(zip(raw, verbatim.values()))
                else:  # merge keys, or ids YAML reads as one (true and 1): which name is which cannot be told
                    raise DataError(
                        f"Names file {path} has unquoted names YAML reads as other values (no, on, 010) together "
                        "with merge keys or ids that collide; quote the names ('no') and give each id once."
                    )
            elif is_json:
                raw = (
                    {k: _json_text(v) for k, v in raw.items()} if isinstance(raw, dict) else list(map(_json_text, raw))
                )
        if isinstance(raw, dict):
            try:
                by_id = {int(k): str(v) for k, v in raw.items()}
            except (TypeError, ValueError) as e:
                raise DataError(
                    f"Names file {path} has a non-integer id in names:; use {{0: background, 1: ...}}."
                ) from e
            if not by_id or min(by_id) < 0:
                raise DataError(f"Names file {path} has no names or a negative id; use ids 0, 1, 2, ...")
            if max(by_id) >= IGNORE_INDEX:  # before a list of that many names is built (id 99999999999: all memory)
                raise DataError(
                    f"Names file {path} gives the id {max(by_id)}, but masks hold class ids up to {IGNORE_INDEX - 1} "
                    f"({IGNORE_INDEX} means ignore); number the classes 0, 1, 2, ..."
                )
            by_id.setdefault(0, "background")  # {1: polyp} leaves 0 to background
            names = [by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1)]
        elif isinstance(raw, list):
            names = [str(n) for n in raw]
        else:
            raise DataError(f"Names file {path} has no names: list or mapping; add names: [background, ...].")
    if not names:
        raise DataError(f"Names file {path} lists no class names; add one name per line.")
    return background_first(names, path)


def _json_text(value: object) -> object:
    """A JSON names value as written: true/false as such (not Python's True/False)."""
    return json.dumps(value) if isinstance(value, bool) else value


def find_names_file(dirs: Iterable[Path]) -> Path | None:
    """The first names file in ``dirs``: labelmap.txt, classes.txt, class_names.txt, names.txt (in any case), or a
    YAML/JSON with ``names:`` (JSON above 1 MiB skipped)."""
    for d in dict.fromkeys(dirs):
        entries = sorted(d.iterdir())
        # Any case: "Classes.txt" written on Windows or macOS, whose file systems ignore case, is the names file.
        by_lower_name = {p.name.lower(): p for p in entries if p.is_file()}
        for name in ("labelmap.txt", "classes.txt", "class_names.txt", "names.txt"):
            if (d / name).is_file():
                return d / name
            if name in by_lower_name:
                return by_lower_name[name]
        for p in entries:
            if p.is_file() and not is_hidden(p) and p.suffix.lower() in (".yaml", ".yml", ".json"):
                if p.suffix.lower() == ".json" and p.stat().st_size > 1 << 20:
                    continue  # COCO files and other big JSON: not a names file, and slow to parse
                try:
                    txt = p.read_text(encoding="utf-8-sig")
                    data = json.loads(txt) if p.suffix.lower() == ".json" else yaml.safe_load(txt)
                except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
                    continue
                if isinstance(data, dict) and "names" in data:
                    return p
    return None


def binary_class_names(file_names: list[str] | None) -> list[str]:
    """Names of binary masks: the names file's two, the defaults without one, [] when the file lists another
    number of classes (the caller decides whether that is an error)."""
    if file_names is not None and len(file_names) != 2:
        return []
    return file_names or list(BINARY_NAMES)
