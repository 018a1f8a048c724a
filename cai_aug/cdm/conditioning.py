"""Spatial anomaly embedding -> the frozen text encoder's hidden states (the UNet's condition).

The learned tokens ``e = {e_a, e_s}`` live in the text encoder's *input* embedding space, as in
textual inversion. The prompt is ``<bos> e_a(k) e_s(n) <eos> <pad>...``; a forward hook on the token
embedding layer swaps the placeholder positions for the learned vectors. A hook, rather than new
vocabulary rows, because ``e_s`` differs per sample and because CLIPTextModel takes no
``inputs_embeds`` in every transformers version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class TextConditioner:
    """Runs the frozen text encoder with per-sample learned tokens spliced into its input."""

    def __init__(self, text_encoder: nn.Module, tokenizer, num_learned: int) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.num_learned = num_learned
        limit = int(text_encoder.config.max_position_embeddings)
        self.length = min(int(getattr(tokenizer, "model_max_length", limit) or limit), limit)
        if num_learned + 2 > self.length:
            raise ValueError(
                f"{num_learned} learned tokens + <bos>/<eos> exceed the text encoder's {self.length} positions"
            )
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        # Placeholders carry the pad id: their embedding rows are replaced anyway.
        ids = [bos] + [pad] * num_learned + [eos] + [pad] * (self.length - num_learned - 2)
        self.ids = torch.tensor(ids, dtype=torch.int64)

    @contextmanager
    def _splice(self, learned: torch.Tensor) -> Iterator[None]:
        m = self.num_learned

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return torch.cat([output[:, :1], learned.to(output.dtype), output[:, 1 + m :]], dim=1)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, learned: torch.Tensor) -> torch.Tensor:
        """Learned tokens ``(B, k + n, D)`` -> encoder hidden states ``(B, L, D_cross)``."""
        if learned.shape[1] != self.num_learned:
            raise ValueError(f"expected {self.num_learned} learned tokens, got {learned.shape[1]}")
        device = next(self.text_encoder.parameters()).device
        ids = self.ids.to(device).expand(learned.shape[0], -1)
        with self._splice(learned.to(device)):
            return self.text_encoder(input_ids=ids)[0]

    @torch.no_grad()
    def unconditional(self, batch: int) -> torch.Tensor:
        """Hidden states of the empty prompt ``(B, L, D_cross)``, for classifier-free guidance."""
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            "", padding="max_length", max_length=self.length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        return self.text_encoder(input_ids=ids)[0].expand(batch, -1, -1)
