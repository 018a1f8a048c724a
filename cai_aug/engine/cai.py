"""The CAI engine: one pseudo anomaly per input image, batched on any device.

Per sample (all steps batched, every random decision keyed per sample, see :mod:`cai_aug.engine.rng`):
foreground -> STM/MAS (synthesis type, source, R') -> ILS (centre) -> resample the source into a
canvas -> Omega = dilate(close(mask)) -> Poisson injection -> foreground filter -> difference mask.
A sample whose attempt fails (no valid centre even after shrinking R', or a nearly empty mask) is
redrawn with the next attempt's keys; after ``max_attempts`` it is returned unchanged and labelled
normal. A batch never fails because of one sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.foreground import ForegroundCache, ForegroundFn, close, dilate, resolve
from cai_aug.engine.location import pick_uniform, valid_centres
from cai_aug.engine.masks import difference_mask
from cai_aug.engine.matching import (
    LARGE,
    RANGE_LOW,
    TYPE_NAMES,
    bbox_size,
    draw_ratio,
    draw_source,
    draw_synthesis_type,
    source_type,
    synthesis_probabilities,
    warn_fallback,
)
from cai_aug.engine.resample import crop, paste, pattern_size, render_patterns
from cai_aug.io.coerce import as_float_batch, restore_layout
from cai_aug.poisson.solver import poisson_blend

MODES = ("normal", "mixed")


@dataclass
class CAIResult:
    """Pseudo anomalies for a batch.

    ``images``: ``(B, C, H, W)`` (the caller's dtype and layout); ``masks``: ``(B, 1, H, W)`` float
    {0, 1}; ``labels``: ``(B,)`` float {0, 1}; ``info``: one dict per sample (source id and class, source
    and synthesis type, R, R', scale, location, attempts, solver iterations and residual).
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    info: list[dict] = field(default_factory=list)

    def __iter__(self):
        return iter((self.images, self.masks, self.labels))


@dataclass
class _Attempt:
    """Outputs of one attempt for a subset of the batch (all tensors on the compute device)."""

    images: torch.Tensor
    masks: torch.Tensor
    success: torch.Tensor
    source: torch.Tensor
    synthesis: torch.Tensor
    ratio: torch.Tensor
    ratio_prime: torch.Tensor
    scale: torch.Tensor
    centre: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    fallback: torch.Tensor


class CAI:
    """Cross-domain anomaly injection.

    Args:
        bank: the anomaly bank (sources).
        mode: ``"normal"`` (source gradients) or ``"mixed"`` (larger of source and target gradients).
        quotas: ``(Nl, Nm, Ns)``; online they are the probabilities of large, medium, small.
        foreground: ``"auto"``, ``"none"``, ``"rembg"`` or a callable ``(B,C,H,W) -> (B,1,H,W)``.
        threshold: T of the difference mask, in image units ([0, 1] scale; 7/255 by default).
        margin: size of the square kernel that closes and then dilates the pattern mask into Omega.
        median: median filter size of the difference mask.
        min_mask_pixels: a pseudo anomaly with a smaller mask is redrawn.
        seed: base of every key; None draws one at construction.
        device: compute device (default: the images' device); results come back on the input's device.
        allow_upscale: allow ``r = R'/R > 1`` (the paper's default).
        ratio_decimals: ``R'`` resolution (the reference rounds to one decimal; None = continuous).
        max_attempts: redraws per sample before it is returned unchanged and labelled normal.
        use_poisson, use_stm, use_ils: ablation switches (paste under the mask; ``R'`` uniform in
            [0.1, 1] regardless of the source's type; centre anywhere with the bbox inside the image,
            foreground ignored).
        rtol, max_iter, backend: Poisson solver settings (see :func:`cai_aug.poisson_blend`).
    """

    def __init__(
        self,
        bank: AnomalyBank,
        mode: str = "normal",
        quotas: Sequence[float] = (4, 3, 3),
        foreground: str | ForegroundFn = "auto",
        threshold: float = 7 / 255,
        margin: int = 8,
        seed: int | None = None,
        device: torch.device | str | None = None,
        *,
        median: int = 7,
        min_mask_pixels: int = 10,
        allow_upscale: bool = True,
        ratio_decimals: int | None = 1,
        max_attempts: int = 8,
        use_poisson: bool = True,
        use_stm: bool = True,
        use_ils: bool = True,
        rtol: float = 1e-4,
        max_iter: int = 200,
        backend: str = "auto",
    ) -> None:
        if not isinstance(bank, AnomalyBank):
            raise TypeError(f"bank must be an AnomalyBank, got {type(bank).__name__}")
        if len(bank) == 0:
            raise ValueError("the anomaly bank is empty")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(tuple(quotas)) != 3:
            raise ValueError(f"quotas must be (Nl, Nm, Ns), got {quotas!r}")
        synthesis_probabilities(quotas)
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold is in image units [0, 1), got {threshold}")
        if margin < 0 or median < 1 or max_attempts < 1:
            raise ValueError("margin must be >= 0, median >= 1 and max_attempts >= 1")
        self.bank = bank
        self.mode = mode
        self.quotas = tuple(float(q) for q in quotas)
        self.foreground = foreground
        self.threshold = float(threshold)
        self.margin = int(margin)
        self.seed = int.from_bytes(os.urandom(7), "little") if seed is None else int(seed)
        self.device = None if device is None else torch.device(device)
        self.median = median
        self.min_mask_pixels = min_mask_pixels
        self.allow_upscale = allow_upscale
        self.ratio_decimals = ratio_decimals
        self.max_attempts = max_attempts
        self.use_poisson = use_poisson
        self.use_stm = use_stm
        self.use_ils = use_ils
        self.rtol = rtol
        self.max_iter = max_iter
        self.backend = backend
        self._foreground = ForegroundCache(resolve(foreground))
        self._calls = 0
        self._warned_fallback = False

    # ------------------------------------------------------------------ keys
    def sample_keys(
        self, image_keys: Sequence[int | str], anomaly_index: int | Sequence[int] = 0, epoch: int = 0
    ) -> torch.Tensor:
        """Keys ``(B,)`` for image keys (e.g. paths relative to the input folder), keyed by this seed."""
        return rng.sample_keys(self.seed, image_keys, anomaly_index, epoch)

    def _default_keys(self, batch: int) -> torch.Tensor:
        """``(seed, rank, call counter, position)`` keys for a batch without image keys."""
        rank = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        call, self._calls = self._calls, self._calls + 1
        base = torch.tensor(rng.sample_key(self.seed, "rank", rank, "call", call))
        return rng.fold(base, torch.arange(batch))

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        images: torch.Tensor,
        keys: torch.Tensor | Sequence[int | str] | None = None,
        image_ids: Sequence[str] | None = None,
        foregrounds: torch.Tensor | None = None,
        plan: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CAIResult:
        """Make one pseudo anomaly per image.

        Args:
            images: ``(B, C, H, W)`` or ``(C, H, W)``, float in [0, 1] or uint8, C = 1 or 3.
            keys: ``(B,)`` int64 sample keys, or image keys (str/int, hashed with the seed), or None
                for ``(seed, rank, call counter, position)``.
            image_ids: ids for the foreground cache (offline: the image path).
            foregrounds: precomputed ``(B, 1, H, W)`` foregrounds (skips estimation).
            plan: forced ``(source index (B,), synthesis type (B,))`` per sample, as the offline
                Algorithm 1 decides them (:func:`cai_aug.synthesize`); R' and the location are still drawn.
        """
        x, layout = as_float_batch(images)
        batch = x.shape[0]
        output_device = x.device
        device = self.device or x.device
        x = x.to(device)
        keys = self._keys(keys, batch).to(device)
        if foregrounds is None:
            foreground = self._foreground(x, image_ids)
        else:
            if foregrounds.shape != (batch, 1, *x.shape[-2:]):
                raise ValueError(f"foregrounds must be {(batch, 1, *x.shape[-2:])}, got {tuple(foregrounds.shape)}")
            foreground = foregrounds.to(device) > 0.5 if foregrounds.dtype != torch.bool else foregrounds.to(device)
        if not self.use_ils:
            foreground = torch.ones_like(foreground)

        out_images, out_masks = x.clone(), torch.zeros_like(x[:, :1])
        record = _Record(batch, device)
        pending = torch.arange(batch, device=device)
        for attempt in range(self.max_attempts):
            attempt_keys = rng.derive(keys[pending], attempt)
            forced = None if plan is None else (plan[0].to(device)[pending], plan[1].to(device)[pending])
            result = self._attempt(x[pending], foreground[pending], attempt_keys, forced)
            done = pending[result.success]
            out_images[done] = result.images[result.success]
            out_masks[done] = result.masks[result.success].float()
            record.update(pending, result, attempt + 1)
            pending = pending[~result.success]
            if pending.numel() == 0:
                break
        if record.fallback.any() and not self._warned_fallback:
            self._warned_fallback = True
            warn_fallback(int(record.fallback.sum()))
        labels = record.success.float()
        info = record.to_info(self.bank)
        return CAIResult(
            images=restore_layout(out_images.to(output_device), layout),
            masks=out_masks.to(output_device) if layout.batched else out_masks[0].to(output_device),
            labels=labels.to(output_device) if layout.batched else labels[0].to(output_device),
            info=info,
        )

    def _keys(self, keys, batch: int) -> torch.Tensor:
        if keys is None:
            return self._default_keys(batch)
        if isinstance(keys, torch.Tensor):
            keys = keys.reshape(-1)
            if keys.dtype != torch.int64:
                raise TypeError(f"keys must be an int64 tensor, got {keys.dtype}")
        else:
            keys = self.sample_keys(list(keys))
        if keys.shape[0] != batch:
            raise ValueError(f"got {keys.shape[0]} keys for a batch of {batch}")
        return keys

    # ------------------------------------------------------------------ one attempt
    def _attempt(
        self,
        images: torch.Tensor,
        foreground: torch.Tensor,
        keys: torch.Tensor,
        forced: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> _Attempt:
        device = images.device
        batch, channels, height, width = images.shape
        storage = self.bank.storage_on(device)
        sizes = storage.bbox[:, 2:].amax(dim=1)  # sa, (N,)
        target_size = bbox_size(foreground).clamp(min=1)  # sf, (B,)
        ratio_all = sizes[None, :] / target_size[:, None]  # (B, N)

        if forced is not None:
            source, synthesis = forced
            fallback = torch.zeros(batch, dtype=torch.bool, device=device)
            ratio = ratio_all.gather(1, source.clamp(min=0)[:, None])[:, 0]
            ratio_prime = draw_ratio(
                keys,
                synthesis.clamp(min=1),
                ratio,
                decimals=self.ratio_decimals,
                allow_upscale=self.allow_upscale,
            )
        elif self.use_stm:
            types = source_type(ratio_all)
            wanted = draw_synthesis_type(keys, self.quotas)
            source, synthesis, fallback = draw_source(keys, types, wanted)
            ratio = ratio_all.gather(1, source.clamp(min=0)[:, None])[:, 0]
            ratio_prime = draw_ratio(
                keys,
                synthesis.clamp(min=1),
                ratio,
                decimals=self.ratio_decimals,
                allow_upscale=self.allow_upscale,
            )
        else:
            count = torch.full((batch,), len(self.bank), device=device)
            source = rng.randint(keys, rng.Stream.SOURCE, count)
            ratio = ratio_all.gather(1, source[:, None])[:, 0]
            u = rng.uniform(keys, rng.Stream.RATIO)[:, 0]
            ratio_prime = 0.1 + u * 0.9
            if self.ratio_decimals is not None:
                ratio_prime = ratio_prime.mul(10**self.ratio_decimals).round() / 10**self.ratio_decimals
            synthesis = source_type(ratio_prime.float()).clamp(1, LARGE)
            fallback = torch.zeros(batch, dtype=torch.bool, device=device)
        usable = source >= 0
        source = source.clamp(min=0)
        bbox = storage.bbox[source]

        # ILS, shrinking R' to its type's lower bound when no centre fits.
        scale = ratio_prime / ratio.double()
        pattern_h, pattern_w = pattern_size(bbox, scale)
        valid = valid_centres(foreground, pattern_h, pattern_w)
        if self.use_stm or forced is not None:
            shrunk = torch.tensor(RANGE_LOW, device=device, dtype=torch.float64)[synthesis.clamp(min=1)]
            shrunk_scale = shrunk / ratio.double()
            shrunk_h, shrunk_w = pattern_size(bbox, shrunk_scale)
            shrunk_valid = valid_centres(foreground, shrunk_h, shrunk_w)
            use_shrunk = ~valid.flatten(1).any(dim=1)
            valid = torch.where(use_shrunk[:, None, None], shrunk_valid, valid)
            ratio_prime = torch.where(use_shrunk, shrunk, ratio_prime)
            scale = torch.where(use_shrunk, shrunk_scale, scale)
            pattern_h = torch.where(use_shrunk, shrunk_h, pattern_h)
            pattern_w = torch.where(use_shrunk, shrunk_w, pattern_w)
        centre, found = pick_uniform(keys, valid)
        placed = usable & found

        # Resample the sources into canvases around their patterns.
        pad = self.margin + 2
        canvas_h = int(pattern_h.max()) + 2 * pad
        canvas_w = int(pattern_w.max()) + 2 * pad
        pattern_rgb, pattern_mask = render_patterns(storage, source, pattern_h, pattern_w, canvas_h, canvas_w, pad)
        if channels == 1:
            luma = torch.tensor([0.299, 0.587, 0.114], device=device)
            pattern_rgb = (pattern_rgb * luma[None, :, None, None]).sum(dim=1, keepdim=True)
        origin_y = centre[:, 0] - pattern_h // 2 - pad
        origin_x = centre[:, 1] - pattern_w // 2 - pad
        omega = dilate(close(pattern_mask, self.margin), self.margin) if self.margin > 0 else pattern_mask
        _, inside = crop(images[:, :1], origin_y, origin_x, canvas_h, canvas_w)
        omega &= inside & placed[:, None, None, None]

        source_full = paste(images, pattern_rgb, origin_y, origin_x)
        region = paste(torch.zeros_like(images[:, :1]), omega.float(), origin_y, origin_x) > 0.5
        iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        residual = torch.zeros(batch, dtype=torch.float32, device=device)
        if self.use_poisson:
            blended, stats = poisson_blend(
                images,
                source_full,
                region,
                self.mode,
                rtol=self.rtol,
                max_iter=self.max_iter,
                backend=self.backend,
                return_stats=True,
            )
            blended = blended.clamp(0, 1)
            iterations, residual = stats.iterations.to(device), stats.residual.to(device).float()
        else:
            pasted = paste(torch.zeros_like(images[:, :1]), pattern_mask.float(), origin_y, origin_x) > 0.5
            blended = torch.where(pasted, source_full, images)
        if self.use_ils:
            blended = torch.where(foreground, blended, images)
        masks = difference_mask(blended, images, region, self.threshold, self.median)
        success = placed & (masks.flatten(1).sum(dim=1) >= self.min_mask_pixels)
        return _Attempt(
            images=blended,
            masks=masks,
            success=success,
            source=torch.where(usable, source, -1),
            synthesis=synthesis,
            ratio=ratio.double(),
            ratio_prime=ratio_prime.double(),
            scale=scale.double(),
            centre=centre,
            iterations=iterations,
            residual=residual,
            fallback=fallback & success,
        )


# What an attempt decided and measured per sample, copied into the record of the attempt kept.
_DECISIONS = ("source", "synthesis", "ratio", "ratio_prime", "scale", "centre", "iterations", "residual")


class _Record:
    """Per-sample decisions of the attempt that was kept (or the last one tried)."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.source = torch.full((batch,), -1, dtype=torch.int64, device=device)
        self.synthesis = torch.zeros(batch, dtype=torch.int64, device=device)
        self.ratio = torch.zeros(batch, dtype=torch.float64, device=device)
        self.ratio_prime = torch.zeros(batch, dtype=torch.float64, device=device)
        self.scale = torch.zeros(batch, dtype=torch.float64, device=device)
        self.centre = torch.zeros(batch, 2, dtype=torch.int64, device=device)
        self.iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        self.residual = torch.zeros(batch, dtype=torch.float32, device=device)
        self.attempts = torch.zeros(batch, dtype=torch.int64, device=device)
        self.success = torch.zeros(batch, dtype=torch.bool, device=device)
        self.fallback = torch.zeros(batch, dtype=torch.bool, device=device)

    def update(self, rows: torch.Tensor, result: _Attempt, attempt: int) -> None:
        for name in _DECISIONS:
            getattr(self, name)[rows] = getattr(result, name)
        self.attempts[rows] = attempt
        self.success[rows] = result.success
        self.fallback[rows] = result.fallback

    def to_info(self, bank: AnomalyBank) -> list[dict]:
        # One transfer for the whole batch, not one per sample.
        values = {name: getattr(self, name).cpu().tolist() for name in (*_DECISIONS, "attempts", "success")}
        info = []
        for i in range(len(values["source"])):
            source = values["source"][i]
            entry = bank.entries[source] if source >= 0 else None
            ratio = values["ratio"][i]
            info.append(
                {
                    "label": int(values["success"][i]),
                    "source_id": entry.id if entry else None,
                    "source_class": entry.cls if entry else None,
                    "source_dataset": entry.dataset if entry else None,
                    "source_type": TYPE_NAMES[int(source_type(torch.tensor(ratio)))] if entry else None,
                    "synthesis_type": TYPE_NAMES[values["synthesis"][i]] if entry else None,
                    "R": round(ratio, 6),
                    "R_prime": round(values["ratio_prime"][i], 6),
                    "scale": round(values["scale"][i], 6),
                    "location": values["centre"][i],
                    "attempts": values["attempts"][i],
                    "poisson_iterations": values["iterations"][i],
                    "poisson_residual": values["residual"][i],
                }
            )
        return info
