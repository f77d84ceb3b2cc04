"""Export a student to ONNX and check it against PyTorch (``fsdistill export``).

The student (B×3×H×W normalised images → B×(N+1)×h×w logits) is traced with the TorchScript-based exporter
(``torch.export`` takes minutes with a symbolic height and width), with a dynamic batch and, where it reproduces
PyTorch at a second size, a dynamic height and width. What a consumer needs to preprocess and label goes into the
file's ``metadata_props`` (:meth:`fsdistill.infer.onnx.OnnxMetadata.to_props`).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fsdistill import __version__
from fsdistill.data.transforms import normalize
from fsdistill.errors import ConfigError, DataError
from fsdistill.infer.onnx import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, ort_session, require_export_packages
from fsdistill.runtime import process_temp_path, remove_dead_temps

__all__ = ["ExportResult", "Parity", "export_onnx", "OPSET"]

OPSET = 17


@dataclass
class Parity:
    """How close two B×(N+1)×h×w logit tensors are (accumulated over batches with :meth:`add`).

    ``max_abs_diff_stable`` leaves out the pixels where the two disagree on the strongest foreground class: the
    merged background logit is that class's (``merge_classes``), so it jumps where two classes nearly tie. Those
    pixels still count in ``agreement`` (the argmax over all N+1 channels, i.e. the mask).
    """

    max_abs_diff: float = 0.0
    max_abs_diff_stable: float = 0.0
    agreeing: int = 0
    pixels: int = 0

    @property
    def agreement(self) -> float:
        return self.agreeing / self.pixels if self.pixels else 1.0

    def add(self, reference: np.ndarray, other: np.ndarray) -> Parity:
        """Fold in one batch: ``reference`` and ``other`` are B×(N+1)×h×w float arrays of the same shape."""
        if reference.shape != other.shape:
            raise ValueError(f"logit shapes differ: {reference.shape} vs {other.shape}")
        diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        if reference.shape[1] > 2:
            stable = reference[:, 1:].argmax(axis=1) == other[:, 1:].argmax(axis=1)
            stable_diff = np.where(stable[:, None], diff, 0.0)
        else:
            stable_diff = diff
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.max_abs_diff_stable = max(self.max_abs_diff_stable, float(stable_diff.max()))
        self.agreeing += int((reference.argmax(axis=1) == other.argmax(axis=1)).sum())
        self.pixels += reference.shape[0] * reference.shape[2] * reference.shape[3]
        return self

    def ok(self, tolerance: float, min_agreement: float) -> bool:
        return self.max_abs_diff_stable <= tolerance and self.agreement >= min_agreement


@dataclass
class ExportResult:
    """What ``export`` wrote and how well onnxruntime matched PyTorch on the sample inputs."""

    path: Path
    format: str
    input_size: int
    dynamic_hw: bool
    size_bytes: int
    max_abs_diff: float
    max_abs_diff_stable: float
    agreement: float
    pixels: int
    samples: int
    real_samples: int
    tolerance: float
    min_agreement: float
    passed: bool
    seconds: float
    note: str = ""
    model: Path | None = None  # the artifact exported (set by fsdistill.export)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["model"] = None if self.model is None else str(self.model)
        return data


def _torch_logits(model: nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    """B×3×H×W normalised float32 → B×(N+1)×h×w float32 logits in full precision."""
    with torch.inference_mode():
        return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()


def _trace(model: nn.Module, path: Path, example: torch.Tensor, dynamic_hw: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    out_axes = {0: "batch", 2: "out_height", 3: "out_width"} if dynamic_hw else {0: "batch"}
    with warnings.catch_warnings():
        # TracerWarnings name the Python-side shape checks (backbone.check_size) the trace drops, and the
        # TorchScript exporter announces its deprecation; the parity check below is what decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _add_metadata(onnx: Any, path: Path, props: dict[str, str], doc: str) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fsdistill"
    proto.producer_version = __version__
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _random_images(rng: np.random.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """count×3×H×W uint8: smooth random colour fields with noise (closer to photos than white noise)."""
    low = rng.integers(0, 256, size=(count, 3, max(2, height // 16), max(2, width // 16))).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(low), size=(height, width), mode="bilinear")
    noisy = smooth + torch.from_numpy(rng.normal(0, 12, size=(count, 3, height, width)).astype(np.float32))
    return noisy.clamp(0, 255).round().to(torch.uint8)


def export_onnx(
    model: nn.Module,
    out: Path,
    *,
    input_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: list[str],
    palette: list[tuple[int, int, int]],
    dynamic_hw: bool = True,
    size_multiple: int = 32,
    real_images: torch.Tensor | None = None,
    random_samples: int = 4,
    tolerance: float = 1e-2,
    min_agreement: float = 0.999,
    device: torch.device | str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX at ``out`` and compare onnxruntime with PyTorch on sample inputs.

    Args:
        model: B×3×H×W normalised float32 → B×(N+1)×h×w logits; moved to the CPU and set to eval to trace.
        out: the ``.onnx`` file to write (replaced atomically; its folder must exist and be writable).
        mean, std: per-channel normalisation of RGB in [0, 1]. class_names: N+1 names. palette: N+1 RGB colours.
        dynamic_hw: try a dynamic height and width (checked at another size; fixed if that fails).
        size_multiple: input sides a dynamic model accepts are multiples of this (recorded in the metadata).
        real_images: optional R×3×size×size uint8 real images added to the parity samples.
        random_samples: random images at the input size (batched by two, so the batch axis is exercised).
        tolerance, min_agreement: what passes (:class:`Parity`'s stable difference, argmax agreement).
        device: where the PyTorch reference runs (CUDA convolutions may use TF32).
        metadata: extra ``fsdistill.*`` metadata (keys without the prefix), e.g. the artifact's config hash.

    Returns:
        :class:`ExportResult`; ``passed`` is False (the file is still written) when the check fails.

    Raises:
        DependencyError: onnx or onnxruntime is missing.
    """
    onnx, _ = require_export_packages("onnx", "onnxruntime")
    start = time.perf_counter()
    out = Path(out)
    device = torch.device(device)
    model = model.to("cpu").eval()
    rng = np.random.default_rng(seed)
    batches = [
        _random_images(rng, min(2, random_samples - i), input_size, input_size) for i in range(0, random_samples, 2)
    ]
    if real_images is not None and len(real_images):
        batches.append(real_images.to(torch.uint8))
    if not batches:
        raise ConfigError("The parity check needs at least one sample: give real images or random_samples >= 1.")
    samples = [normalize(b, mean, std).numpy() for b in batches]
    other_size = (input_size + 2 * size_multiple, input_size + size_multiple)
    other = normalize(_random_images(rng, 1, *other_size), mean, std).numpy()
    real = 0 if real_images is None else len(real_images)
    doc = f"fsdistill student: {len(class_names) - 1} classes ({', '.join(class_names[1:])}), input {input_size}px"

    remove_dead_temps(out)
    tmp = process_temp_path(out)
    note = ""
    model.to(device)
    reference = [_torch_logits(model, x, device) for x in samples]
    try:
        for attempt_dynamic in [True, False] if dynamic_hw else [False]:
            model.to("cpu")
            _trace(model, tmp, torch.from_numpy(samples[0]), attempt_dynamic)
            props = OnnxMetadata.to_props(
                input_size=input_size,
                dynamic_hw=attempt_dynamic,
                size_multiple=size_multiple,
                mean=mean,
                std=std,
                class_names=class_names,
                palette=palette,
                extra=metadata,
            )
            _add_metadata(onnx, tmp, props, doc)
            session = ort_session(tmp, "cpu", threads)
            model.to(device)
            parity = Parity()
            for x, ref in zip(samples, reference):
                parity.add(ref, session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
            if not attempt_dynamic:
                break
            try:
                other_ref = _torch_logits(model, other, device)
                other_out = session.run([OUTPUT_NAME], {INPUT_NAME: other})[0]
                check = Parity().add(other_ref, other_out)
                # A shape baked into the trace shows as a failure or a gross difference; float rounding differs
                # from size to size. So the other size passes within the tolerance or within ten times the input
                # size's own difference: a strict --tolerance is no reason to give up the dynamic height/width.
                bar_tolerance = max(tolerance, 10 * parity.max_abs_diff_stable)
                bar_agreement = min(min_agreement, parity.agreement)
                reason = (
                    ""
                    if check.ok(bar_tolerance, bar_agreement)
                    else (f"max |diff| {check.max_abs_diff_stable:.2e}, agreement {check.agreement:.4%}")
                )
            except Exception as exc:  # a size the trace baked in: onnxruntime rejects the input or a reshape
                text = str(exc).strip()
                reason = f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"
            if not reason:
                parity.add(other_ref, other_out)
                break
            note = (
                f"a dynamic height/width did not reproduce PyTorch at {other_size[0]}x{other_size[1]} ({reason}); "
                f"exported with a fixed {input_size}x{input_size} input"
            )
        del session  # release the file before it is renamed
        os.replace(tmp, out)
    except OSError as exc:  # a full disk or a size limit while the model file is written
        raise DataError(
            f"Cannot write {out} ({exc.strerror or exc}); free some space or choose another -o, then export again."
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    final_dynamic = dynamic_hw and not note
    return ExportResult(
        path=out,
        format="onnx",
        input_size=input_size,
        dynamic_hw=final_dynamic,
        size_bytes=out.stat().st_size,
        max_abs_diff=parity.max_abs_diff,
        max_abs_diff_stable=parity.max_abs_diff_stable,
        agreement=parity.agreement,
        pixels=parity.pixels,
        samples=sum(len(x) for x in samples) + (1 if final_dynamic else 0),
        real_samples=real,
        tolerance=tolerance,
        min_agreement=min_agreement,
        passed=parity.ok(tolerance, min_agreement),
        seconds=time.perf_counter() - start,
        note=note,
    )
