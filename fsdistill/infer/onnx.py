"""Run an exported student with onnxruntime: only the ``.onnx`` file and its ``fsdistill.*`` metadata_props
(input size, normalisation, class names, palette; see :meth:`OnnxMetadata.to_props`). :class:`OnnxRunner` plugs
into :func:`fsdistill.infer.predictor.predict_files`, which decodes, upsamples and writes as for PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fsdistill.errors import CheckpointError, DependencyError, DeviceError
from fsdistill.infer.predictor import Runner
from fsdistill.runtime import DEVICE_CHOICES

__all__ = [
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxMetadata",
    "OnnxRunner",
    "default_onnx_path",
    "require_export_packages",
    "ort_session",
]

ONNX_FORMAT = "fsdistill-onnx"
ONNX_FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_PREFIX = "fsdistill."


def require_export_packages(*names: str) -> list[ModuleType]:
    """Import the optional export packages (``onnx``, ``onnxruntime``, ...), or raise one DependencyError that
    names every missing one and the ``[export]`` extra."""
    import importlib

    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DependencyError(
            f"ONNX export and the onnx backend need {', '.join(missing)}, which {verb} not installed; run: "
            'pip install "fsdistill[export]"'
        )
    return modules


def default_onnx_path(artifact_dir: Path) -> Path:
    """Where ``fsdistill export`` writes a student artifact's ONNX file by default: ``RUN/student.onnx``."""
    artifact_dir = Path(artifact_dir)
    if artifact_dir.name in ("", ".."):  # --model . (or ..): the folder's own name
        artifact_dir = artifact_dir.resolve()
    return artifact_dir.with_name(f"{artifact_dir.name}.onnx")


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about its input and output (from its ``fsdistill.*`` metadata_props)."""

    input_size: int
    dynamic_hw: bool
    size_multiple: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    config_sha256: str
    version: str
    weights_sha256: str = ""  # exports of earlier versions do not record it
    category_ids: list[int] | None = None  # COCO category ids of classes 1..N (a model trained on a COCO folder)

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path) -> OnnxMetadata:
        """Parse ``fsdistill.*`` metadata (as onnxruntime's ``custom_metadata_map`` gives it).

        Raises:
            CheckpointError: a file not exported by fsdistill, from a newer format, or with damaged metadata.
        """
        get = {k[len(_PREFIX) :]: v for k, v in props.items() if k.startswith(_PREFIX)}
        if get.get("format") != ONNX_FORMAT:
            raise CheckpointError(
                f"{path} was not exported by fsdistill (no fsdistill metadata); export it with "
                "fsdistill export --model RUN, or predict with the PyTorch artifact."
            )
        try:
            if int(get["format_version"]) > ONNX_FORMAT_VERSION:
                raise CheckpointError(
                    f"{path} was exported by fsdistill {get.get('version')} (ONNX format {get['format_version']}); "
                    "upgrade fsdistill to run it."
                )
            return cls(
                input_size=int(get["input_size"]),
                dynamic_hw=get.get("dynamic_hw") == "true",
                size_multiple=int(get.get("size_multiple", "32")),
                mean=tuple(float(v) for v in json.loads(get["mean"])),
                std=tuple(float(v) for v in json.loads(get["std"])),
                class_names=[str(n) for n in json.loads(get["class_names"])],
                palette=[tuple(int(v) for v in c) for c in json.loads(get["palette"])],
                config_sha256=get.get("config_sha256", ""),
                weights_sha256=get.get("weights_sha256", ""),
                version=get.get("version", ""),
                category_ids=[int(v) for v in json.loads(get["category_ids"])] if "category_ids" in get else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{path} has damaged fsdistill metadata ({type(exc).__name__}: {exc}); export it again."
            ) from None

    @staticmethod
    def to_props(
        *,
        input_size: int,
        dynamic_hw: bool,
        size_multiple: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: list[str],
        palette: list[tuple[int, int, int]],
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The ``fsdistill.*`` metadata_props of an export (str → str, lists as JSON)."""
        from fsdistill import __version__

        props = {
            "format": ONNX_FORMAT,
            "format_version": str(ONNX_FORMAT_VERSION),
            "version": __version__,
            "input_size": str(int(input_size)),
            "dynamic_hw": "true" if dynamic_hw else "false",
            "size_multiple": str(int(size_multiple)),
            "mean": json.dumps([float(v) for v in mean]),
            "std": json.dumps([float(v) for v in std]),
            "class_names": json.dumps(list(class_names)),
            "palette": json.dumps([[int(v) for v in c] for c in palette]),
            "input": (
                f"{INPUT_NAME}: float32 Bx3xHxW RGB; resize each image to {input_size}x{input_size} (no aspect "
                f"preservation; cv2.resize with INTER_AREA if {input_size} < min(H, W), else INTER_LINEAR), scale "
                "to [0, 1], then (x - mean) / std per channel"
            ),
            "output": (
                f"{OUTPUT_NAME}: float32 Bx(N+1)xhxw logits (background, then class_names[1:]); upsample "
                "bilinearly (align_corners=False) to the image's own size, then argmax over channels"
            ),
            **(extra or {}),
        }
        return {f"{_PREFIX}{k}": v for k, v in props.items()}


def _providers(ort: ModuleType, device: str) -> list[str]:
    """onnxruntime execution providers for ``--device`` (auto: CUDA when this onnxruntime has it, else CPU)."""
    name = (device or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise DeviceError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)}.")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if name == "cpu" or (name == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if name.startswith("cuda") and not has_cuda:
        raise DeviceError(
            "This onnxruntime has no CUDA provider; use --device cpu, or install onnxruntime-gpu for --device cuda."
        )
    if name == "auto" or name.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DeviceError(f"onnxruntime has no '{name}' provider here; use --device cpu (or cuda with onnxruntime-gpu).")


def ort_session(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession of ``path`` with ``threads`` intra-op threads (None: one per core).

    Raises:
        DependencyError: onnxruntime is not installed. DeviceError: a device it cannot use.
        CheckpointError: the file is missing or onnxruntime cannot load it.
    """
    (ort,) = require_export_packages("onnxruntime")
    path = Path(path)
    providers = _providers(ort, device)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist; run fsdistill export first or fix the --model path.")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the library does not print
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...) for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not an ONNX model onnxruntime can load ({first[:200]}); export it again."
        ) from None


class OnnxRunner(Runner):
    """A :class:`~fsdistill.infer.predictor.Runner` over the ``.onnx`` file of ``fsdistill export`` (onnxruntime
    only; ``device`` cuda needs onnxruntime-gpu). Raises as :func:`ort_session` and :meth:`OnnxMetadata.from_props`."""

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(self.path, device, threads)
        self.on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self.meta = OnnxMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.size = self.meta.input_size
        self.class_names = self.meta.class_names
        self.palette = self.meta.palette
        self.category_ids = self.meta.category_ids
        self._mean = np.asarray(self.meta.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.meta.std, dtype=np.float32).reshape(1, 3, 1, 1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """B×3×H×W normalised float32 → B×(N+1)×h×w float32 logits."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×size×size uint8 (CPU tensor, as the shared decoder yields) → B×(N+1)×h×w float32 logits, normalised
        with the arithmetic of :func:`fsdistill.data.transforms.normalize`."""
        x = images.numpy().astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(self.run((x - self._mean) / self._std))

    def identity(self) -> dict:
        return {
            "model": str(self.path.resolve()),
            "config_sha256": self.meta.config_sha256,
            "weights_sha256": self.meta.weights_sha256,
            "backend": "onnx",
        }
