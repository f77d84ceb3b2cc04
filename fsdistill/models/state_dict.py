"""Reading weight files that fsdistill did not write (a user's backbone weights, official DCAMA checkpoints).

Files whose names are not ours are paired with a model's tensors by position; :func:`positional_orders` gives the
orders to try.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fsdistill.errors import CheckpointError

__all__ = ["PARAM_ORDER", "COUNTER", "read_state_dict", "positional_orders", "first_line"]

# Order of a module's own tensors in its state dict (nn.Linear/Conv: weight, bias; BatchNorm adds its statistics).
PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}
# BatchNorm's step counter: never paired by position (some exporters drop it), kept from the model when absent.
COUNTER = "num_batches_tracked"


def first_line(e: BaseException) -> str:
    """The cause as one short line (load_state_dict errors span many lines: the key lists follow the header)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _load_cause(e: BaseException, path: Path) -> str:
    """A short phrase (no full stop) for why torch or safetensors could not read the file."""
    text = str(e)
    if isinstance(e, EOFError) or path.stat().st_size == 0:
        return "the file is empty or cut short"
    if "central directory" in text or "zip archive" in text:
        return "damaged zip archive, probably truncated or corrupted"
    if "Weights only load failed" in text:
        return "not a PyTorch checkpoint"
    first = first_line(e).split(". ")[0].rstrip(".")
    if path.suffix == ".safetensors":
        return f"not a valid safetensors file: {first}"
    return f"not a PyTorch checkpoint: {first}"


def read_state_dict(path: Path, what: str, option: str, remedy: str) -> dict[str, Tensor]:
    """The tensors of a weights file, by name in stored order.

    Args:
        path: a ``.safetensors`` file, or a torch file read with ``weights_only=True`` (the state dict possibly
            wrapped, at any depth, under ``state_dict`` or ``model``; non-tensor entries are dropped).
        what, option, remedy: for messages: "Backbone weights", "--backbone-weights", what to pass instead.

    Raises:
        CheckpointError: the file is missing, unreadable, pickles Python objects, or holds no tensors.
    """
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist; check the {option} path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, weights_only and safetensors errors share no base class
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if unsafe:
            raise CheckpointError(
                f"{what} file {path} pickles the Python object {unsafe.group(1)}, which a safe (weights_only) load "
                "refuses; if you trust the file, re-save only its state dict with "
                "torch.save(ckpt['state_dict'], 'plain.pt') and pass that."
            ) from e
        raise CheckpointError(f"Cannot read {what.lower()} file {path} ({_load_cause(e, path)}); {remedy}.") from e
    # {"model": sd}, {"state_dict": sd}, or nested; a plain state dict has dotted names, never these keys.
    while isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    items = obj.items() if isinstance(obj, dict) else []
    tensors = {k: v for k, v in items if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{what} file {path} holds no state dict of tensors; {remedy}.")
    return tensors


def _natural_key(key: str) -> list[tuple[int, int, str]]:
    """Guess of module order from a name: numbers numerically, ``weight`` before ``bias`` before BN statistics."""
    parts = key.split(".")
    out = []
    for n, part in enumerate(parts):
        if part.isdigit():
            out.append((0, int(part), ""))
        elif n == len(parts) - 1 and part in PARAM_ORDER:
            out.append((1, PARAM_ORDER[part], ""))
        else:
            out.append((2, 0, part))
    return out


def positional_orders(keys: list[str], path: Path) -> list[list[str]]:
    """Orders to try when pairing a file's tensors with a model's by position: the stored one, and for safetensors
    (which stores keys sorted by name, not in module order) the natural order of the names."""
    orders = [keys]
    if path.suffix == ".safetensors":
        natural = sorted(keys, key=_natural_key)
        if natural != keys:
            orders.append(natural)
    return orders
