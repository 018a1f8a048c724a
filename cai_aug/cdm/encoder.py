"""The trainable parts of CDM: per-class anomaly embeddings and the spatial encoder (mask -> tokens).

AnomalyDiffusion's spatial encoder is an ImageNet ResNet-50 + FPN + one fully connected head per token.
No pretrained backbone can be loaded offline, and a binary mask needs far less capacity than a photo,
so ours is a small CNN with the same structure: four stride-2 stages, an FPN-style top-down fusion,
and ``n`` MLP heads on the flattened fused map (flattening, not pooling, keeps *where* the mask is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of :class:`SpatialEncoder`; stored in the checkpoint's JSON."""

    embed_dim: int
    num_tokens: int = 4
    mask_size: int = 128
    width: int = 16
    grid: int = 8
    hidden: int = 256
    init_scale: float = 0.02

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    groups = max(1, min(8, c_out // 4))
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class SpatialEncoder(nn.Module):
    """Mask ``(B, 1, H, W)`` in {0, 1} -> spatial embedding ``(B, num_tokens, embed_dim)``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        channels = (w, 2 * w, 4 * w, 8 * w)
        self.stages = nn.ModuleList(_stage(c_in, c_out) for c_in, c_out in zip((1,) + channels[:-1], channels))
        self.lateral = nn.ModuleList(nn.Conv2d(c, w, 1) for c in channels)
        self.smooth = nn.Conv2d(w, w, 3, padding=1)
        flat = w * config.grid * config.grid
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(flat, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.embed_dim))
            for _ in range(config.num_tokens)
        )
        for head in self.heads:
            # Start at the scale of the text encoder's token embeddings, so the frozen text encoder
            # sees in-distribution inputs from the first step.
            nn.init.normal_(head[-1].weight, std=config.init_scale / config.hidden**0.5)
            nn.init.zeros_(head[-1].bias)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        size = self.config.mask_size
        x = F.interpolate(masks.float(), size=(size, size), mode="area") * 2.0 - 1.0
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        # FPN top-down path: coarse semantics added into finer maps.
        fused = self.lateral[-1](features[-1])
        for feature, lateral in zip(reversed(features[:-1]), reversed(self.lateral[:-1])):
            fused = lateral(feature) + F.interpolate(fused, size=feature.shape[-2:], mode="nearest")
        fused = F.adaptive_avg_pool2d(self.smooth(fused), self.config.grid).flatten(1)
        return torch.stack([head(fused) for head in self.heads], dim=1)


class AnomalyEmbeddings(nn.Module):
    """One learned embedding of ``tokens_per_class`` tokens per anomaly class: ``(C, k, D)``."""

    def __init__(self, classes: list[str], vectors: torch.Tensor) -> None:
        super().__init__()
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be non-empty and distinct, got {classes}")
        if vectors.ndim != 3 or vectors.shape[0] != len(classes):
            raise ValueError(f"vectors must be (len(classes), k, D), got {tuple(vectors.shape)}")
        self.classes = list(classes)
        self.vectors = nn.Parameter(vectors.detach().clone().float())

    @property
    def tokens_per_class(self) -> int:
        return int(self.vectors.shape[1])

    def index(self, names: list[str]) -> torch.Tensor:
        """Class indices ``(B,)`` int64 of class names, with an error naming unknown ones."""
        lookup = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted({name for name in names if name not in lookup})
        if unknown:
            raise ValueError(f"unknown anomaly class(es) {unknown}; trained classes: {self.classes}")
        return torch.tensor([lookup[name] for name in names], dtype=torch.int64)

    def forward(self, class_index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64 -> ``(B, k, D)``."""
        return self.vectors[class_index.to(self.vectors.device)]


def init_class_vectors(
    classes: list[str], tokens_per_class: int, token_table: torch.Tensor, tokenizer, seed: int = 0
) -> torch.Tensor:
    """Initial ``(C, k, D)``: the mean token embedding of each class name (textual inversion's
    "initializer word"), or random at the table's scale when the tokenizer knows none of it, plus a
    little noise so the k tokens of one class do not stay identical."""
    table = token_table.detach().float().cpu()
    scale = float(table.std())
    generator = torch.Generator().manual_seed(seed)
    out = []
    for name in classes:
        ids = tokenizer(name.replace("_", " "), add_special_tokens=False).input_ids
        ids = [i for i in ids if i != tokenizer.unk_token_id and 0 <= i < table.shape[0]]
        base = table[ids].mean(0) if ids else torch.randn(table.shape[1], generator=generator) * scale
        noise = torch.randn(tokens_per_class, table.shape[1], generator=generator) * (0.1 * scale)
        out.append(base.expand(tokens_per_class, -1) + noise)
    return torch.stack(out)
