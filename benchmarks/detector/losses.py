"""Focal loss (Lin et al. 2017) for the two-channel segmentation output, as DRAEM trains with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean focal loss of ``logits (B,2,H,W)`` (channel 1 = anomaly) against ``masks (B,1,H,W)`` in {0,1}.

    ``FL = -a_t (1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of the true class;
    ``alpha`` (weight of the anomaly class, ``1 - alpha`` for normal) is off by default, as in DRAEM.
    """
    if logits.shape[1] != 2:
        raise ValueError(f"expected 2 output channels, got {logits.shape[1]}")
    target = masks[:, 0].long()
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    pt = log_pt.exp()
    loss = -((1.0 - pt).clamp(min=0.0) ** gamma) * log_pt
    if alpha is not None:
        weight = torch.where(target == 1, torch.full_like(pt, alpha), torch.full_like(pt, 1.0 - alpha))
        loss = loss * weight
    return loss.mean()
