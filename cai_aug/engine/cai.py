"""The CAI engine: ``anomalies`` pseudo anomalies per input image, batched on any device.

The ``k`` anomalies of an image are ``k`` samples of one batch (``k B`` samples for ``B`` images), each
with its own key, all drawn and placed together. Overlap rule (``config.overlap``):

- ``"stack"`` (default): every anomaly is placed on its own; one whose region would meet an earlier
  one's (a lower slot of the same image) is solved after it, on the image that already holds it, so the
  result is that of injecting them one after the other, and overlapping anomalies merge into one
  compound defect. The samples of a pass are solved in layers: layer 0 (all that meet no earlier one,
  usually nearly all) in one batched solve, then each layer on top of the ones before.
- ``"apart"``: a later draw is placed clear of the image's earlier anomalies (:class:`_Kept`), so
  regions never meet nor touch and all are solved in one batched pass.

Per sample (all steps batched, every random decision keyed per sample, see :mod:`cai_aug.engine.rng`):
foreground -> plan (STM/MAS: synthesis type, source, R') -> place (ILS: centre, shrinking R' when
nothing fits) -> inject (source resampled into a canvas, Omega = dilate(close(mask)), Poisson on the
canvas, foreground filter) -> mask (difference mask; the image's mask is the union). A sample whose
attempt fails (no valid centre even after shrinking R' (or clear of the image's other anomalies), a
region that leaves no known pixel, or a nearly empty mask) is redrawn with the next attempt's keys,
on the image as it is then; after ``max_attempts`` it is given up (an image none of whose anomalies
succeeded is returned unchanged and labelled normal). A batch never fails because of one sample.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cai_aug.engine import rng
from cai_aug.engine.bank import AnomalyBank
from cai_aug.engine.config import MODES, CAIConfig, check_device
from cai_aug.engine.foreground import ForegroundCache, resolve
from cai_aug.engine.injection import Injection, inject, injection_mask, mixed_guidance, paste_weights
from cai_aug.engine.location import Placement, boxes_meet, place_pattern
from cai_aug.engine.matching import (
    TYPE_NAMES,
    SynthesisPlan,
    plan_synthesis,
    size_ratios,
    source_type,
    warn_fallback,
)
from cai_aug.engine.resample import paste_, windows, writes_in_order
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
class _Canvases:
    """Injected canvases of some samples of an attempt: ``injection`` and ``masks`` (:mod:`cai_aug.engine.
    injection`), and ``samples`` ``(m,)``, the attempt's sample of each canvas (None: canvas ``i`` is
    sample ``i``, all of them)."""

    injection: Injection
    masks: torch.Tensor
    samples: torch.Tensor | None = None

    def write_(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        rows: torch.Tensor,
        slot: torch.Tensor | None,
        keep: torch.Tensor,
        union: bool = False,
    ) -> None:
        """Paste the canvases of samples ``keep`` (``(n,)`` over the attempt) into ``images`` / ``masks``
        ``(B, ., H, W)`` at ``rows`` (the image of each sample), in place.

        ``slot``: ``(n,)`` the anomaly slot of each sample, when an image has several: then only each
        canvas's region is written (the rest of its window may hold another anomaly of the image), one
        slot at a time, so that one call never writes two windows of one image. ``union``: the written
        mask is the union with the image's mask there (an anomaly stacked on an earlier one may leave
        part of it unchanged, which stays masked).
        """
        injection = self.injection
        if self.samples is not None:
            rows, keep = rows[self.samples], keep[self.samples]
            slot = None if slot is None else slot[self.samples]
        if slot is None and not union and bool(keep.all()):  # the usual case: no subset copies of the canvases
            paste_(images, injection.images, injection.origin_y, injection.origin_x, rows)
            paste_(masks, self.masks, injection.origin_y, injection.origin_x, rows)
            return
        if writes_in_order(images):
            # one call for all slots: the windows are written one after the other, each inside its region
            index = keep.nonzero()[:, 0]
            origin_y, origin_x, at = injection.origin_y[index], injection.origin_x[index], rows[index]
            where = None if slot is None else injection.region
            paste_(images, injection.images, origin_y, origin_x, at, where=where, pick=index)
            if union:
                below = windows(masks, origin_y, origin_x, *self.masks.shape[-2:], at)
                where = None if where is None else where[index]
                paste_(masks, self.masks[index] | below, origin_y, origin_x, at, where=where)
            else:
                paste_(masks, self.masks, origin_y, origin_x, at, where=where, pick=index)
            return
        groups = [keep] if slot is None else [keep & (slot == value) for value in slot[keep].unique().tolist()]
        for group in groups:
            index = group.nonzero()[:, 0]
            origin_y, origin_x = injection.origin_y[index], injection.origin_x[index]
            where = None if slot is None else injection.region[index]
            canvas_masks = self.masks[index]
            if union:
                canvas_masks = canvas_masks | windows(masks, origin_y, origin_x, *canvas_masks.shape[-2:], rows[index])
            paste_(images, injection.images[index], origin_y, origin_x, rows[index], where=where)
            paste_(masks, canvas_masks, origin_y, origin_x, rows[index], where=where)


@dataclass
class _Attempt:
    """Outputs of one attempt for a subset of the batch (all tensors on the compute device).

    ``canvases``: the injected canvases, in groups of similar size; only the samples that succeed are
    written into the output images, never a full copy of the subset.
    """

    canvases: list[_Canvases]
    success: torch.Tensor
    source: torch.Tensor
    synthesis: torch.Tensor
    ratio: torch.Tensor
    ratio_prime: torch.Tensor
    scale: torch.Tensor
    centre: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    mixed: torch.Tensor
    fallback: torch.Tensor

    @classmethod
    def collect(
        cls,
        plan: SynthesisPlan,
        placement: Placement,
        canvases: list[_Canvases],
        success: torch.Tensor,
        mixed: torch.Tensor,
    ) -> _Attempt:
        """The attempt's canvases and its per-sample decisions."""
        if len(canvases) == 1 and canvases[0].samples is None:
            iterations, residual = canvases[0].injection.iterations, canvases[0].injection.residual
        else:
            iterations = torch.zeros(success.shape, dtype=torch.int64, device=success.device)
            residual = torch.zeros(success.shape, dtype=torch.float32, device=success.device)
            for group in canvases:
                iterations[group.samples] = group.injection.iterations
                residual[group.samples] = group.injection.residual
        return cls(
            canvases=canvases,
            success=success,
            source=plan.source,
            synthesis=plan.synthesis,
            ratio=plan.ratio,
            ratio_prime=placement.ratio_prime,
            scale=placement.scale,
            centre=placement.centre,
            height=placement.height,
            width=placement.width,
            iterations=iterations,
            residual=residual,
            mixed=mixed,
            fallback=plan.fallback & success,
        )

    def write_(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        rows: torch.Tensor,
        slot: torch.Tensor | None = None,
        union: bool = False,
    ) -> None:
        """Paste the successful samples' canvases into ``images`` / ``masks`` at ``rows`` (the image of each
        of this attempt's samples), in place (see :meth:`_Canvases.write_`)."""
        for group in self.canvases:
            group.write_(images, masks, rows, slot, self.success, union)

    def overlay(self, which: torch.Tensor, later: _Attempt) -> _Attempt:
        """This attempt with ``later``'s solve of the samples ``which`` (``(n,)`` bool) written over it:
        the decisions are the same draw's, only the solve's outcome differs."""
        success = torch.where(which, later.success, self.success)
        return dataclasses.replace(
            self,
            canvases=self.canvases + later.canvases,
            success=success,
            iterations=torch.where(which, later.iterations, self.iterations),
            residual=torch.where(which, later.residual, self.residual),
            fallback=torch.where(which, later.fallback, self.fallback),
        )


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
        """Make pseudo anomalies: ``config.anomalies`` per image, all drawn and solved in one batched pass.

        The anomalies of an image have keys ``key`` (the first) and ``rng.derive(key, ANOTHER, slot)``;
        where two meet, ``config.overlap`` decides: the later one is solved on top of the earlier one
        (``"stack"``, the result of injecting them one after the other) or placed clear of it
        (``"apart"``).
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
        result = self.run(x, keys, image_ids, foregrounds, plan)
        return CAIResult(
            images=restore_layout(result.images, layout),
            masks=result.masks if layout.batched else result.masks[0],
            labels=result.labels if layout.batched else result.labels[0],
            info=result.info,
        )

    def run(
        self,
        x: torch.Tensor,
        keys: torch.Tensor | Sequence[int | str] | None = None,
        image_ids: Sequence[str] | None = None,
        foregrounds: torch.Tensor | None = None,
        plan: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CAIResult:
        """:meth:`__call__` on a batch that its caller has already checked: no second validation pass.

        Why: the check reads the whole batch (a device-to-host sync on a GPU); a front end checks its
        input once, at the outermost layer, and hands the engine the result.

        Args:
            x: ``(B, C, H, W)`` float32 in [0, 1], as :func:`cai_aug.io.coerce.as_float_batch` returns it.
            keys, image_ids, foregrounds, plan: as in :meth:`__call__`.

        Returns:
            a :class:`CAIResult` with ``(B, C, H, W)`` float32 images, ``(B, 1, H, W)`` masks and ``(B,)``
            labels on ``x``'s device.
        """
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

        slots = self.config.anomalies
        out_images, out_masks, record = self._inject(x, foreground, keys, plan)
        labels = record.success.reshape(slots, batch).any(dim=0)
        entries = record.to_info(self.bank)
        info = entries[:batch]
        # several anomalies per image: info[i] holds the first one's decisions, "more" the others'
        for slot in range(1, slots):
            for entry, extra in zip(info, entries[slot * batch : (slot + 1) * batch]):
                entry.setdefault("more", []).append(extra)
        if slots > 1:
            for entry, label in zip(info, labels.tolist()):
                entry["label"] = int(label)
        return CAIResult(
            images=out_images.to(output_device),
            masks=out_masks.to(output_device, torch.float32),
            labels=labels.float().to(output_device),
            info=info,
        )

    def _inject(
        self,
        x: torch.Tensor,
        foreground: torch.Tensor,
        keys: torch.Tensor,
        plan: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, _Record]:
        """``anomalies`` pseudo anomalies per image, each redrawn up to ``max_attempts`` times.

        The ``k`` anomalies of ``B`` images are ``k B`` samples, slot-major (sample ``s B + b`` is anomaly
        ``s`` of image ``b``), each with its own attempt count: a pass draws every pending sample (a draw
        that finds no room moves on to its next attempt at once, :meth:`_draw`), then injects and masks
        all the placed ones together; the failures go to the next pass. Returns ``(images, masks,
        record)``, the record over the ``k B`` samples.
        """
        batch, device = x.shape[0], x.device
        slots, limit = self.config.anomalies, self.config.max_attempts
        count = batch * slots
        sample_keys = torch.cat([keys, *(rng.derive(keys, ANOTHER, slot) for slot in range(1, slots))])
        image_of = torch.arange(batch, device=device).repeat(slots)
        slot_of = torch.arange(slots, device=device).repeat_interleave(batch)
        if plan is not None:  # the plan is the first anomaly's; the others are drawn
            plan = (plan[0].to(device), plan[1].to(device))
        ratios = size_ratios(self.bank.storage_on(device).source_sizes, foreground)  # (B, N), for every draw
        out_images, out_masks = x.clone(), torch.zeros_like(x[:, :1], dtype=torch.bool)
        stack = slots > 1 and self.config.overlap == "stack"
        kept = _Kept(batch, slots, self.config.margin, device) if slots > 1 and not stack else None
        record = _Record(count, device)
        attempt = torch.zeros(count, dtype=torch.int64, device=device)
        pending = torch.arange(count, device=device)
        first_pass = True
        while pending.numel() > 0:
            # the first pass of a single anomaly per image is the whole batch: no per-sample copies
            rows = None if first_pass and slots == 1 else image_of[pending]
            draw = self._draw(foreground, ratios, sample_keys, attempt, pending, rows, slot_of, plan, kept)
            if stack:
                result = self._inject_stacked(
                    out_images, out_masks, foreground, draw, image_of[pending], slot_of[pending], first_pass
                )
            elif kept is not None:
                # kept apart: every region sees only normal pixels around it, so all solve on the input
                result = self._inject_drawn(x, foreground, draw)
                kept.add(image_of[pending], slot_of[pending], draw.placement.boxes(), result.success)
                result.write_(out_images, out_masks, image_of[pending], slot_of[pending])
            else:
                result = self._inject_drawn(x, foreground, draw)
                result.write_(out_images, out_masks, image_of[pending])
            tries = attempt[pending] + 1
            record.update(pending, result, tries)
            failed = ~result.success
            attempt[pending[failed]] = tries[failed]
            pending = pending[failed & (tries < limit)]
            first_pass = False
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

    # ------------------------------------------------------------------ one pass
    def _draw(
        self,
        foreground: torch.Tensor,
        ratios: torch.Tensor,
        sample_keys: torch.Tensor,
        attempt: torch.Tensor,
        pending: torch.Tensor,
        rows: torch.Tensor | None,
        slot_of: torch.Tensor,
        plan: tuple[torch.Tensor, torch.Tensor] | None,
        kept: _Kept | None,
    ) -> _Draw:
        """STM/MAS and ILS for the samples ``pending (n,)`` (images ``rows``, None: sample ``i`` is image
        ``i``), each at its attempt ``attempt[sample]``; a sample whose draw finds no room moves on to its
        next attempt (``attempt`` is updated in place) until it is placed or out of attempts.

        With ``kept`` (the ``"apart"`` overlap rule), draws are placed in slot order and each keeps clear
        of every box its image already has: kept in an earlier pass, or placed before it in this one.
        """
        config, batch = self.config, foreground.shape[0]
        storage = self.bank.storage_on(foreground.device)
        options = dict(use_stm=config.use_stm, decimals=config.ratio_decimals, allow_upscale=config.allow_upscale)
        placed_so_far = None if kept is None else kept.copy()
        draw: _Draw | None = None
        todo = torch.arange(pending.shape[0], device=pending.device)  # positions in pending still to place
        for _ in range(config.max_attempts):
            samples = pending[todo]
            keys = rng.fold(sample_keys[samples], attempt[samples])
            images = todo if rows is None else rows[todo]
            if rows is None and todo.shape[0] == batch:
                images = None  # the whole batch, in order
            plan_ = plan_synthesis(keys, ratios if images is None else ratios[images], config.quotas, **options)
            shrinkable = None
            if plan is not None:
                which = samples < batch
                index = samples.clamp(max=batch - 1)
                fixed = plan_synthesis(
                    keys, ratios if images is None else ratios[images], config.quotas,
                    forced=(plan[0][index], plan[1][index]), **options,
                )  # fmt: skip
                plan_ = SynthesisPlan(*(torch.where(which, f, p) for f, p in zip(_fields(fixed), _fields(plan_))))
                shrinkable = None if config.use_stm else which
            shrink = config.use_stm or shrinkable is not None
            sample_foreground = foreground if images is None else foreground[images]
            bbox = storage.bbox[plan_.source.clamp(min=0)]  # -1 (no usable source) is never placed

            inputs = (keys, sample_foreground, bbox, plan_.ratio, plan_.ratio_prime)
            inputs += (plan_.synthesis if shrink else None, shrinkable)

            if placed_so_far is None:
                placement = _place(inputs, None)
            elif rows[todo].unique().numel() == todo.numel():
                # one draw per image (later rounds, mostly): no draw of this round can meet another
                own = rows[todo]
                placement = _place(inputs, None, (placed_so_far.boxes[own], placed_so_far.kept[own], placed_so_far.gap))
                placed_so_far.add(own, slot_of[samples], placement.boxes(), (plan_.source >= 0) & placement.found)
            else:
                placement = _Placements(keys.shape[0], keys.device)
                sample_slot, sample_image = slot_of[samples], rows[todo]
                for value in range(placed_so_far.slots):  # lower slots first: later draws avoid them
                    part = (sample_slot == value).nonzero()[:, 0]
                    if part.numel() == 0:
                        continue
                    own = sample_image[part]
                    got = _place(inputs, part, (placed_so_far.boxes[own], placed_so_far.kept[own], placed_so_far.gap))
                    placement.set(part, got)
                    won = (plan_.source[part] >= 0) & got.found
                    placed_so_far.add(own, sample_slot[part], got.boxes(), won)
                placement = placement.done()
            placed = (plan_.source >= 0) & placement.found
            step = _Draw(samples, images, keys, plan_, placement, placed)
            draw = step if draw is None else draw.merge(todo, step)
            # no room: the next attempt's draw, at once (nothing else of the sample has been done)
            retry = ~placed & (attempt[samples] + 1 < config.max_attempts)
            if not bool(retry.any()):
                break
            attempt[samples[retry]] += 1
            todo = todo[retry]
        assert draw is not None
        return draw

    def _inject_stacked(
        self,
        out_images: torch.Tensor,
        out_masks: torch.Tensor,
        foreground: torch.Tensor,
        draw: _Draw,
        images: torch.Tensor,
        slots: torch.Tensor,
        first_pass: bool,
    ) -> _Attempt:
        """PE and the mask for a draw under the ``"stack"`` overlap rule, written into ``out_images`` /
        ``out_masks`` (``(B, ., H, W)``, in place) as it goes; ``images``, ``slots``: ``(n,)`` the image and
        anomaly slot of each sample of the draw; ``first_pass``: no anomaly has been written yet.

        The samples are solved in layers (:func:`stack_layers`): each layer in one batched solve on the
        images as the layers before it left them, so an anomaly that meets an earlier one of its image
        is solved on top of it.
        """
        gap = overlap_gap(self.config.margin)
        layers = stack_layers(draw.placement.boxes(), draw.placed, images, slots, out_images.shape[0], gap)
        result: _Attempt | None = None
        for layer in range(max(int(layers.max()), 0) + 1):
            which = layers == layer
            part = dataclasses.replace(draw, placed=draw.placed & which)
            got = self._inject_drawn(out_images, foreground, part)
            # the first layer of the first pass writes onto images without anomalies: nothing to unite with
            got.write_(out_images, out_masks, images, slots, union=layer > 0 or not first_pass)
            result = got if result is None else result.overlay(which, got)
        assert result is not None
        return result

    def _inject_drawn(self, images: torch.Tensor, foreground: torch.Tensor, draw: _Draw) -> _Attempt:
        """PE and the mask for the placed samples of a draw: their canvases and each sample's success."""
        config = self.config
        storage = self.bank.storage_on(images.device)
        mixed = mixed_guidance(draw.keys, config.mode)
        paste_weight = paste_weights(draw.keys, config.paste_weight)
        # only the placed samples are injected (the others fail as they are); on the CPU in groups of
        # similar pattern size, so that a small pattern's canvas is not as large as the batch's largest
        success = torch.zeros_like(draw.placed)
        canvases = []
        for samples in _size_groups(draw.placed, draw.placement, images.device):
            part = _Part(samples, draw.images, draw.plan.source.clamp(min=0), draw.placement, draw.placed, mixed,
                         paste_weight)  # fmt: skip
            # PE: the source resampled into a canvas, blended into the target's canvas inside Omega.
            injection = inject(
                images,
                foreground,
                storage,
                part.source,
                part.placement,
                part.placed,
                margin=config.margin,
                mode=part.mixed if config.mode == "both" else config.mode,
                use_poisson=config.use_poisson,
                use_ils=config.use_ils,
                grey_injection=config.grey_injection,
                paste_weight=part.paste_weight,
                rtol=config.rtol,
                atol=config.atol,
                max_iter=config.max_iter,
                backend=config.backend,
                rows=part.rows,
            )
            # Mask: what changed inside Omega (config.mask_rule); a (nearly) empty one makes the attempt fail.
            masks = injection_mask(injection, config.threshold, config.median, config.mask_rule)
            pixels = masks.flatten(1).view(torch.uint8).sum(dim=1, dtype=torch.int32)  # bytes: no int64 copy
            won = injection.placed & (pixels >= config.min_mask_pixels)
            if samples is None:
                success = won
            else:
                success[samples] = won
            canvases.append(_Canvases(injection, masks, samples))
        return _Attempt.collect(draw.plan, draw.placement, canvases, success, mixed)


# canvas sides (pattern plus padding) that split a CPU attempt into groups of similar size
_GROUP_SIDES = (64, 128)


def _size_groups(placed: torch.Tensor, placement: Placement, device: torch.device) -> list[torch.Tensor | None]:
    """The placed samples ``(n,)`` in groups to inject together: None (all of them) when every sample is
    placed and, on a GPU, all placed ones in one group (one launch per step beats smaller canvases); on
    the CPU, groups by the longer pattern side, so that canvases are about as large as their patterns."""
    if device.type != "cpu":
        return [None] if bool(placed.all()) else [placed.nonzero()[:, 0]]
    side = torch.maximum(placement.height, placement.width)
    bucket = torch.bucketize(side, torch.tensor(_GROUP_SIDES, device=device))
    bucket = torch.where(placed, bucket, -1)
    values = bucket.unique().tolist()
    if len(values) == 1 and values[0] >= 0:  # all placed, one size
        return [None]
    return [(bucket == value).nonzero()[:, 0] for value in values if value >= 0]


def _place(inputs: tuple, part: torch.Tensor | None, avoid=None) -> Placement:
    """:func:`place_pattern` of ``inputs`` (its per-sample arguments, None where unused) for the samples at
    ``part`` (None: all)."""
    chosen = [t if t is None or part is None else t[part] for t in inputs]
    return place_pattern(*chosen, avoid)


@dataclass
class _Draw:
    """What a pass drew for its samples (each at its own attempt): keys ``(n,)``, the plan, the placement
    and which are placed; ``images``: the image of each (None: sample ``i`` is image ``i``)."""

    samples: torch.Tensor
    images: torch.Tensor | None
    keys: torch.Tensor
    plan: SynthesisPlan
    placement: Placement
    placed: torch.Tensor

    def merge(self, positions: torch.Tensor, later: _Draw) -> _Draw:
        """This draw with ``later`` (a redraw of the samples at ``positions``) written over it."""

        def put(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return mine.index_put((positions,), theirs)

        plan = SynthesisPlan(*(put(m, t) for m, t in zip(_fields(self.plan), _fields(later.plan))))
        p, q = self.placement, later.placement
        placement = Placement(
            *(put(m, t) for m, t in zip(
                (p.centre, p.found, p.ratio_prime, p.scale, p.height, p.width),
                (q.centre, q.found, q.ratio_prime, q.scale, q.height, q.width),
            ))
        )  # fmt: skip
        keys, placed = put(self.keys, later.keys), put(self.placed, later.placed)
        return _Draw(self.samples, self.images, keys, plan, placement, placed)


class _Placements:
    """A placement assembled from parts of a batch (one per anomaly slot)."""

    def __init__(self, count: int, device: torch.device) -> None:
        self.count, self.device, self.parts = count, device, []

    def set(self, part: torch.Tensor, placement: Placement) -> None:
        self.parts.append((part, placement))

    def done(self) -> Placement:
        names = ("centre", "found", "ratio_prime", "scale", "height", "width")
        out = {}
        for name in names:
            first = getattr(self.parts[0][1], name)
            full = first.new_zeros((self.count, *first.shape[1:]))
            for part, placement in self.parts:
                full[part] = getattr(placement, name)
            out[name] = full
        return Placement(**out)


@dataclass
class _Part:
    """The samples of an attempt that are injected: all of them, or those at ``live`` (``(m,)`` int64)."""

    live: torch.Tensor | None
    rows: torch.Tensor | None
    source: torch.Tensor
    placement: Placement
    placed: torch.Tensor
    mixed: torch.Tensor
    paste_weight: torch.Tensor | float

    def __post_init__(self) -> None:
        live = self.live
        if live is None:
            return
        if self.rows is None:
            self.rows = live
        else:
            self.rows = self.rows[live]
        self.source, self.placed, self.mixed = self.source[live], self.placed[live], self.mixed[live]
        if isinstance(self.paste_weight, torch.Tensor):
            self.paste_weight = self.paste_weight[live]
        p = self.placement
        self.placement = Placement(
            p.centre[live], p.found[live], p.ratio_prime[live], p.scale[live], p.height[live], p.width[live]
        )


def overlap_gap(margin: int) -> int:
    """Free pixels between two pattern boxes that keep their solves apart.

    Omega lies within ``r = margin // 2 + 1`` of its pattern's bbox (:func:`cai_aug.engine.injection.
    blend_region`: the closing of an even-sized square shifts by one pixel), so boxes ``2 r + 1`` apart
    leave at least two pixels between their regions: neither region touches the other nor the pixels
    its solve reads around it.
    """
    return 2 * (max(margin, 0) // 2 + 1) + 1


def stack_layers(
    boxes: torch.Tensor, placed: torch.Tensor, images: torch.Tensor, slots: torch.Tensor, batch: int, gap: int
) -> torch.Tensor:
    """The solve layer of each sample under the ``"stack"`` overlap rule.

    A sample whose box comes within ``gap`` (:func:`boxes_meet`) of a placed sample of a lower slot of
    the same image is solved after it: its layer is one more than the highest such; the others are layer
    0. Samples solved in one layer therefore never meet.

    Args:
        boxes: ``(n, 4)`` pattern boxes ``(top, left, height, width)``.
        placed: ``(n,)`` bool; unplaced samples get layer -1 and meet nothing.
        images, slots: ``(n,)`` int64 image and anomaly slot of each sample (distinct pairs).
        batch: number of images.
    Returns:
        ``(n,)`` int64 layers.

    Examples:
        >>> boxes = torch.tensor([[0, 0, 8, 8], [4, 4, 8, 8], [40, 40, 8, 8]])
        >>> stack_layers(boxes, torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.int64),
        ...              torch.arange(3), 1, gap=9).tolist()
        [0, 1, 0]
    """
    slots_per_image = int(slots.max()) + 1 if slots.numel() else 1
    table = boxes.new_zeros((batch, slots_per_image, 4))
    table[images, slots] = boxes
    on = torch.zeros(batch, slots_per_image, dtype=torch.bool, device=boxes.device)
    on[images, slots] = placed
    layer = torch.full((batch, slots_per_image), -1, dtype=torch.int64, device=boxes.device)
    for later in range(slots_per_image):
        below = torch.zeros(batch, dtype=torch.int64, device=boxes.device)
        for earlier in range(later):
            meets = on[:, earlier] & boxes_meet(table[:, earlier], table[:, later], gap)
            below = torch.where(meets, torch.maximum(below, layer[:, earlier] + 1), below)
        layer[:, later] = torch.where(on[:, later], below, -1)
    return layer[images, slots]


class _Kept:
    """The boxes of each image's anomalies (several per image): the ``"apart"`` overlap rule's book.

    Later draws avoid earlier regions: a draw is placed only where its pattern bbox stays ``gap``
    pixels (:func:`overlap_gap`) from every box its image already has (kept in an earlier pass, or
    placed before it in this pass: a lower slot, or any slot in an earlier round of the pass), see
    :meth:`CAI._draw`; each solve then sees only the normal image around it.
    """

    def __init__(self, batch: int, slots: int, margin: int, device: torch.device) -> None:
        self.gap = overlap_gap(margin)
        self.slots = slots
        self.boxes = torch.zeros(batch, slots, 4, dtype=torch.int64, device=device)
        self.kept = torch.zeros(batch, slots, dtype=torch.bool, device=device)

    def copy(self) -> _Kept:
        twin = _Kept.__new__(_Kept)
        twin.gap, twin.slots, twin.boxes, twin.kept = self.gap, self.slots, self.boxes.clone(), self.kept.clone()
        return twin

    def add(self, images: torch.Tensor, slot: torch.Tensor, boxes: torch.Tensor, which: torch.Tensor) -> None:
        """Book ``boxes (n, 4)`` of anomalies ``slot (n,)`` of ``images (n,)`` where ``which (n,)``; the
        (image, slot) pairs are distinct, so the writes never race."""
        self.boxes[images, slot] = torch.where(which[:, None], boxes, self.boxes[images, slot])
        self.kept[images, slot] = self.kept[images, slot] | which


# What an attempt decided and measured per sample, copied into the record of the attempt kept.
_DECISIONS = (
    "source", "synthesis", "ratio", "ratio_prime", "scale", "centre", "height", "width", "iterations", "residual",
    "mixed",
)  # fmt: skip


def _fields(plan: SynthesisPlan) -> tuple[torch.Tensor, ...]:
    return (plan.source, plan.synthesis, plan.ratio, plan.ratio_prime, plan.fallback)


class _Record:
    """Per-sample decisions of the attempt that was kept (or the last one tried)."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.source = torch.full((batch,), -1, dtype=torch.int64, device=device)
        self.synthesis = torch.zeros(batch, dtype=torch.int64, device=device)
        self.ratio = torch.zeros(batch, dtype=torch.float64, device=device)
        self.ratio_prime = torch.zeros(batch, dtype=torch.float64, device=device)
        self.scale = torch.zeros(batch, dtype=torch.float64, device=device)
        self.centre = torch.zeros(batch, 2, dtype=torch.int64, device=device)
        self.height = torch.zeros(batch, dtype=torch.int64, device=device)
        self.width = torch.zeros(batch, dtype=torch.int64, device=device)
        self.iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        self.residual = torch.zeros(batch, dtype=torch.float32, device=device)
        self.mixed = torch.zeros(batch, dtype=torch.bool, device=device)
        self.attempts = torch.zeros(batch, dtype=torch.int64, device=device)
        self.success = torch.zeros(batch, dtype=torch.bool, device=device)
        self.fallback = torch.zeros(batch, dtype=torch.bool, device=device)

    def update(self, rows: torch.Tensor, result: _Attempt, attempt: torch.Tensor) -> None:
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
                    "box": _box(values["centre"][i], values["height"][i], values["width"][i]),
                    "attempts": values["attempts"][i],
                    "poisson_iterations": values["iterations"][i],
                    "poisson_residual": values["residual"][i],
                    "poisson_mode": "mixed" if values["mixed"][i] else "normal",
                }
            )
        return info


def _box(centre: list[int], height: int, width: int) -> list[int]:
    """The resized pattern's bbox ``[top, left, height, width]`` in image pixels (:func:`pattern_boxes`)."""
    return [centre[0] - height // 2, centre[1] - width // 2, height, width]
