"""Shared pytest fixtures.

``syn_*`` fixtures (data tests): build small synthetic support folders on disk with numpy + Pillow, no downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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


@pytest.fixture
def syn_data() -> SynData:
    """Writers for synthetic support data (see :class:`SynData`)."""
    return SynData()


@pytest.fixture
def syn_binary(tmp_path: Path, syn_data: SynData) -> tuple[Path, list[np.ndarray]]:
    """A paired ``images/`` + ``masks/`` folder of 3 PNG pairs with 0/255 disc masks, and the discs."""
    root = tmp_path / "binary"
    return root, syn_data.paired(root)


# ---------------------------------------------------------------------------------------------------------------
# Model-test helpers (teacher/student/artifact/train/predict/CLI tests): named binary and N-way index folders.


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
TINY_TRAIN = {"steps": 2, "episodes_per_step": 1}


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """Tiny synthetic support/held-out folders: binary (4 + 3 images) and 3-class index (6 + 3 images)."""
    return TinyData(tmp_path_factory.mktemp("tiny_data"))


def _tiny_distill(support: Path, out: Path):
    from fsdistill import api
    from fsdistill.config import DistillCfg, load_config

    cfg = load_config(
        DistillCfg, None, {"support": support, "out": out, "device": "cpu", "model": TINY_MODEL, "train": TINY_TRAIN}
    )
    return api.distill(cfg, quiet=True)


@pytest.fixture(scope="session")
def tiny_binary_run(tiny_data: TinyData, tmp_path_factory):
    """A test-resnet/64 px distill run (teacher + student, 2 steps) on the binary tiny folder, trained once."""
    return _tiny_distill(tiny_data.binary, tmp_path_factory.mktemp("runs") / "binary")


@pytest.fixture(scope="session")
def tiny_multi_run(tiny_data: TinyData, tmp_path_factory):
    """A test-resnet/64 px distill run on the 3-class tiny folder, trained once."""
    return _tiny_distill(tiny_data.multi, tmp_path_factory.mktemp("runs") / "multi")


@pytest.fixture(scope="session")
def shaken_multi_student(tiny_multi_run, tmp_path_factory) -> Path:
    """``tiny_multi_run``'s student with its decoder and ConvDist weights shaken (seeded), saved as an artifact.

    Two training steps leave the tiny student predicting background everywhere, which makes any comparison of
    two prediction runs trivially equal. The shake (N(0, 0.1) on every non-backbone parameter) uses the first
    seed under which the student predicts all four classes on a batch of small synthetic images, so the fixture
    does not depend on one seed suiting one decoder layout; the tests that use it assert the four classes too.
    """
    import torch

    from fsdistill.models.build import load_model, save_model

    loaded = load_model(tiny_multi_run.run_dir, kind="student")
    size = loaded.config["input_size"]
    probe = torch.from_numpy(np.stack([SynData.image(size, size, i) for i in range(8)])).permute(0, 3, 1, 2)
    colours = torch.randint(0, 255, (8, 3, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    probe[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = colours  # a square, as in the tests' images
    trained = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    num_labels = len(loaded.config["class_names"])
    for seed in range(64):
        loaded.model.load_state_dict(trained)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in loaded.model.named_parameters():
                if not name.startswith("backbone."):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.1)
            if loaded.model.predict(probe).argmax(1).unique().numel() == num_labels:
                break
    else:
        raise AssertionError("no shake seed in 0..63 makes the tiny student predict every class")
    config = loaded.config
    return save_model(
        tmp_path_factory.mktemp("shaken") / "student",
        loaded.model,
        loaded.model_cfg,
        class_names=config["class_names"],
        palette=[tuple(c) for c in config["palette"]],
        train_config=config["train_config"],
        support_info=config["support"],
        training=config["training"],
    )


@pytest.fixture(scope="session")
def examples_root() -> Path:
    """The real example data (``examples/make_examples.py``): ``$FSDISTILL_EXAMPLES``, else ``examples/data``.

    Skips (never builds or downloads) when the nuclei case is not there.
    """
    import os

    env = os.environ.get("FSDISTILL_EXAMPLES")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / "examples" / "data"
    nuclei = root / "nuclei"
    if not ((nuclei / "support").is_dir() and (nuclei / "heldout").is_dir()):
        pytest.skip(f"example data not built under {root} (run python examples/make_examples.py)")
    return root


def interrupt_mask_writes_after(monkeypatch, count: int) -> list[Path]:
    """Make predict's mask writer raise KeyboardInterrupt (Ctrl-C) once ``count`` masks are written.

    Returns the list of written mask paths; call ``monkeypatch.undo()`` to restore the real writer.
    """
    from fsdistill.infer import predictor as predictor_module

    real_write = predictor_module.write_index_png
    written: list[Path] = []

    def dies_after_count(path, mask, palette):
        if len(written) == count:
            raise KeyboardInterrupt
        real_write(path, mask, palette)
        written.append(path)

    monkeypatch.setattr(predictor_module, "write_index_png", dies_after_count)
    return written
