"""Adaptive attention re-weighting (AnomalyDiffusion Eq. 7-8).

At a denoising step the predicted clean image ``x0_hat`` is compared with the normal image ``y``
inside the mask; pixels where the anomaly is still faint get larger weights::

    d   = ||m * y - m * x0_hat||^2 per pixel (sum over channels)
    w_m = ||m||_1 * softmax(f(d)),  f(d) = 1/d where d != 0, -inf elsewhere (softmax over pixels)

and every cross-attention map of the UNet is multiplied by ``w_m`` (resized to its resolution),
``m'_c = m_c * w_m``, without renormalising, as in the paper.

Our choices where the paper is silent or numerically fragile (documented, each a parameter):
- ``d`` is divided by its mean inside the mask before ``1/d``: pixel differences in [0, 1] make
  ``1/d`` so large that the softmax collapses onto one pixel, and the scale must not depend on the
  image's contrast.
- weights are capped at ``max_weight`` (default 5) for the same reason;
- outside the mask the weight is 1 (the paper's formula gives 0 there): those latents are replaced by
  the normal image's at every step anyway, and zeroing their attention would only distort the
  features that convolutions carry into the mask;
- the map used at step ``i`` comes from ``x0_hat`` of step ``i - 1`` (uniform at the first step), so
  re-weighting costs one VAE decode per step instead of an extra UNet pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def adaptive_weight_map(
    masks: torch.Tensor, normal: torch.Tensor, x0_hat: torch.Tensor, max_weight: float | None = 5.0
) -> torch.Tensor:
    """Weights ``(B, 1, H, W)``: masks ``(B,1,H,W)`` {0,1}, images ``(B,C,H,W)``; 1 outside the mask."""
    m = masks.float()
    d = ((m * normal.float() - m * x0_hat.float()) ** 2).sum(1, keepdim=True)
    inside = (m > 0) & (d > 0)
    count = m.flatten(1).sum(1).clamp(min=1.0)
    mean = (d * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
    scaled = d / mean.clamp(min=1e-12).view(-1, 1, 1, 1)
    logits = torch.where(inside, 1.0 / scaled.clamp(min=1e-6), torch.full_like(d, -math.inf))
    flat = logits.flatten(1)
    # A sample with nothing inside (empty mask) would give softmax of all -inf = NaN.
    valid = inside.flatten(1).any(1, keepdim=True)
    probs = torch.where(valid, torch.softmax(flat.masked_fill(~valid, 0.0), dim=1), torch.zeros_like(flat))
    w = (probs * count.view(-1, 1)).view_as(d)
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return torch.where(m > 0, w, torch.ones_like(w))


class ReweightedCrossAttnProcessor:
    """A diffusers attention processor that multiplies cross-attention maps by a spatial weight map.

    Set ``weights`` to ``(B, 1, h, w)`` (latent resolution) before a UNet call, or None for plain
    attention. The map is area-resized to each layer's token grid; with classifier-free guidance the
    UNet batch is a multiple of B and the map is tiled to it.
    """

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None

    def _token_weights(self, batch: int, tokens: int, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
        if self.weights is None:
            return None
        h, w = self.weights.shape[-2:]
        factor = math.sqrt(h * w / tokens)
        size = (max(1, round(h / factor)), max(1, round(w / factor)))
        if size[0] * size[1] != tokens:
            return None  # not a spatial layer we can map; leave it unweighted
        weights = F.adaptive_avg_pool2d(self.weights.float(), size).flatten(1)  # (B0, N)
        if batch % weights.shape[0]:
            return None
        weights = weights.repeat(batch // weights.shape[0], 1)
        return weights.repeat_interleave(heads, dim=0).unsqueeze(-1).to(dtype)  # (B*heads, N, 1)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, c, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, N, L)
        weights = self._token_weights(batch, tokens, attn.heads, probs.dtype)
        if weights is not None:
            probs = probs * weights
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_reweighting(unet) -> ReweightedCrossAttnProcessor:
    """Give every cross-attention layer (``attn2``) of ``unet`` one shared re-weighting processor."""
    processor = ReweightedCrossAttnProcessor()
    processors = {name: (processor if ".attn2." in name else current) for name, current in unet.attn_processors.items()}
    unet.set_attn_processor(processors)
    return processor
