"""Source-target matching (STM) and multi-scale anomaly synthesis (MAS), batched.

``R = sa / sf`` with ``sa = max(bbox(ya))`` and ``sf = max(bbox(yn))``. Types are integers:
0 trivial ``R < 0.1`` (never used), 1 small ``[0.1, 0.3)``, 2 medium ``[0.3, 0.7)``, 3 large ``R >= 0.7``.
Synthesis ranges: small ``[0.1, 0.3)``, medium ``[0.3, 0.7)``, large ``[0.7, 1.0]``. A source may only
make a synthesis type no larger than its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cai_aug.engine import rng

TRIVIAL, SMALL, MEDIUM, LARGE = 0, 1, 2, 3
TYPE_NAMES = ("trivial", "small", "medium", "large")
# Lower and upper bounds of the synthesis ranges, indexed by type (index 0 unused).
RANGE_LOW = (0.0, 0.1, 0.3, 0.7)
RANGE_HIGH = (0.1, 0.3, 0.7, 1.0)


def bbox_size(mask: torch.Tensor) -> torch.Tensor:
    """``max(bbox(m))``: the longer side of the tightest box around non-zero pixels.

    Args:
        mask: ``(B, 1, H, W)`` or ``(B, H, W)``.
    Returns:
        ``(B,)`` float32; 0 for an empty mask.
    """
    mask = mask.reshape(mask.shape[0], *mask.shape[-2:])
    if mask.dtype != torch.bool:  # a foreground is already bool: no pass to compare it
        mask = mask > 0
    return torch.maximum(_extent(any_along(mask, 2)), _extent(any_along(mask, 1))).float()


def any_along(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``mask.any(dim)`` of a bool tensor, as the max of its bytes: the same values, and on the CPU many
    times faster than ``any`` along one dimension of a large tensor."""
    return mask.view(torch.uint8).amax(dim=dim).bool()


def _extent(occupied: torch.Tensor) -> torch.Tensor:
    """Length from first to last True along dim 1 of ``(B, L)``, 0 when none."""
    length = occupied.shape[1]
    index = torch.arange(length, device=occupied.device)
    first = torch.where(occupied, index, length).amin(dim=1)
    last = torch.where(occupied, index, -1).amax(dim=1)
    return (last - first + 1).clamp(min=0)


def size_ratios(source_sizes: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """The STM matrix ``R = sa / sf`` of every source against every target.

    Args:
        source_sizes: ``(N,)`` ``sa = max(bbox(ya))`` per source (:attr:`BankStorage.source_sizes`).
        foreground: ``(B, 1, H, W)`` bool target foregrounds ``yn``.
    Returns:
        ``(B, N)`` float32; an empty foreground counts as ``sf = 1``.
    """
    target_sizes = bbox_size(foreground).clamp(min=1)  # sf, (B,)
    return source_sizes[None, :] / target_sizes[:, None]


def source_type(ratio: torch.Tensor) -> torch.Tensor:
    """Type of a source from ``R`` (any shape) -> int64 of the same shape (0 trivial ... 3 large)."""
    edges = torch.tensor(RANGE_LOW[1:], device=ratio.device, dtype=ratio.dtype)
    return torch.bucketize(ratio, edges, right=True)


def parse_quotas(quotas: str | Sequence[float]) -> tuple[float, float, float]:
    """Quotas ``(Nl, Nm, Ns)`` from ``"4:3:3"`` (large:medium:small) or a sequence of three numbers."""
    parts = quotas.split(":") if isinstance(quotas, str) else list(quotas)
    if len(parts) != 3:
        raise ValueError(f"quotas must look like 4:3:3 (large:medium:small), got {quotas!r}")
    return tuple(float(p) for p in parts)  # type: ignore[return-value]


def synthesis_probabilities(quotas: Sequence[float]) -> tuple[float, float, float]:
    """Quotas ``(Nl, Nm, Ns)`` -> probabilities of (small, medium, large) for online use."""
    large, medium, small = (float(q) for q in quotas)
    total = large + medium + small
    if min(large, medium, small) < 0 or total <= 0:
        raise ValueError(f"quotas must be non-negative with a positive sum, got {tuple(quotas)}")
    return small / total, medium / total, large / total


def draw_synthesis_type(keys: torch.Tensor, quotas: Sequence[float]) -> torch.Tensor:
    """Synthesis type per sample ``(B,)`` int64 in {1, 2, 3}, with the quotas as probabilities."""
    p_small, p_medium, _ = synthesis_probabilities(quotas)
    u = rng.uniform(keys, rng.Stream.SYNTHESIS_TYPE)[:, 0]
    return torch.where(u < p_small, SMALL, torch.where(u < p_small + p_medium, MEDIUM, LARGE)).to(torch.int64)


def draw_source(
    keys: torch.Tensor, types: torch.Tensor, wanted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick a source whose type allows the wanted synthesis type, falling back to smaller types.

    Args:
        keys: ``(B,)`` int64 sample keys.
        types: ``(B, N)`` source types for each sample's target.
        wanted: ``(B,)`` synthesis type wanted.
    Returns:
        source index ``(B,)`` (-1 when no source is usable at all), synthesis type used ``(B,)``
        (0 when none), and ``(B,)`` bool whether it had to fall back to a smaller type.
    """
    usable = types > TRIVIAL
    synthesis = wanted.clone()
    for _ in range(LARGE):
        eligible = usable & (types >= synthesis[:, None])
        empty = ~eligible.any(dim=1) & (synthesis > TRIVIAL)
        synthesis = torch.where(empty, synthesis - 1, synthesis)
    eligible = usable & (types >= synthesis[:, None]) & (synthesis[:, None] > TRIVIAL)
    count = eligible.sum(dim=1)
    pick = rng.randint(keys, rng.Stream.SOURCE, count.clamp(min=1))
    # The pick-th eligible source: first index whose running count exceeds pick.
    running = eligible.long().cumsum(dim=1)
    index = torch.searchsorted(running, (pick + 1)[:, None]).squeeze(1)
    index = torch.where(count > 0, index, torch.full_like(index, -1))
    return index, torch.where(count > 0, synthesis, 0), (synthesis < wanted) & (count > 0)


def draw_ratio(
    keys: torch.Tensor,
    synthesis: torch.Tensor,
    ratio: torch.Tensor,
    *,
    decimals: int | None = 1,
    allow_upscale: bool = True,
) -> torch.Tensor:
    """Draw ``R'`` uniformly in the synthesis type's range, ``(B,)`` float64.

    With ``decimals`` set (the reference implementation rounds to one decimal), ``R'`` is uniform over
    the grid points of that resolution inside the range; without upscaling it is also capped at the
    source's own ``R`` (so the scale ``r = R' / R`` stays <= 1).
    """
    low = torch.tensor(RANGE_LOW, device=keys.device, dtype=torch.float64)[synthesis]
    high = torch.tensor(RANGE_HIGH, device=keys.device, dtype=torch.float64)[synthesis]
    if not allow_upscale:
        high = torch.minimum(high, ratio.double())
    u = rng.uniform(keys, rng.Stream.RATIO)[:, 0]
    if decimals is None:
        return low + u * (high - low)
    step = 10.0 ** (-decimals)
    first = torch.ceil(low / step - 1e-9)
    # The large range is closed ([0.7, 1.0]); the others are half-open.
    last_inclusive = torch.where(
        synthesis == LARGE, torch.floor(high / step + 1e-9), torch.ceil(high / step - 1e-9) - 1
    )
    if not allow_upscale:
        last_inclusive = torch.minimum(last_inclusive, torch.floor(high / step + 1e-9))
    count = (last_inclusive - first + 1).clamp(min=1)
    return (first + torch.minimum((u * count).floor(), count - 1)) * step


@dataclass
class SynthesisPlan:
    """What STM/MAS decided for each sample; every field is ``(B,)``.

    ``source``: int64 source index (-1 when the bank has no usable source for the target);
    ``synthesis``: int64 synthesis type (1 small, 2 medium, 3 large; 0 when no source);
    ``ratio``: float64 ``R`` of the source; ``ratio_prime``: float64 ``R'`` drawn in the type's range;
    ``fallback``: bool, the wanted type had no source and a smaller one was used.
    """

    source: torch.Tensor
    synthesis: torch.Tensor
    ratio: torch.Tensor
    ratio_prime: torch.Tensor
    fallback: torch.Tensor


def plan_synthesis(
    keys: torch.Tensor,
    ratios: torch.Tensor,
    quotas: Sequence[float],
    *,
    forced: tuple[torch.Tensor, torch.Tensor] | None = None,
    use_stm: bool = True,
    decimals: int | None = 1,
    allow_upscale: bool = True,
) -> SynthesisPlan:
    """STM and MAS for one draw: the synthesis type, the source and ``R'`` of each sample.

    Args:
        keys: ``(B,)`` int64 sample keys (streams ``SYNTHESIS_TYPE``, ``SOURCE``, ``RATIO``).
        ratios: ``(B, N)`` the STM matrix ``R`` (:func:`size_ratios`).
        quotas: ``(Nl, Nm, Ns)``, the probabilities of the synthesis types.
        forced: ``(source (B,), synthesis type (B,))`` decided elsewhere (offline Algorithm 1); only
            ``R'`` is drawn.
        use_stm: False is the paper's "without STM" ablation: any source, ``R'`` uniform in
            ``[0.1, 1]`` and the synthesis type read from ``R'``.
        decimals, allow_upscale: see :func:`draw_ratio`.
    Returns:
        the :class:`SynthesisPlan`.
    """
    batch = keys.shape[0]
    no_fallback = torch.zeros(batch, dtype=torch.bool, device=keys.device)
    if forced is not None or use_stm:
        if forced is not None:
            source, synthesis = forced
            fallback = no_fallback
        else:
            wanted = draw_synthesis_type(keys, quotas)
            source, synthesis, fallback = draw_source(keys, source_type(ratios), wanted)
        ratio = ratios.gather(1, source.clamp(min=0)[:, None])[:, 0].double()
        ratio_prime = draw_ratio(keys, synthesis.clamp(min=1), ratio, decimals=decimals, allow_upscale=allow_upscale)
        return SynthesisPlan(source, synthesis, ratio, ratio_prime, fallback)
    count = torch.full((batch,), ratios.shape[1], device=keys.device)
    source = rng.randint(keys, rng.Stream.SOURCE, count)
    ratio = ratios.gather(1, source[:, None])[:, 0].double()
    ratio_prime = RANGE_LOW[SMALL] + rng.uniform(keys, rng.Stream.RATIO)[:, 0] * (RANGE_HIGH[LARGE] - RANGE_LOW[SMALL])
    if decimals is not None:
        ratio_prime = ratio_prime.mul(10**decimals).round() / 10**decimals
    synthesis = source_type(ratio_prime.float()).clamp(SMALL, LARGE)
    return SynthesisPlan(source, synthesis, ratio, ratio_prime, no_fallback)


class QuotaWarning(UserWarning):
    """The bank cannot fill a synthesis-type quota; smaller types were used."""


def warn_fallback(count: int) -> None:
    warnings.warn(
        f"the anomaly bank has no source large enough for {count} requested synthesis type(s); "
        "filled with the next smaller type",
        QuotaWarning,
        stacklevel=3,
    )
