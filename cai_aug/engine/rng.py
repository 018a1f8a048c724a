"""Counter-based randomness keyed per sample.

Every random decision of a pseudo anomaly is a pure function of ``(key, stream)`` where ``key`` is
derived from ``(seed, image key, anomaly index, epoch)``. Nothing here has state, so the same sample
gets the same decisions whichever worker, batch, rank or order processes it.

The mixer is SplitMix64 (Steele et al. 2014), written with int64 tensor ops so that it runs batched on
any device: multiplication wraps modulo 2**64 in two's complement, and logical right shifts are
arithmetic shifts followed by a mask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import IntEnum

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


def _mix_int(value: int) -> int:
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values seen as uint64."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _signed(_MUL1)
    x = (x ^ _shr(x, 27)) * _signed(_MUL2)
    return x ^ _shr(x, 31)


class Stream(IntEnum):
    """One id per kind of random decision, so decisions never share draws.

    The values are part of the output: changing one changes every anomaly made with it (6 was a
    flip stream that nothing drew from; it stays unused rather than renumbering ``EXTRA``).
    """

    SYNTHESIS_TYPE = 1
    SOURCE = 2
    RATIO = 3
    LOCATION = 4
    APPLY = 5  # whether a sample is augmented at all (front ends with p < 1)
    EXTRA = 7  # extensions beyond the paper (CDM's class and noise draws, folded with their own parts)
    MODE = 8  # Poisson guidance per sample (mode="both")
    PASTE = 9  # weight of a plain paste over the Poisson result (paste_weight > 0)


def hash_part(part: int | str | bytes) -> int:
    """Stable 64-bit value of one key part (``hash()`` of a str differs between processes)."""
    if isinstance(part, bool):
        part = int(part)
    if isinstance(part, int):
        return _mix_int(part + _GOLDEN)
    if isinstance(part, str):
        part = part.encode("utf-8", "surrogateescape")  # a file name's own bytes, UTF-8 or not
    if isinstance(part, bytes):
        return int.from_bytes(hashlib.blake2b(part, digest_size=8).digest(), "little")
    raise TypeError(f"key parts must be int, str or bytes, got {type(part).__name__}")


def sample_key(*parts: int | str | bytes) -> int:
    """Fold key parts (seed, image key, anomaly index, epoch ...) into one signed 64-bit key."""
    state = 0
    for part in parts:
        state = _mix_int(state ^ hash_part(part) ^ _GOLDEN)
    return _signed(state)


def sample_keys(
    seed: int,
    image_keys: Sequence[int | str],
    anomaly_index: int | Sequence[int] = 0,
    epoch: int = 0,
) -> torch.Tensor:
    """Keys ``(B,)`` int64 for a batch of image keys (paths relative to the input folder, ids ...)."""
    if isinstance(anomaly_index, int):
        anomaly_index = [anomaly_index] * len(image_keys)
    if len(anomaly_index) != len(image_keys):
        raise ValueError("anomaly_index must be an int or have one entry per image key")
    return torch.tensor(
        [sample_key(seed, key, int(index), epoch) for key, index in zip(image_keys, anomaly_index)],
        dtype=torch.int64,
    )


def derive(keys: torch.Tensor, *parts: int) -> torch.Tensor:
    """Sub-keys ``(B,)`` of ``keys`` for extra integer parts (attempt number, anomaly slot ...)."""
    out = keys.to(torch.int64)
    for part in parts:
        out = _mix(out ^ _signed(hash_part(int(part))))
    return out


def fold(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-sample sub-keys: ``keys (B,)`` (or one key broadcast) folded with integer ``values (B,)``."""
    hashed = _mix(values.to(torch.int64) + _signed(_GOLDEN))
    return _mix(keys.to(torch.int64) ^ hashed)


def bits(keys: torch.Tensor, stream: int, count: int = 1) -> torch.Tensor:
    """Random 64-bit words ``(B, count)`` int64, a pure function of ``(key, stream, draw index)``."""
    keys = keys.to(torch.int64).reshape(-1, 1)
    counter = torch.arange(count, device=keys.device, dtype=torch.int64).reshape(1, -1)
    base = derive(keys, int(stream))
    return _mix(base + (counter + 1) * _signed(_GOLDEN))


def uniform(keys: torch.Tensor, stream: int, count: int = 1) -> torch.Tensor:
    """Uniform floats in ``[0, 1)``, ``(B, count)`` float64 (53 random bits each)."""
    words = bits(keys, stream, count)
    return _shr(words, 11).to(torch.float64) * (1.0 / (1 << 53))


def randint(keys: torch.Tensor, stream: int, high: torch.Tensor | int) -> torch.Tensor:
    """One integer per key, uniform in ``[0, high)`` (``high`` per sample, >= 1), ``(B,)`` int64."""
    u = uniform(keys, stream, 1)[:, 0]
    high_t = torch.as_tensor(high, device=u.device, dtype=torch.float64)
    return torch.minimum((u * high_t).floor(), (high_t - 1).clamp(min=0)).to(torch.int64)
