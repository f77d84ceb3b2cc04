"""Shared test helpers: synthetic data writers, tiny model settings, CLI and interruption checks.

A plain module (test files and conftest.py import from it; no test file imports another test file or conftest).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# --- synthetic support data ------------------------------------------------------------------------------------


class SynData:
    """Writers for synthetic images and masks (all arrays H×W or H×W×3 uint8 unless noted)."""

    @staticmethod
    def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
        """H×W bool filled disc."""
        yy, xx = np.mgrid[:h, :w]
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    @staticmethod
    def image(h: int, w: int, seed: int = 0) -> np.ndarray:
        """H×W×3 uint8 smooth random colours (compresses well, survives JPEG)."""
        rng = np.random.default_rng(seed)
        base = rng.integers(40, 200, size=3)
        ramp = np.linspace(0, 50, w, dtype=np.float64)[None, :, None]
        return np.clip(base[None, None, :] + ramp + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)

    @staticmethod
    def save(path: Path, arr: np.ndarray, **kw) -> Path:
        """Save an array with Pillow, creating parent folders (mode from dtype/shape)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, **kw)
        return path

    @staticmethod
    def save_palette(path: Path, mask: np.ndarray, n: int = 256) -> Path:
        """Mode-"P" PNG of H×W uint8 ids with a VOC-like palette."""
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = mask.shape
        img = Image.frombytes("P", (w, h), np.ascontiguousarray(mask, np.uint8).tobytes())
        pal = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(256)]
        img.putpalette([c for rgb in pal for c in rgb])
        img.save(path)
        return path

    def paired(
        self,
        root: Path,
        n: int = 3,
        img_dir: str = "images",
        mask_dir: str = "masks",
        img_ext: str = ".png",
        mask_ext: str = ".png",
        suffix: str = "",
        fg: int = 255,
        size: tuple[int, int] = (32, 40),
    ) -> list[np.ndarray]:
        """Write ``n`` image/mask pairs ``s0..`` with a disc of value ``fg``; returns the H×W bool discs."""
        h, w = size
        discs = []
        for i in range(n):
            d = self.disc(h, w, h / 2, w / 2 - 4 + 4 * i, 6 + i)
            discs.append(d)
            self.save(root / img_dir / f"s{i}{img_ext}", self.image(h, w, i))
            m = d.astype(np.uint8) * fg
            if mask_ext in (".jpg", ".jpeg"):
                self.save(root / mask_dir / f"s{i}{suffix}{mask_ext}", np.repeat(m[..., None], 3, -1), quality=90)
            else:
                self.save(root / mask_dir / f"s{i}{suffix}{mask_ext}", m)
        return discs


# --- named binary and N-way index folders (teacher/student/artifact/train/predict/CLI tests) -----------------


def write_binary_folder(root: Path, names: list[str], size: tuple[int, int] = (48, 56), seed: int = 0) -> Path:
    """``root/images/<name>.png`` + ``root/masks/<name>.png`` (0/255 disc masks, the disc a brighter colour)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for k, name in enumerate(names):
        r = float(rng.uniform(0.18, 0.3) * min(h, w))
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        disc = SynData.disc(h, w, cy, cx, r)
        image = SynData.image(h, w, seed * 100 + k)
        image[disc] = (230, 60, 60)
        SynData.save(root / "images" / f"{name}.png", image)
        SynData.save(root / "masks" / f"{name}.png", disc.astype(np.uint8) * 255)
    return root


def write_multiclass_folder(
    root: Path, names: list[str], classes: list[str], size: tuple[int, int] = (48, 56), seed: int = 0
) -> Path:
    """N-way index folder: grey PNG masks with values 0..N and a ``classes.txt`` (background first).

    Image ``k`` shows the classes ``1 + (k + j) % N`` for ``j < 2`` (each as a disc in its own colour), so every
    image misses at least one class when N ≥ 3 and every class appears in several images.
    """
    rng = np.random.default_rng(seed)
    n = len(classes)
    colours = [(230, 60, 60), (60, 200, 60), (60, 60, 230), (230, 230, 60), (200, 60, 200)]
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(["background", *classes]) + "\n")
    for k, name in enumerate(names):
        image = SynData.image(h, w, seed * 100 + k)
        mask = np.zeros((h, w), np.uint8)
        for j in range(min(2, n)):
            cls = 1 + (k + j) % n
            r = float(rng.uniform(0.12, 0.2) * min(h, w))
            cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            disc = SynData.disc(h, w, cy, cx, r)
            mask[disc] = cls
            image[disc] = colours[(cls - 1) % len(colours)]
        SynData.save(root / "images" / f"{name}.png", image)
        SynData.save(root / "masks" / f"{name}.png", mask)
    return root


TINY_MODEL = {"backbone": "test-resnet", "size": 64}
TINY_TRAIN = {"steps": 2, "episodes_per_step": 1, "polish_steps": 2}


class TinyData:
    """Paths of the session's tiny synthetic folders (see the ``tiny_data`` fixture)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = write_binary_folder(root / "binary_support", [f"s{i}" for i in range(4)], seed=1)
        self.binary_heldout = write_binary_folder(root / "binary_heldout", [f"h{i}" for i in range(3)], seed=2)
        self.multi_classes = ["red", "green", "blue"]
        self.multi = write_multiclass_folder(
            root / "multi_support", [f"m{i}" for i in range(6)], self.multi_classes, seed=3
        )
        self.multi_heldout = write_multiclass_folder(
            root / "multi_heldout", [f"q{i}" for i in range(3)], self.multi_classes, seed=4
        )


def tiny_distill(support: Path, out: Path):
    """A TINY_MODEL / TINY_TRAIN distill run (teacher + student) on ``support``, written to ``out``."""
    from fsdistill import api
    from fsdistill.config import DistillCfg, load_config

    cfg = load_config(
        DistillCfg, None, {"support": support, "out": out, "device": "cpu", "model": TINY_MODEL, "train": TINY_TRAIN}
    )
    return api.distill(cfg, quiet=True)


# --- the real example data (examples/make_examples.py) ---------------------------------------------------------

# The cases make_examples.py always builds (macaque is optional: its source may be unavailable) and the file it
# writes last into a finished case.
REQUIRED_EXAMPLE_CASES = ("nuclei", "brain")
EXAMPLE_COMPLETE_MARKER = ".complete"


def examples_dir() -> Path:
    """Where the real example data lives: ``$FSDISTILL_EXAMPLES``, else ``examples/data`` (scripts/test.sh builds it)."""
    env = os.environ.get("FSDISTILL_EXAMPLES")
    return Path(env) if env else REPO / "examples" / "data"


def examples_missing(root: Path) -> str | None:
    """Why the example data under ``root`` cannot be used (a skip reason), or None when every required case is built."""
    missing = [case for case in REQUIRED_EXAMPLE_CASES if not (root / case / EXAMPLE_COMPLETE_MARKER).is_file()]
    if missing:
        return f"example data not built under {root} ({', '.join(missing)}): run python examples/make_examples.py"
    return None


# --- checks shared by the CLI tests -----------------------------------------------------------------------------


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line starting 'error:', no traceback anywhere; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def interrupt_mask_writes_after(monkeypatch, count: int) -> list[Path]:
    """Make predict's mask writer raise KeyboardInterrupt (Ctrl-C) once ``count`` masks are written.

    Returns the list of written mask paths; call ``monkeypatch.undo()`` to restore the real writer.
    """
    from fsdistill.infer import predictor as predictor_module

    real_write = predictor_module.write_mask
    written: list[Path] = []

    def dies_after_count(out, key, mask, palette, text=None):
        if len(written) == count:
            raise KeyboardInterrupt
        real_write(out, key, mask, palette, text)
        written.append(Path(out.display(key)))

    monkeypatch.setattr(predictor_module, "write_mask", dies_after_count)
    return written


def perturb_head(model, generator) -> None:
    """Add 0.05·N(0, 1) noise (drawn from ``generator``) to every non-backbone parameter of ``model``, so a fresh
    model's outputs depend on all of its head (a fresh decoder starts near-constant)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("backbone."):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def save_plain_artifact(directory: Path, model, cfg) -> Path:
    """Save ``model`` (built from ModelCfg ``cfg``) as an artifact with classes background, a, b, … (grey palette)
    and no training record; returns its directory."""
    from fsdistill.models.build import save_model

    classes = model.num_classes
    return save_model(
        directory,
        model,
        cfg,
        class_names=["background", *"abcdefghijklmnopqrstuvwxyz"[:classes]],
        palette=[(i, i, i) for i in range(classes + 1)],
        train_config={},
        support_info={},
        training={},
    )


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
