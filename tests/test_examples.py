"""The real example support folders built by ``examples/make_examples.py`` from PyPI wheels and a
Debian package.

The wheels and the ``mricron-data`` .deb are downloaded once into the cache (``$FSDISTILL_CACHE/wheels``,
else ``~/.cache/fsdistill/wheels``). The tests marked ``examples`` check the examples built into
``$FSDISTILL_EXAMPLES`` (else ``examples/data``; scripts/test.sh builds them first) and rebuild copies
from the cached sources; they are skipped when the examples are not built, and without network and
cached sources (the macaque test alone where only apt-get is missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tifffile", reason="tifffile is needed to read the nuclei TIFFs (dev extra)")
pytest.importorskip("nibabel", reason="nibabel is needed to read the MNI NIfTI files (dev extra)")

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES_DIR))

import make_examples  # noqa: E402

SPLITS = ("support", "heldout")


def _build(out: Path, **kwargs) -> dict[str, Path]:
    try:
        return make_examples.build_examples(out, **kwargs)
    except make_examples.ExampleDataUnavailable as exc:
        pytest.skip(f"example sources cannot be downloaded (offline?): {exc}")


@pytest.fixture(scope="session")
def example_data(examples_root: Path) -> dict[str, Path]:
    """The built cases under ``examples_root`` (a build there skips every complete case)."""
    return _build(examples_root)


@pytest.fixture(scope="session")
def macaque_case(example_data: dict[str, Path]) -> Path:
    """The macaque case; skipped (with the reason) where the mricron-data package cannot be had."""
    if "macaque" in example_data:
        return example_data["macaque"]
    # The default build skipped it: building it by name raises, and _build skips with the reason.
    return _build(example_data["nuclei"].parent, cases=["macaque"])["macaque"]


def _stems(case: Path, split: str, kind: str) -> list[str]:
    return sorted(p.stem for p in (case / split / kind).glob("*.png"))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _check_pairs(case: Path, split: str) -> list[str]:
    images, masks = _stems(case, split, "images"), _stems(case, split, "masks")
    assert images == masks, f"{case.name}/{split}: image and mask names differ"
    return images


@pytest.mark.examples
def test_layout_and_classes(example_data: dict[str, Path]) -> None:
    # A default build leaves out an optional case (macaque) whose source cannot be had.
    assert set(example_data) >= set(make_examples.CASES) - set(make_examples.OPTIONAL_CASES)
    assert set(example_data) <= set(make_examples.CASES)
    expected = {
        "nuclei": "background\nnucleus\n",
        "brain": "background\ngrey_matter\nwhite_matter\n",
        "macaque": "background\nstructure_55\nstructure_58\nstructure_10\nstructure_5\nstructure_162\n",
    }
    for name, case in example_data.items():
        assert case.name == name
        assert (case / make_examples.COMPLETE_MARKER).is_file()
        assert (case / "source.json").is_file()
        for split in SPLITS:
            assert (case / split / "classes.txt").read_text() == expected[name]
            _check_pairs(case, split)
        # No temporary or old build folders left behind.
        assert not [p for p in case.parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.examples
def test_nuclei(example_data: dict[str, Path]) -> None:
    case = example_data["nuclei"]
    support, heldout = _check_pairs(case, "support"), _check_pairs(case, "heldout")
    assert len(support) == 8 and len(heldout) == 8
    assert not set(support) & set(heldout)
    tiles = {}
    for split, names in (("support", support), ("heldout", heldout)):
        for stem in names:
            m = re.fullmatch(r"dsb2018_r(\d)c(\d)", stem)
            assert m, stem
            tiles[stem] = (split, int(m.group(1)), int(m.group(2)))
            img = Image.open(case / split / "images" / f"{stem}.png")
            mask = Image.open(case / split / "masks" / f"{stem}.png")
            assert img.size == mask.size == (128, 128)
            assert img.mode in ("L", "RGB") and mask.mode == "L"
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values == {0, 255}, f"{split}/{stem}: mask values {values}"
            assert np.asarray(img).std() > 5, f"{split}/{stem}: flat image"
    # Spatial split: every support tile lies in a grid row above every held-out tile.
    rows = {s: {r for sp, r, _ in tiles.values() if sp == s} for s in SPLITS}
    assert max(rows["support"]) < min(rows["heldout"])
    assert len(set(tiles.values())) == 16  # 16 distinct, non-overlapping grid cells


@pytest.mark.examples
def test_brain(example_data: dict[str, Path]) -> None:
    case = example_data["brain"]
    support, heldout = _check_pairs(case, "support"), _check_pairs(case, "heldout")
    assert len(support) == 20 and len(heldout) == 12
    assert not set(support) & set(heldout)
    z = {}
    sizes = set()
    for split, names in (("support", support), ("heldout", heldout)):
        z[split] = sorted(int(re.fullmatch(r"mni152_z(\d{3})", s).group(1)) for s in names)
        for stem in names:
            img = Image.open(case / split / "images" / f"{stem}.png")
            mask = Image.open(case / split / "masks" / f"{stem}.png")
            assert img.mode == "L" and mask.mode == "P"
            assert img.size == mask.size
            sizes.add(img.size)
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values == {0, 1, 2}, f"{split}/{stem}: mask values {values}"
    assert sizes == {(197, 233)}  # (width, height): 197 x-voxels by 233 y-voxels, anterior up
    # Separate slabs: no held-out slice within 10 slices of any support slice.
    gaps = [abs(a - b) for a in z["support"] for b in z["heldout"]]
    assert min(gaps) > 10
    assert max(z["support"]) < min(z["heldout"])
    # The unlabeled pool: the support slab's other slices, none of them a support or near a held-out slice.
    pool = [int(re.fullmatch(r"mni152_z(\d{3})", s).group(1)) for s in _check_pairs(case, "pool")]
    assert len(pool) == 38 and not set(pool) & set(z["support"])
    assert min(abs(a - b) for a in pool for b in z["heldout"]) > 10


@pytest.mark.examples
def test_macaque(macaque_case: Path) -> None:
    case = macaque_case
    support, heldout = _check_pairs(case, "support"), _check_pairs(case, "heldout")
    assert len(support) == 10 and len(heldout) == 40
    n_classes = len(make_examples.MACAQUE_CLASSES)
    y: dict[str, list[int]] = {}
    pixels = {s: np.zeros(n_classes, np.int64) for s in SPLITS}
    present = {s: np.zeros(n_classes, np.int64) for s in SPLITS}
    for split, names in (("support", support), ("heldout", heldout)):
        y[split] = sorted(int(re.fullmatch(r"inia19_y(\d{3})", s).group(1)) for s in names)
        for stem in names:
            img = Image.open(case / split / "images" / f"{stem}.png")
            mask = Image.open(case / split / "masks" / f"{stem}.png")
            assert img.mode == "L" and mask.mode == "P"
            assert img.size == mask.size == (131, 119)
            assert np.asarray(img).std() > 5, f"{split}/{stem}: flat image"
            m = np.asarray(mask)
            assert m.max() < n_classes, f"{split}/{stem}: mask values {np.unique(m)}"
            assert m.any(), f"{split}/{stem}: no structure"
            hist = np.bincount(m.ravel(), minlength=n_classes)
            pixels[split] += hist
            present[split] += hist > 0
    # Sparse supports: every 10th slice; held-out slices at least 3 slices from every support.
    assert np.all(np.diff(y["support"]) == 10)
    assert min(abs(h - s) for h in y["heldout"] for s in y["support"]) >= 3
    # The unlabeled pool: other slices of the range, at least 2 slices from every held-out one.
    pool = [int(re.fullmatch(r"inia19_y(\d{3})", s).group(1)) for s in _check_pairs(case, "pool")]
    assert len(pool) >= 20 and not set(pool) & (set(y["support"]) | set(y["heldout"]))
    assert min(abs(p - h) for p in pool for h in y["heldout"]) >= 2
    assert (case / "pool" / "classes.txt").read_text() == (case / "support" / "classes.txt").read_text()
    # Sizes span ~4 % down to < 0.5 %; the rarest (smallest) class is in only 2-3 supports.
    total = pixels["support"] + pixels["heldout"]
    fraction = total[1:] / total.sum()
    assert fraction.max() > 0.03 and fraction.min() < 0.005
    rarest = 1 + int(np.argmin(fraction))
    assert 2 <= present["support"][rarest] <= 3
    assert (present["support"][1:] >= 2).all() and (present["heldout"][1:] >= 3).all()
    # source.json reports what the files hold.
    info = json.loads((case / "source.json").read_text())
    assert info["classes"] == list(make_examples.MACAQUE_CLASSES)
    for k, name in enumerate(make_examples.MACAQUE_CLASSES[1:], 1):
        stats = info["class_stats"][name]
        assert stats["supports"] == present["support"][k]
        assert stats["heldout_images"] == present["heldout"][k]
        assert stats["pixel_fraction"] == pytest.approx(total[k] / total.sum(), abs=1e-6)


def test_sagittal_split_keeps_mirrored_neighbours_out() -> None:
    # Left range 20..60, right range 110..150, mirror 169 (x <-> 169 - x); supports every 7th left slice.
    support, heldout, pool = make_examples._sagittal_split((20, 60), (110, 150), 169)
    assert support == list(range(22, 61, 7))
    gap = make_examples.MACAQUE_MIN_GAP
    for x in heldout:
        seen_as = x if x < 85 else 169 - x
        assert min(abs(seen_as - s) for s in support) >= gap, x
    # Both hemispheres hold out; a left slice is support, held out or pool, at most once; a pool slice lies at
    # least MACAQUE_POOL_GAP from every held-out slice (seen at its mirror): one slice apart is a near-copy.
    assert any(x < 85 for x in heldout) and any(x >= 85 for x in heldout)
    left = support + [x for x in heldout if x < 85] + pool
    assert len(left) == len(set(left)) and set(left) <= set(range(20, 61)) and pool
    seen = [x if x < 85 else 169 - x for x in heldout]
    assert all(min(abs(p - h) for h in seen) >= make_examples.MACAQUE_POOL_GAP for p in pool)
    near = [x for x in range(20, 61) if min(abs(x - h) for h in seen) < make_examples.MACAQUE_POOL_GAP]
    assert sorted(set(range(20, 61)) - set(left)) == [x for x in near if x not in support and x not in heldout]


@pytest.mark.examples
def test_macaque_sagittal_check_case(macaque_case: Path, tmp_path: Path) -> None:
    # Built only by name; the same source as macaque (so it is skipped where macaque is).
    assert "macaque-sagittal" not in make_examples.CASES
    case = _build(tmp_path, cases=["macaque-sagittal"])["macaque-sagittal"]
    support, heldout = _check_pairs(case, "support"), _check_pairs(case, "heldout")
    assert len(support) == 8 and len(heldout) == 32
    names = list(make_examples.SAGITTAL_CLASSES)
    assert (case / "support" / "classes.txt").read_text() == "\n".join(names) + "\n"
    assert not set(make_examples.SAGITTAL_STRUCTURES) & set(make_examples.MACAQUE_STRUCTURES)
    info = json.loads((case / "source.json").read_text())
    stats = info["class_stats"]
    assert [stats[n]["supports"] for n in names[1:]] == [7, 7, 4, 3, 3]
    assert min(st["heldout_images"] for st in stats.values()) >= 3
    assert 0.015 < stats["structure_193"]["pixel_fraction"] and stats["structure_148"]["pixel_fraction"] < 0.002
    mask = np.asarray(Image.open(case / "heldout" / "masks" / f"{heldout[0]}.png"))
    assert mask.shape == (119, 163) and mask.max() < len(names)


def test_optional_case_unavailable_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No data needed: the builders are stand-ins; macaque's source "cannot be had".
    def fake(case_dir: Path, cache: Path) -> dict:
        (case_dir / "x.txt").write_text("x")
        return {}

    def unavailable(case_dir: Path, cache: Path) -> dict:
        raise make_examples.ExampleDataUnavailable("apt-get is not installed, so no package")

    for name in ("nuclei", "brain"):
        monkeypatch.setitem(make_examples._BUILDERS, name, (fake, lambda info: "built"))
    monkeypatch.setitem(make_examples._BUILDERS, "macaque", (unavailable, lambda info: ""))
    built = make_examples.build_examples(tmp_path, verbose=True)
    assert set(built) == {"nuclei", "brain"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("macaque")] == [
        "macaque: skipped, its source is unavailable: apt-get is not installed, so no package"
    ]
    assert not (tmp_path / "macaque").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".macaque.")]
    # Asked for by name, an unavailable case fails: the build and the CLI (exit 2).
    with pytest.raises(make_examples.ExampleDataUnavailable):
        make_examples.build_examples(tmp_path, cases=["macaque"])
    assert make_examples.main(["--out", str(tmp_path), "--case", "macaque"]) == 2
    assert "apt-get is not installed" in capsys.readouterr().err
    # The default CLI run skips it and succeeds.
    assert make_examples.main(["--out", str(tmp_path)]) == 0


def test_fetch_deb_without_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = make_examples.shutil.which
    monkeypatch.setattr(
        make_examples.shutil,
        "which",
        lambda cmd, *a, **k: None if cmd == "apt-get" else real_which(cmd, *a, **k),
    )
    if real_which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    with pytest.raises(make_examples.ExampleDataUnavailable, match="apt-get is not installed"):
        make_examples.fetch_deb("mricron-data", tmp_path / "empty-cache", ["x"])


@pytest.mark.examples
def test_complete_cases_are_skipped(example_data: dict[str, Path]) -> None:
    out = example_data["nuclei"].parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _build(out)
    assert again == example_data
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.examples
def test_rebuild_is_deterministic(example_data: dict[str, Path], tmp_path: Path) -> None:
    # Same cached wheels, another folder, forced: every file must come out byte-identical.
    rebuilt = _build(tmp_path / "rebuilt", force=True)
    for name, case in example_data.items():
        assert _tree_hashes(rebuilt[name]) == _tree_hashes(case), name


@pytest.mark.examples
def test_incomplete_case_is_rebuilt(example_data: dict[str, Path], tmp_path: Path) -> None:
    stale = tmp_path / "nuclei"
    (stale / "support" / "images").mkdir(parents=True)
    (stale / "support" / "images" / "junk.png").write_bytes(b"not a png")  # no .complete marker
    built = _build(tmp_path, cases=["nuclei"])
    assert not (built["nuclei"] / "support" / "images" / "junk.png").exists()
    assert _tree_hashes(built["nuclei"]) == _tree_hashes(example_data["nuclei"])


@pytest.mark.examples
def test_case_of_an_older_build_is_rebuilt(example_data: dict[str, Path], tmp_path: Path) -> None:
    old = tmp_path / "nuclei"
    shutil.copytree(example_data["nuclei"], old)
    (old / "stale.txt").write_text("from an older build")
    (old / make_examples.COMPLETE_MARKER).write_text("complete\n")  # the marker before the pool split
    built = _build(tmp_path, cases=["nuclei"])
    assert not (built["nuclei"] / "stale.txt").exists()
    assert _tree_hashes(built["nuclei"]) == _tree_hashes(example_data["nuclei"])


@pytest.mark.examples
def test_script_cli_skips_complete_cases(example_data: dict[str, Path]) -> None:
    out = example_data["nuclei"].parent
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / "make_examples.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    # One line per case: complete and skipped, or (macaque) skipped as unavailable.
    assert len(lines) == len(make_examples.CASES) and all("skipped" in line for line in lines)


def test_script_refuses_a_file_as_cache_or_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--cache naming a file was a FileExistsError traceback."""
    afile = tmp_path / "cachefile"
    afile.write_text("hi")
    for option in ("--cache", "--out"):
        assert make_examples.main([option, str(afile)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {option} {afile} is a file; give a folder."


def test_script_interrupted_says_how_to_finish(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C printed a KeyboardInterrupt traceback; complete cases are kept, so a rerun finishes the rest."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(make_examples, "build_examples", interrupted)
    assert make_examples.main(["--out", str(tmp_path / "ex")]) == 130
    assert capsys.readouterr().err.strip() == "Interrupted; run the same command again to build what is missing."


def _wheel(path: Path, members: dict[str, bytes], damage: str | None = None) -> Path:
    """A stored (uncompressed) zip of ``members``; ``damage``: one byte of that member flipped behind an intact zip
    directory, so only its CRC tells."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    if damage is not None:
        raw = bytearray(path.read_bytes())
        at = bytes(raw).index(members[damage])
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
    return path


def test_a_cached_wheel_with_a_damaged_member_is_fetched_again(tmp_path: Path, monkeypatch) -> None:
    """A bad CRC behind an intact zip directory passed the member-name check: every build failed on it."""
    source = make_examples.WheelSource("fakepkg", "1.0")
    member, payload = "fakepkg/data.bin", b"real data " * 50
    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = _wheel(cache / "fakepkg-1.0-py3-none-any.whl", {member: payload}, damage=member)

    downloads = []

    def pip_download(cmd, **kwargs):  # what pip does: a whole wheel into the cache
        downloads.append(cmd)
        _wheel(cache / "fakepkg-1.0-py3-none-any.whl", {member: payload})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(make_examples.subprocess, "run", pip_download)
    fetched = make_examples.fetch_wheel(source, cache, (member,))
    assert len(downloads) == 1 and fetched == damaged
    with zipfile.ZipFile(fetched) as zf:
        assert zf.testzip() is None and zf.read(member) == payload


def test_a_wheel_damaged_after_its_check_is_one_sentence(tmp_path: Path, monkeypatch, capsys) -> None:
    """Reading a damaged member while building ended in a zipfile.BadZipFile traceback."""
    member = make_examples.NUCLEI_IMAGE
    wheel = _wheel(tmp_path / "stardist.whl", {member: b"x" * 400, make_examples.NUCLEI_MASK: b"y" * 400}, member)
    monkeypatch.setattr(make_examples, "fetch_wheel", lambda *args, **kwargs: wheel)
    with pytest.raises(make_examples.ExampleDataUnavailable, match="unreadable"):
        make_examples._build_nuclei(tmp_path / "case", tmp_path)
    assert make_examples.main(["--out", str(tmp_path / "out"), "--case", "nuclei"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {wheel} is unreadable") and "Traceback" not in err


def test_a_folder_that_cannot_be_made_is_one_sentence(tmp_path: Path, capsys) -> None:
    """An --out (or cache) that cannot be created or written was an OSError traceback."""
    (tmp_path / "afile").write_text("hi")
    assert make_examples.main(["--out", str(tmp_path / "afile" / "sub"), "--case", "nuclei"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'afile' / 'sub'}: Not a directory"


def test_case_names_are_built_once_each_and_stale_builds_removed(tmp_path: Path, monkeypatch) -> None:
    """A case named twice was built twice, a str was split into one-letter names, and the temporary folders of a
    killed build stayed forever."""
    built = []

    def fake(case_dir: Path, cache: Path) -> dict:
        built.append(case_dir)
        return {}

    monkeypatch.setitem(make_examples._BUILDERS, "nuclei", (fake, lambda info: "built"))
    stale, running = tmp_path / ".nuclei.killed01.tmp", tmp_path / ".nuclei.running.tmp"
    for folder in (stale, running):
        (folder / "support").mkdir(parents=True)
    an_hour_and_more = time.time() - make_examples.STALE_BUILD_S - 60
    os.utime(stale, (an_hour_and_more, an_hour_and_more))
    assert make_examples.build_examples(tmp_path, tmp_path, cases=["nuclei", "nuclei"]) == {
        "nuclei": tmp_path / "nuclei"
    }
    assert len(built) == 1
    assert not stale.exists() and running.exists()  # a younger one may be a build running now
    assert make_examples.build_examples(tmp_path, tmp_path, force=True, cases="nuclei") == {
        "nuclei": tmp_path / "nuclei"
    }
    assert len(built) == 2
