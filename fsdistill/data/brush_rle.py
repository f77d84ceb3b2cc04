"""Label Studio's brush RLE (the ``rle`` byte list of a ``brushlabels`` result), without its SDK.

The W×H RGBA canvas (0/255 per channel) is packed by its front end's ``rle-pack`` bit stream: a header (value
count, word size, four length-field sizes), then chunks of a flag (1 = one repeated value, 0 = literals), a length
field choice, the length and the value(s). Only alpha is read back (≥ 128 = painted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["encode_brush_rle", "decode_brush_rle", "BrushRleError"]

_WORD = 8
_FIELD_BITS = (3, 4, 8, 16)  # the run-length field sizes Label Studio writes
_LONGEST = 1 << _FIELD_BITS[-1]  # a chunk holds at most this many values


class BrushRleError(ValueError):
    """A brush RLE that does not decode to the mask it claims (the reader turns it into a DataError)."""


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """H×W mask (nonzero = painted) → Label Studio brush RLE: one repeated-value chunk per run of equal pixels
    (split at 65536 values), each with the smallest length field that holds it."""
    flat = (np.asarray(mask).reshape(-1) != 0).view(np.uint8)
    header = f"{4 * flat.size:032b}{_WORD - 1:05b}" + "".join(f"{b - 1:04b}" for b in _FIELD_BITS)
    parts = [header]
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4
        words = {0: f"{0:0{_WORD}b}", 1: f"{255:0{_WORD}b}"}
        for start, n in zip(starts.tolist(), lengths.tolist()):
            word = words[int(flat[start])]
            while n > 0:
                take = min(n, _LONGEST)
                size = next(k for k, bits in enumerate(_FIELD_BITS) if take - 1 < 1 << bits)
                parts.append(f"1{size:02b}{take - 1:0{_FIELD_BITS[size]}b}{word}")
                n -= take
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE → H×W bool (alpha ≥ 128).

    Raises:
        BrushRleError: values outside 0..255, a stream that ends early, or a value count other than 4·H·W.
    """
    try:
        data = bytes(int(v) for v in rle)
    except (TypeError, ValueError) as exc:
        raise BrushRleError("the rle list holds values that are not bytes (0..255)") from exc
    bits = "".join(f"{b:08b}" for b in data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise BrushRleError("the rle stream ends inside a chunk")
        value = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    fields = [read(4) + 1 for _ in range(4)]
    if num != 4 * height * width:
        raise BrushRleError(f"it holds {num} values, not 4 × {width} × {height} (RGBA of the image)")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeated = read(1)
        j = i + 1 + read(fields[read(2)])
        if j > num:
            raise BrushRleError("a chunk runs past the end of the image")
        if repeated:
            out[i:j] = read(word) & 0xFF
        else:
            for k in range(i, j):
                out[k] = read(word) & 0xFF
        i = j
    return out.reshape(height, width, 4)[..., 3] >= 128
