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
