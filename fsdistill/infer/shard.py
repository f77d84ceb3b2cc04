"""``--shard I/N``: split one predict (or suggest) job over N independent processes, e.g. a SLURM job array.

Image k of the sorted input list goes to shard ``k mod N``. Shards write into one folder, each its own
``predictions.shard-I-of-N.csv``; the one that finishes last merges them into ``predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fsdistill.errors import ConfigError
from fsdistill.storage import Storage

__all__ = ["CSV_HEADER", "PREDICTIONS_CSV", "Shard", "parse_shard"]

T = TypeVar("T")

# predict's table of class pixels per image, and its columns (a shard's table has the same columns).
PREDICTIONS_CSV = "predictions.csv"
CSV_HEADER = ["image", "width", "height", "class", "pixels", "fraction"]

_SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 ≤ index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"--shard {self.index}/{self.count} is out of range; use I/N with N >= 1 and 0 <= I < N (for example "
                "0/4)."
            )

    def __repr__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: list[T]) -> list[T]:
        """This shard's items of the full sorted list: those at positions ``k`` with ``k mod count == index``."""
        return items[self.index :: self.count]

    def csv_name(self, index: int | None = None) -> str:
        """This shard's table (or shard ``index``'s of the same count)."""
        return f"predictions.shard-{self.index if index is None else index}-of-{self.count}.csv"


def parse_shard(value: str | Shard | None) -> Shard | None:
    """``"I/N"`` (or a Shard) → :class:`Shard`; None → None.

    Raises:
        ConfigError: not of the form I/N, or I outside 0..N-1.
    """
    if value is None or isinstance(value, Shard):
        return value
    match = _SHARD.match(str(value))
    if match is None:
        raise ConfigError(f"--shard '{value}' is not of the form I/N; for example 0/4 (the first of 4 shards).")
    return Shard(int(match.group(1)), int(match.group(2)))


def _image_key(source: str) -> str:
    """A table's image column as one spelling: the absolute path of a local file (from this process's folder: job
    arrays start their shards in one), an object-store URI as it is."""
    return source if "://" in source else os.path.abspath(source)


def merge_shard_tables(out: Storage, shard: Shard, sources: list[str]) -> Path | str | None:
    """Merge the N shard tables into ``predictions.csv`` in ``out`` when all are there, ordering the rows by
    ``sources`` (the unsharded image list), and return where it is (else None). Two shards finishing at once
    write the same bytes, each whole."""
    tables = [shard.csv_name(i) for i in range(shard.count)]
    if not all(out.is_file(t) for t in tables):
        return None
    header: list[str] | None = None
    rows: dict[str, list[list[str]]] = {}
    # By the image's absolute path: a shard rerun with another spelling of the inputs (./images, an absolute
    # path) lists the same images under other strings, and its rows were dropped from the merge without a word.
    # Rows of images no longer in the inputs (an older run's table) are left out.
    for table in tables:
        reader = csv.reader(io.StringIO(out.read_bytes(table).decode("utf-8", "surrogateescape"), newline=""))
        header = next(reader, None) or header
        for row in reader:
            rows.setdefault(_image_key(row[0]), []).append(row)
    text = io.StringIO(newline="")
    # csv.writer writes back the same bytes the shards' writers wrote from the same strings.
    writer = csv.writer(text)
    writer.writerow(header or CSV_HEADER)
    for source in sources:
        writer.writerows(rows.get(_image_key(source), ()))
    out.write_bytes(PREDICTIONS_CSV, text.getvalue().encode("utf-8", "surrogateescape"), unique=True)
    return out.location(PREDICTIONS_CSV)
