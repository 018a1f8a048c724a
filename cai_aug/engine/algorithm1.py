"""The paper's offline mode: Algorithm 1 (multi-scale quotas) for one target image.

Algorithm 1 as printed compares the counters the wrong way round; the rule used here is the intended
one (the paper's step 3): given a drawn source, make the largest synthesis type it allows whose quota is
not yet met (large, then medium, else small). Quotas that no source of the bank can fill are moved to the
next smaller type with one warning, so the loop always ends. A pseudo anomaly that fails (no valid
location, nearly empty mask) gives its quota slot back and the slot is planned again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.cai import CAI
from cai_aug.engine.matching import LARGE, SMALL, TRIVIAL, size_ratios, source_type, warn_fallback
from cai_aug.io.coerce import as_float_batch

MAX_DRAWS = 10_000


@dataclass
class PseudoAnomaly:
    """One pseudo anomaly: ``image (C, H, W)`` and ``mask (1, H, W)`` on the target's device, its label
    (1, or 0 if it had to be returned without an anomaly) and its info record."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    info: dict


def quota_counts(quotas: Sequence[float], n: int) -> list[int]:
    """Integer counts ``[small, medium, large]`` for ``n`` anomalies in proportion ``Nl:Nm:Ns``
    (largest remainders; 4:3:3 with n = 10 gives exactly 3, 3, 4)."""
    large, medium, small = (float(q) for q in quotas)
    weights = [small, medium, large]
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(3), key=lambda i: (exact[i] - counts[i], i), reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def plan_types(
    key: int, types: torch.Tensor, quotas_left: list[int], draw_offset: int = 0
) -> tuple[list[int], list[int], bool]:
    """Algorithm 1 for one target: draw sources until every quota slot has one.

    Args:
        key: the target's key.
        types: ``(N,)`` source types for this target.
        quotas_left: slots still to fill per synthesis type ``[small, medium, large]``.
    Returns:
        source indices and synthesis types (one per slot), and whether a quota was moved down.
    """
    types = types.cpu()
    counts = list(quotas_left)
    present = int(types.max()) if types.numel() else TRIVIAL
    moved = False
    for synthesis in range(LARGE, SMALL, -1):
        if present < synthesis and counts[synthesis - 1] > 0:
            counts[synthesis - 2] += counts[synthesis - 1]
            counts[synthesis - 1] = 0
            moved = True
    if present < SMALL:
        return [], [], moved
    usable = torch.nonzero(types > TRIVIAL).flatten()
    keys = torch.tensor([key], dtype=torch.int64)
    sources, synthesis_types = [], []
    draw = draw_offset
    while sum(counts) > 0 and draw < draw_offset + MAX_DRAWS:
        pick = int(rng.randint(rng.derive(keys, draw), rng.Stream.SOURCE, usable.numel())[0])
        draw += 1
        source = int(usable[pick])
        own = int(types[source])
        for synthesis in range(own, TRIVIAL, -1):
            if counts[synthesis - 1] > 0:
                counts[synthesis - 1] -= 1
                sources.append(source)
                synthesis_types.append(synthesis)
                break
    return sources, synthesis_types, moved


def synthesize(
    target_image: torch.Tensor,
    bank: AnomalyBank,
    n: int = 10,
    *,
    image_key: str | int = 0,
    cai: CAI | None = None,
    max_rounds: int = 5,
    **cai_kwargs,
) -> list[PseudoAnomaly]:
    """Make ``n`` pseudo anomalies of one target image with the paper's quotas (offline mode).

    Args:
        target_image: ``(C, H, W)`` float in [0, 1] or uint8.
        bank: the anomaly bank.
        n: number of pseudo anomalies (the paper: 10, as 4 large, 3 medium, 3 small).
        image_key: the target's key (offline: its path relative to the input folder); with the seed it
            fixes every decision, whatever else is processed with it.
        cai: a configured :class:`CAI` (else one is made from ``bank`` and ``cai_kwargs``: ``config=``,
            ``seed=``, ``device=`` and engine options, as :class:`CAI` takes them).
    Returns:
        the pseudo anomalies, ordered by slot; fewer than ``n`` only if the bank cannot place some.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cai = cai or CAI(bank, **cai_kwargs)
    image, _ = as_float_batch(target_image, "target_image")
    if image.shape[0] != 1:
        raise ValueError("synthesize takes one target image (C, H, W); loop or batch with CAI for more")
    device = cai.device or image.device
    image = image.to(device)
    foreground = cai.estimate_foreground(image, [str(image_key)])
    types = source_type(size_ratios(cai.bank.storage_on(device).source_sizes, foreground))[0]  # (N,)
    key = rng.sample_key(cai.seed, image_key)
    left = quota_counts(cai.config.quotas, n)
    results: list[PseudoAnomaly] = []
    draws, slot, moved_any = 0, 0, False
    for round_index in range(max_rounds):
        sources, synthesis_types, moved = plan_types(key, types, left, draws)
        moved_any |= moved
        draws += MAX_DRAWS
        if not sources:
            break
        slots = list(range(slot, slot + len(sources)))
        slot += len(sources)
        keys = rng.sample_keys(cai.seed, [image_key] * len(slots), slots, round_index)
        plan = (torch.tensor(sources), torch.tensor(synthesis_types))
        out = cai.run(
            image.expand(len(slots), -1, -1, -1).contiguous(),
            keys=keys,
            foregrounds=foreground.expand(len(slots), -1, -1, -1),
            plan=plan,
        )
        left = [0, 0, 0]
        for i, info in enumerate(out.info):
            if out.labels[i] > 0:
                results.append(PseudoAnomaly(out.images[i], out.masks[i], 1, {**info, "slot": len(results)}))
            else:
                left[synthesis_types[i] - 1] += 1
        if sum(left) == 0:
            break
    if moved_any:
        warn_fallback(1)
    return results
