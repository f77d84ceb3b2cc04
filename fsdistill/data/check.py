"""Validate a support folder and summarise it (``fsdistill check``): every pair is decoded, so a broken file is
named before hours of training."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsdistill.data.discover import discover
from fsdistill.data.layouts import relative_name
from fsdistill.data.masks import IGNORE_INDEX, NO_BACKGROUND_WARNING
from fsdistill.data.support_index import SupportIndex, file_sha256
from fsdistill.errors import DataError

__all__ = [
    "BrokenPairsError",
    "CheckReport",
    "check_support",
    "TINY_FRACTION",
    "MIN_IMAGES_PER_CLASS",
    "MAX_REPORTED_PROBLEMS",
]

# Under 0.1% of an image is about 12×12 px at 384×384, less than a stride-32 feature cell: easily lost.
TINY_FRACTION = 0.001
# Few-shot adaptation needs one example to learn from and another to check against.
MIN_IMAGES_PER_CLASS = 2
_EXAMPLES = 3  # file names quoted in a warning
# Broken pairs listed by one check run: enough to fix a batch at once, few enough to read on one screen.
MAX_REPORTED_PROBLEMS = 20


@dataclass
class CheckReport:
    """What ``fsdistill check`` reports. Paths are relative to ``root``; fractions are of labelled pixels
    (ignore excluded) over all images."""

    root: str
    layout: str
    mask_kind: str
    num_pairs: int
    class_names: list[str]
    names_source: str
    orphan_images: list[str] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)
    images_per_class: dict[str, int] = field(default_factory=dict)
    pixels_per_class: dict[str, float] = field(default_factory=dict)
    tiny_per_class: dict[str, int] = field(default_factory=dict)  # images where the class is present but tiny
    ignore_fraction: float = 0.0
    empty_masks: list[str] = field(default_factory=list)  # keys of masks without any foreground class
    min_width: int = 0
    max_width: int = 0
    min_height: int = 0
    max_height: int = 0
    warnings: list[str] = field(default_factory=list)
    broken_pairs: list[str] = field(default_factory=list)  # why each unusable pair cannot be used

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (plain str/int/float/list/dict)."""
        return asdict(self)

    def to_text(self) -> str:
        """A human-readable report of about 10-20 lines."""
        lines = [
            f"Support folder: {self.root}",
            f"Layout: {self.layout}, masks: {self.mask_kind}, pairs: {self.num_pairs}",
        ]
        if self.num_pairs and len(self.broken_pairs) == self.num_pairs:
            # No pair could be read: sizes and pixel figures of none would be zeros that look measured.
            lines.append(f"Classes ({len(self.class_names) - 1} + background, names from {self.names_source}): "
                         f"{', '.join(self.class_names)}")  # fmt: skip
            lines.append(f"Broken pairs: all {self.num_pairs}, so there is nothing to measure.")
            lines += [f"  - {w}" for w in self.warnings]
            return "\n".join(lines)
        lines += [
            f"Image sizes: width {self.min_width}-{self.max_width} px, height {self.min_height}-{self.max_height} px",
            f"Classes ({len(self.class_names) - 1} + background, names from {self.names_source}):",
        ]
        wid = max(len(n) for n in self.class_names)
        for name in self.class_names:
            tiny = self.tiny_per_class.get(name, 0)
            extra = f", tiny in {tiny}" if tiny else ""
            lines.append(
                f"  {name:<{wid}}  {self.images_per_class.get(name, 0):>5} images  "
                f"{100 * self.pixels_per_class.get(name, 0.0):6.2f}% of pixels{extra}"
            )
        if self.ignore_fraction:
            lines.append(f"Ignored pixels (255): {100 * self.ignore_fraction:.2f}%")
        for what, items in (("Images without masks", self.orphan_images), ("Masks without images", self.orphan_masks)):
            if items:
                more = f", ... (+{len(items) - _EXAMPLES})" if len(items) > _EXAMPLES else ""
                lines.append(f"{what}: {len(items)} ({', '.join(items[:_EXAMPLES])}{more})")
        if self.empty_masks:
            lines.append(f"Empty masks: {len(self.empty_masks)}")
        lines.append(f"Warnings: {len(self.warnings)}" if self.warnings else "No warnings.")
        lines += [f"  - {w}" for w in self.warnings]
        if self.broken_pairs:  # each is named by the error that follows the report
            lines.append(f"Broken pairs: {len(self.broken_pairs)} (the figures above are of the other pairs)")
        return "\n".join(lines)


class BrokenPairsError(DataError):
    """Some pairs of a support folder cannot be used; ``report`` is the check of the others, with
    ``broken_pairs`` filled (``fsdistill check`` prints and writes it before the error)."""

    def __init__(self, message: str, report: CheckReport) -> None:
        super().__init__(message)
        self.report = report


def _copied_images(index: SupportIndex) -> list[tuple[str, str]]:
    """(key, key of the earlier sample it copies) for each support whose image file has the same bytes as an
    earlier one's (files of another size are not read)."""
    first_by_hash: dict[tuple[int, str], str] = {}
    copies = []
    sizes = [s.image_path.stat().st_size if s.image_path.is_file() else -1 for s in index.samples]
    counts = Counter(sizes)
    for s, size in zip(index.samples, sizes):
        if size < 0 or counts[size] < 2:
            continue
        try:
            digest = (size, file_sha256(s.image_path))
        except DataError:
            continue  # reported as a broken pair
        if digest in first_by_hash:
            copies.append((s.key, first_by_hash[digest]))
        else:
            first_by_hash[digest] = s.key
    return copies


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")


def _problems_message(problems: list[str], pairs: int, root: Path) -> str:
    """One problem: its own sentence. Several: a sentence that counts them, then one line each, up to a cap."""
    if len(problems) == 1:
        return problems[0]
    lines = [f"{len(problems)} of {pairs} pairs in {root} cannot be used; fix or remove each file below, then run "
             "check again:"]  # fmt: skip
    lines += [f"  - {p}" for p in problems[:MAX_REPORTED_PROBLEMS]]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"  - and {len(problems) - MAX_REPORTED_PROBLEMS} more")
    return "\n".join(lines)


def check_support(root: Path | str, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Discover a support folder, decode every pair and report what was found; ``progress(done, total)`` is
    called after each pair (the library never prints).

    Raises:
        DataError: nothing usable (missing/empty folder, no pairs, all masks empty). BrokenPairsError: broken
            pairs (listed, up to ``MAX_REPORTED_PROBLEMS``), with the report of the other pairs.
    """
    index = discover(root)
    names = index.class_names
    k = len(names)
    pixels = np.zeros(k, np.int64)
    keys_with: list[list[str]] = [[] for _ in range(k)]  # per class: the images it is present in
    tiny_keys: list[list[str]] = [[] for _ in range(k)]  # per class: the images it is present but tiny in
    ignored = total = 0
    widths: list[int] = []
    heights: list[int] = []
    empty: list[str] = []
    only_ignore: list[str] = []  # no class pixel but some 255: often a 0/255 binary mask in an index set
    n = len(index)
    problems: list[str] = []  # every broken pair, so one check run lists them all, not the first one only
    for i, s in enumerate(index.samples):
        try:
            mask = index.load_pair(i)[1]  # the image is not kept: one in memory at a time
        except DataError as exc:
            problems.append(str(exc))
        else:
            h, w = mask.shape
            widths.append(w)
            heights.append(h)
            counts = np.bincount(mask.ravel(), minlength=256)
            ignored += int(counts[IGNORE_INDEX])
            total += h * w
            c = counts[:k]
            pixels += c
            for cid in np.flatnonzero(c):
                keys_with[cid].append(s.key)
                if cid and c[cid] < TINY_FRACTION * h * w:
                    tiny_keys[cid].append(s.key)
            if not c[1:].any():
                empty.append(s.key)
                if counts[IGNORE_INDEX]:
                    only_ignore.append(s.key)
        if progress is not None:
            progress(i + 1, n)

    if not problems and n and len(empty) == n:
        raise DataError(
            f"All {n} masks in {index.root} are empty: no pixel has a foreground class (e.g. {_examples(empty)}); "
            f"{index.empty_masks_hint()}."
        )

    warnings = list(index.warnings)
    if empty:
        warnings.append(
            f"{len(empty)} of {n} masks are empty (no foreground class), e.g. {_examples(empty)}; they only teach "
            "background."
        )
    if n and len(problems) < n and not keys_with[0] and len(empty) < n:
        warnings.append(NO_BACKGROUND_WARNING)
    copies = _copied_images(index)
    if copies:
        warnings.append(
            f"{len(copies)} support image(s) are byte-for-byte copies of others (e.g. {copies[0][0]} = "
            f"{copies[0][1]}): a copy teaches nothing new, and distill's leave-one-out check scores it against "
            "itself; keep one of each."
        )
    if only_ignore:
        warnings.append(
            f"{len(only_ignore)} masks have no class pixels but some ignore (255) pixels, e.g. "
            f"{_examples(only_ignore)}; if 255 marks the object there, repaint it with its class id."
        )
    labelled = max(total - ignored, 1)
    # With no readable pair, "appears in no mask" would be said of every class: the broken pairs say what is wrong.
    for cid in range(1, k if len(problems) < n else 1):
        name, seen, tiny = names[cid], len(keys_with[cid]), len(tiny_keys[cid])
        if not seen:
            # The fix depends on where the name came from: a names file, a class folder, COCO categories.
            warnings.append(
                f"Class {name!r} ({index.names_source}) appears in no mask, so adapt and distill refuse the folder; "
                f"add images that show it or {index.drop_class_hint([name])}."
            )
        elif seen < MIN_IMAGES_PER_CLASS:
            warnings.append(
                f"Class {name!r} appears in only {seen} image ({keys_with[cid][0]}); few-shot adaptation "
                f"needs at least {MIN_IMAGES_PER_CLASS} images per class."
            )
        if tiny:
            warnings.append(
                f"Class {name!r} covers less than {100 * TINY_FRACTION:g}% of the image in {tiny} of its "
                f"{seen} images (e.g. {_examples(tiny_keys[cid])}); such small objects may vanish at the "
                "model's input size, so crop closer or use a larger --size."
            )
    base = index.root if index.root.is_dir() else index.data_root or index.root  # a zip: its unpacked folder
    report = CheckReport(
        root=str(index.root),
        layout=index.layout,
        mask_kind=index.mask_kind,
        num_pairs=n,
        class_names=list(names),
        names_source=index.names_source,
        orphan_images=[relative_name(p, base) for p in index.orphan_images],
        orphan_masks=[relative_name(p, base) for p in index.orphan_masks],
        images_per_class={names[c]: len(keys_with[c]) for c in range(k)},
        pixels_per_class={names[c]: float(pixels[c]) / labelled for c in range(k)},
        tiny_per_class={names[c]: len(tiny_keys[c]) for c in range(1, k) if tiny_keys[c]},
        ignore_fraction=float(ignored) / max(total, 1),
        empty_masks=empty,
        min_width=min(widths, default=0),
        max_width=max(widths, default=0),
        min_height=min(heights, default=0),
        max_height=max(heights, default=0),
        warnings=warnings,
        broken_pairs=problems,
    )
    if problems:
        raise BrokenPairsError(_problems_message(problems, n, index.root), report)
    return report
