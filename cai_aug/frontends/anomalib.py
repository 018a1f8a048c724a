"""anomalib: ``CAIAnomalyGenerator`` (a drop-in for DRAEM's generator) and ``CAIDraem`` (a ``Draem``).

anomalib 2.x DRAEM (``anomalib.models.image.draem.lightning_model.Draem``) makes its training anomalies
with ``self.augmenter = PerlinAnomalyGenerator(anomaly_source_path=..., blend_factor=beta)`` and calls
``augmented_image, anomaly_mask = self.augmenter(batch.image)``. ``CAIAnomalyGenerator`` has the same
constructor keywords and call contract (``anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator``):

- ``forward(img)``: ``img`` ``(C, H, W)`` or ``(B, C, H, W)``, float in [0, 1] (DRAEM uses no
  ``Normalize``); returns ``(augmented, mask)`` with ``augmented`` the shape/dtype of ``img`` and
  ``mask`` ``(1, H, W)`` or ``(B, 1, H, W)`` float in {0, 1} on the same device;
- ``probability``: chance that each image gets an anomaly (the others come back unchanged with an
  empty mask).

The generator imports neither anomalib nor torchvision (it is an ``nn.Module``, which is also what
anomalib's ``v2.Transform`` is). ``CAIDraem`` needs anomalib; it is built on first access
(``cai_aug.anomalib.CAIDraem``) so that importing the generator never pulls anomalib in.

"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cai_aug.frontends.augment import CAIAugment
from cai_aug.frontends.common import BankLike, check_p
from cai_aug.io.coerce import unit_range

# How far outside [0, 1] a float image may lie and still be clamped: an antialiased bicubic resize of
# a [0, 1] image overshoots by a few thousandths (1.004 measured), a de-normalisation round trip by
# float noise. ImageNet-normalised images reach about -2.1 and 2.6, far beyond this.
# PerlinAnomalyGenerator keywords that have no CAI counterpart: accepted so the class drops into DSR,
# GLASS and anomalib's synthetic data code, and warned about once per process.
_NO_CAI_MEANING = {
    "blend_factor": "CAI blends by Poisson editing, which sets the anomaly's values itself (see mode=)",
    "rotation_range": "CAI places the source pattern unrotated (it flips and rescales it)",
    "dual_mask": "CAI injects one real defect per image; its mask comes from the defect",
}
_WARNED: set[str] = set()


def _warn_once(keyword: str) -> None:
    if keyword not in _WARNED:
        _WARNED.add(keyword)
        warnings.warn(f"CAIAnomalyGenerator ignores {keyword}=: {_NO_CAI_MEANING[keyword]}", UserWarning, stacklevel=3)


class CAIAnomalyGenerator(CAIAugment):
    """CAI pseudo anomalies behind anomalib's ``PerlinAnomalyGenerator`` constructor and call contract.

    Parameters
    ----------
    bank : path or AnomalyBank
        Anomaly bank folder or ``AnomalyBank``; ``anomaly_source_path`` is accepted as an alias. The
        positional order is ``PerlinAnomalyGenerator``'s: ``(anomaly_source_path, probability,
        blend_factor)``; ``seed`` is keyword-only.
    probability : float
        Chance of an anomaly per image (a keyed draw, see ``CAIAugment``).
    seed : int or None
        ``int`` (default 0): keys ``(seed, rank, epoch, call, position)``, the same anomalies whatever the
        global RNG; call ``set_epoch`` from ``on_train_epoch_start`` to key them by epoch. ``None``:
        follow the host, that is Lightning's global seed (``$PL_GLOBAL_SEED``, set by
        ``seed_everything``) when set, else keys drawn from the global torch RNG (``torch.manual_seed``).
    anomaly_source_path : path, optional
        anomalib's name for the bank.
    blend_factor, rotation_range, dual_mask
        ``PerlinAnomalyGenerator``'s keywords, accepted so the class drops into DSR, GLASS and anomalib's
        synthetic data code; CAI has no counterpart (Poisson editing sets the blend, the defect its own
        shape), so a value given is ignored with one warning per process.
    classes, exclude : optional
        Restrict the bank (see ``AnomalyBank.from_folder``).
    **cai_kwargs
        Engine options of ``CAIAugment`` (``mode``, ``quotas``, ``threshold``, ``device`` ...).

    Notes
    -----
    Float input up to 0.05 outside [0, 1] (a bicubic resize's overshoot) is clamped; normalised input
    (e.g. ImageNet mean/std) raises a ``ValueError`` that says so.
    """

    def __init__(
        self,
        bank: BankLike | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | None = None,
        *,
        seed: int | None = 0,
        anomaly_source_path: str | os.PathLike | None = None,
        rotation_range: tuple[float, float] | None = None,
        dual_mask: bool | None = None,
        classes: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **cai_kwargs: Any,
    ) -> None:
        if bank is None and anomaly_source_path is None:
            raise ValueError("CAIAnomalyGenerator needs an anomaly bank: pass bank= (or anomaly_source_path=)")
        if bank is not None and anomaly_source_path is not None:
            raise ValueError("pass bank= or anomaly_source_path=, not both")
        for keyword, value in (("blend_factor", blend_factor), ("rotation_range", rotation_range)):
            if value is not None:
                _warn_once(keyword)
        if dual_mask:
            _warn_once("dual_mask")
        bank = bank if bank is not None else Path(anomaly_source_path)  # type: ignore[arg-type]
        super().__init__(
            bank, p=probability, seed=0 if seed is None else seed, classes=classes, exclude=exclude, **cai_kwargs
        )
        self.follow_host_seed = seed is None

    @property
    def probability(self) -> float:
        return self.p

    @probability.setter
    def probability(self, value: float) -> None:
        # anomalib code sets `augmenter.probability` after construction (as on PerlinAnomalyGenerator).
        self.p = check_p(value, "probability")

    def make_keys(self, batch: int) -> torch.Tensor:
        if not self.follow_host_seed:
            return super().make_keys(batch)
        lightning_seed = os.environ.get("PL_GLOBAL_SEED")
        if lightning_seed is not None:
            self.seed = int(lightning_seed)
            return super().make_keys(batch)
        # Host convention without a Lightning seed: the global torch RNG (torch.manual_seed), drawn on the
        # CPU so the keys, hence the anomalies, do not depend on the device.
        return torch.randint(-(2**63), 2**63 - 1, (batch,), dtype=torch.int64)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(C, H, W)`` -> ``(C, H, W), (1, H, W)``; ``(B, C, H, W)`` -> ``(B, C, H, W), (B, 1, H, W)``."""
        augmented, masks, _ = super().forward(unit_range(img, "images"))
        if not masks.dtype.is_floating_point:
            masks = masks.float()
        return augmented, masks


def _define_cai_draem() -> type:
    """Build ``CAIDraem`` (imports anomalib, hence torchvision: only when asked for)."""
    from anomalib.models import Draem

    class CAIDraem(Draem):
        """anomalib's DRAEM trained on CAI pseudo anomalies instead of Perlin noise over DTD textures.

        Usable as a class path in an ``anomalib train`` configuration (``model.class_path:
        cai_aug.anomalib.CAIDraem``); downloads nothing (DTD is never needed).

        Parameters
        ----------
        bank : path or AnomalyBank
            Anomaly bank folder (an ``AnomalyBank`` must have been loaded from a folder).
        probability : float
            Chance of an anomaly per training image.
        seed : int or None
            ``None`` (default): Lightning's global seed (``seed_everything`` / ``seed_everything: N`` in
            the configuration, read from ``$PL_GLOBAL_SEED``), else the global torch RNG. An ``int``:
            our keyed seed, independent of any global RNG.
        mode, quotas, foreground, threshold, margin, classes, exclude
            CAI engine and bank options (see ``cai_aug.CAI`` and ``AnomalyBank.from_folder``).
        enable_sspcab, sspcab_lambda, pre_processor, post_processor, evaluator, visualizer
            As for ``Draem``.

        Notes
        -----
        ``on_train_epoch_start`` calls the generator's ``set_epoch``; the epoch and call counters (and
        the seed in use) are saved in the checkpoint, so a run resumed mid-epoch continues the key
        sequence instead of repeating the anomalies it has already made.
        """

        def __init__(
            self,
            bank: str | os.PathLike,
            probability: float = 0.5,
            seed: int | None = None,
            mode: str = "normal",
            quotas: tuple[float, float, float] = (4, 3, 3),
            foreground: str = "auto",
            threshold: float = 7 / 255,
            margin: int = 8,
            classes: list[str] | None = None,
            exclude: str | list[str] | None = None,
            enable_sspcab: bool = False,
            sspcab_lambda: float = 0.1,
            pre_processor: Any = True,
            post_processor: Any = True,
            evaluator: Any = True,
            visualizer: Any = True,
        ) -> None:
            from cai_aug.frontends.common import bank_path

            folder = Path(bank_path(bank)).expanduser().resolve()
            if not folder.is_dir():
                raise FileNotFoundError(f"CAIDraem: the anomaly bank {folder} is not a folder")
            # Draem downloads DTD unless dtd_dir names an existing folder; the bank is one, and the
            # Perlin generator Draem builds over it is replaced right away.
            super().__init__(
                dtd_dir=folder,
                enable_sspcab=enable_sspcab,
                sspcab_lambda=sspcab_lambda,
                pre_processor=pre_processor,
                post_processor=post_processor,
                evaluator=evaluator,
                visualizer=visualizer,
            )
            self.augmenter = CAIAnomalyGenerator(
                bank if not isinstance(bank, (str, os.PathLike)) else folder,
                probability=probability,
                seed=seed,
                mode=mode,
                quotas=tuple(quotas),
                foreground=foreground,
                threshold=threshold,
                margin=margin,
                classes=classes,
                exclude=exclude,
            )
            self._resumed: tuple[int, int] | None = None

        def on_train_epoch_start(self) -> None:
            super().on_train_epoch_start()
            if self._resumed is not None and self._resumed[0] == self.current_epoch:
                # Resumed mid-epoch: continue this epoch's key sequence where the checkpoint left it.
                self.augmenter.epoch, self.augmenter.calls = self._resumed
            else:
                self.augmenter.set_epoch(self.current_epoch)
            self._resumed = None

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            super().on_save_checkpoint(checkpoint)
            checkpoint["cai_aug"] = {
                "epoch": self.augmenter.epoch,
                "calls": self.augmenter.calls,
                "seed": self.augmenter.seed,
                "follow_host_seed": self.augmenter.follow_host_seed,
            }

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            super().on_load_checkpoint(checkpoint)
            state = checkpoint.get("cai_aug")
            if state:
                self.augmenter.seed = int(state["seed"])
                self.augmenter.follow_host_seed = bool(state["follow_host_seed"])
                self.augmenter.epoch, self.augmenter.calls = int(state["epoch"]), int(state["calls"])
                self._resumed = (int(state["epoch"]), int(state["calls"]))

    # The public path, so that pickling, checkpoints and `anomalib train` configurations name it.
    CAIDraem.__module__ = "cai_aug.anomalib"
    CAIDraem.__qualname__ = "CAIDraem"
    return CAIDraem


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CAIDraem":
        if name not in _LAZY:
            _LAZY[name] = _define_cai_draem()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
