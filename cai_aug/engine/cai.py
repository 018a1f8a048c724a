"""The CAI engine: one pseudo anomaly per input image, batched on any device.

Per sample (all steps batched, every random decision keyed per sample, see :mod:`cai_aug.engine.rng`):
foreground -> plan (STM/MAS: synthesis type, source, R') -> place (ILS: centre, shrinking R' when
nothing fits) -> inject (source resampled into a canvas, Omega = dilate(close(mask)), Poisson on the
canvas, foreground filter) -> mask (difference mask). A sample whose attempt fails (no valid centre
even after shrinking R', or a nearly empty mask) is redrawn with the next attempt's keys; after
``max_attempts`` it is returned unchanged and labelled normal. A batch never fails because of one sample.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.config import MODES, CAIConfig, check_device
from cai_aug.engine.foreground import ForegroundCache, resolve
from cai_aug.engine.injection import Injection, inject, mixed_guidance, paste_weights
from cai_aug.engine.location import Placement, place_pattern
from cai_aug.engine.masks import difference_mask
from cai_aug.engine.matching import (
    TYPE_NAMES,
    SynthesisPlan,
    plan_synthesis,
    size_ratios,
    source_type,
    warn_fallback,
)
from cai_aug.engine.resample import paste_
from cai_aug.io.coerce import as_float_batch, restore_layout

__all__ = ["CAI", "CAIResult", "MODES"]

# Key part of the extra anomalies of an image (config.anomalies > 1): never an attempt number.
ANOTHER = 1_000_003

_OPTIONS = frozenset(CAIConfig.fields())


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
    """Outputs of one attempt for a subset of the batch (all tensors on the compute device).

    ``injection`` and ``masks`` are canvases (:mod:`cai_aug.engine.injection`): only the samples that
    succeed are written into the output images, never a full copy of the subset.
    """

    injection: Injection
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
    mixed: torch.Tensor
    fallback: torch.Tensor

    @classmethod
    def collect(
        cls,
        plan: SynthesisPlan,
        placement: Placement,
        injection: Injection,
        masks: torch.Tensor,
        success: torch.Tensor,
        mixed: torch.Tensor,
    ) -> _Attempt:
        """The attempt's canvases and its per-sample decisions."""
        return cls(
            injection=injection,
            masks=masks,
            success=success,
            source=plan.source,
            synthesis=plan.synthesis,
            ratio=plan.ratio,
            ratio_prime=placement.ratio_prime,
            scale=placement.scale,
            centre=placement.centre,
            iterations=injection.iterations,
            residual=injection.residual,
            mixed=mixed,
            fallback=plan.fallback & success,
        )

    def write_(self, images: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor) -> None:
        """Paste the successful samples' canvases into ``images`` / ``masks`` ``(B, ., H, W)`` at ``rows``
        (the batch rows of this attempt's samples), in place."""
        keep = self.success
        if bool(keep.all()):  # the usual case: no subset copies of the canvases
            kept_images, kept_masks, origin_y, origin_x = (
                self.injection.images,
                self.masks,
                self.injection.origin_y,
                self.injection.origin_x,
            )
        else:
            kept_images, kept_masks = self.injection.images[keep], self.masks[keep]
            origin_y, origin_x = self.injection.origin_y[keep], self.injection.origin_x[keep]
            rows = rows[keep]
        paste_(images, kept_images, origin_y, origin_x, rows)
        paste_(masks, kept_masks, origin_y, origin_x, rows)


class CAI:
    """Cross-domain anomaly injection.

    Args:
        bank: the anomaly bank (sources).
        config: a :class:`~cai_aug.engine.config.CAIConfig` (or its ``to_dict()``); None: the defaults.
        preset: instead of ``config``, a named configuration: ``"default"`` or ``"paper"`` (the paper's
            reference settings, :meth:`CAIConfig.preset`).
        seed: base of every key; None draws one at construction.
        device: compute device (default: the images' device); results come back on the input's device.
        **overrides: engine options on top of ``config``, by name (``mode``, ``quotas``, ``anomalies``,
            ``paste_weight`` ... every field of ``CAIConfig``, which documents and checks each).

    The options are read back as ``cai.config`` (and, as before, as attributes: ``cai.mode`` ...).
    A bad option fails here, at construction, with the option's name in the message.

    Examples:
        >>> cai = CAI(bank, mode="mixed", seed=0)                       # doctest: +SKIP
        >>> cai = CAI(bank, CAIConfig(mode="mixed"), seed=0)            # the same engine
        >>> cai = CAI(bank, preset="paper", seed=0)                     # the paper's settings
        >>> images, masks, labels = cai(batch)                          # doctest: +SKIP
    """

    def __init__(
        self,
        bank: AnomalyBank,
        config: CAIConfig | Mapping[str, Any] | None = None,
        *,
        preset: str | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(bank, AnomalyBank):
            raise TypeError(f"bank must be an AnomalyBank, got {type(bank).__name__}")
        if len(bank) == 0:
            raise ValueError("the anomaly bank is empty")
        if isinstance(config, str):  # CAI(bank, "mixed"): the second parameter used to be the mode
            raise TypeError(f"CAI's second parameter is a CAIConfig: pass the mode by keyword, mode={config!r}")
        self.bank = bank
        self.config = CAIConfig.build(config, preset=preset, **overrides)
        self.seed = int.from_bytes(os.urandom(7), "little") if seed is None else int(seed)
        self.device = check_device(device)
        self._foreground = ForegroundCache(resolve(self.config.foreground))
        self._calls = 0
        self._warned_fallback = False

    def __getattr__(self, name: str) -> Any:
        # Engine options stay readable as attributes (cai.mode, cai.quotas ...), as before CAIConfig.
        # Only reached when normal lookup fails; __dict__ is read directly so unpickling cannot recurse.
        config = self.__dict__.get("config")
        if config is not None and name in _OPTIONS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS:
            raise AttributeError(
                f"engine options are frozen: build a new engine with CAI(bank, cai.config.replace({name}=...))"
            )
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"CAI(bank={len(self.bank)} sources, {self.config!r}, seed={self.seed}, device={self.device})"

    def estimate_foreground(self, images: torch.Tensor, image_ids: Sequence[str] | None = None) -> torch.Tensor:
        """Foregrounds ``yn`` of ``(B, C, H, W)`` float images -> ``(B, 1, H, W)`` bool, cached per image id."""
        return self._foreground(images, image_ids)

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
        """Make pseudo anomalies: ``config.anomalies`` per image (one by default), one after the other.

        With several, ``info[i]`` holds the first one's decisions, its ``"label"`` says whether any was
        made, and ``info[i]["more"]`` the others' (each with its own ``"label"``).

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
            foreground = self.estimate_foreground(x, image_ids)
        else:
            if foregrounds.shape != (batch, 1, *x.shape[-2:]):
                raise ValueError(f"foregrounds must be {(batch, 1, *x.shape[-2:])}, got {tuple(foregrounds.shape)}")
            foreground = foregrounds.to(device) > 0.5 if foregrounds.dtype != torch.bool else foregrounds.to(device)
        if not self.config.use_ils:
            foreground = torch.ones_like(foreground)

        out_images, out_masks, record = self._inject(x, foreground, keys, plan)
        labels = record.success.clone()
        info = record.to_info(self.bank)
        # several anomalies per image: each one more injection into the result so far, with its own
        # key; its mask is taken against its own input, the image's mask is the union
        for slot in range(1, self.config.anomalies):
            out_images, more_masks, more = self._inject(out_images, foreground, rng.derive(keys, ANOTHER, slot))
            out_masks = torch.maximum(out_masks, more_masks)
            labels |= more.success
            for entry, extra in zip(info, more.to_info(self.bank)):
                entry.setdefault("more", []).append(extra)
        if self.config.anomalies > 1:
            for entry, label in zip(info, labels.tolist()):
                entry["label"] = int(label)
        labels = labels.float()
        return CAIResult(
            images=restore_layout(out_images.to(output_device), layout),
            masks=out_masks.to(output_device) if layout.batched else out_masks[0].to(output_device),
            labels=labels.to(output_device) if layout.batched else labels[0].to(output_device),
            info=info,
        )

    def _inject(
        self,
        x: torch.Tensor,
        foreground: torch.Tensor,
        keys: torch.Tensor,
        plan: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, _Record]:
        """One pseudo anomaly per image, redrawn up to ``max_attempts`` times: ``(images, masks, record)``."""
        batch, device = x.shape[0], x.device
        out_images, out_masks = x.clone(), torch.zeros_like(x[:, :1])
        record = _Record(batch, device)
        pending = torch.arange(batch, device=device)
        for attempt in range(self.config.max_attempts):
            attempt_keys = rng.derive(keys[pending], attempt)
            forced = None if plan is None else (plan[0].to(device)[pending], plan[1].to(device)[pending])
            # the first attempt runs on the whole batch: no copies of the images and foregrounds
            subset = (x, foreground) if attempt == 0 else (x[pending], foreground[pending])
            result = self._attempt(*subset, attempt_keys, forced)
            result.write_(out_images, out_masks, pending)
            record.update(pending, result, attempt + 1)
            pending = pending[~result.success]
            if pending.numel() == 0:
                break
        if record.fallback.any() and not self._warned_fallback:
            self._warned_fallback = True
            warn_fallback(int(record.fallback.sum()))
        return out_images, out_masks, record

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
        """One draw of Algorithm 1 for every sample: plan, place, inject, mask."""
        config = self.config
        storage = self.bank.storage_on(images.device)
        # STM/MAS: synthesis type, source and R' from the sources' sizes relative to the foreground.
        plan = plan_synthesis(
            keys,
            size_ratios(storage.source_sizes, foreground),
            config.quotas,
            forced=forced,
            use_stm=config.use_stm,
            decimals=config.ratio_decimals,
            allow_upscale=config.allow_upscale,
        )
        source = plan.source.clamp(min=0)  # -1 (no usable source) reads source 0 and is never placed
        # ILS: a centre on the foreground with the pattern inside the image (R' shrinks if none fits).
        shrinkable = config.use_stm or forced is not None
        placement = place_pattern(
            keys, foreground, storage.bbox[source], plan.ratio, plan.ratio_prime, plan.synthesis if shrinkable else None
        )
        placed = (plan.source >= 0) & placement.found
        # PE: the source resampled into a canvas, blended into the target's canvas inside Omega.
        mixed = mixed_guidance(keys, config.mode)
        injection = inject(
            images,
            foreground,
            storage,
            source,
            placement,
            placed,
            margin=config.margin,
            mode=mixed if config.mode == "both" else config.mode,
            use_poisson=config.use_poisson,
            use_ils=config.use_ils,
            grey_injection=config.grey_injection,
            paste_weight=paste_weights(keys, config.paste_weight),
            rtol=config.rtol,
            atol=config.atol,
            max_iter=config.max_iter,
            backend=config.backend,
        )
        # Mask: |Isa - In| > T inside Omega; a (nearly) empty one makes the attempt fail.
        masks = difference_mask(
            injection.images, injection.target, injection.region, config.threshold, config.median, config.mask_rule
        )
        pixels = masks.flatten(1).view(torch.uint8).sum(dim=1, dtype=torch.int32)  # bytes: no int64 copy
        success = placed & (pixels >= config.min_mask_pixels)
        return _Attempt.collect(plan, placement, injection, masks, success, mixed)


# What an attempt decided and measured per sample, copied into the record of the attempt kept.
_DECISIONS = ("source", "synthesis", "ratio", "ratio_prime", "scale", "centre", "iterations", "residual", "mixed")


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
        self.mixed = torch.zeros(batch, dtype=torch.bool, device=device)
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
                    "poisson_mode": "mixed" if values["mixed"][i] else "normal",
                }
            )
        return info
