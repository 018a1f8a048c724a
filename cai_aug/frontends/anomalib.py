"""anomalib: ``CAIAnomalyGenerator`` (a drop-in for DRAEM's generator) and ``CAIDraem`` (a ``Draem``).

anomalib 2.x DRAEM makes its training anomalies with ``self.augmenter =
PerlinAnomalyGenerator(anomaly_source_path=..., blend_factor=beta)`` and calls ``augmented_image,
anomaly_mask = self.augmenter(batch.image)``; ``CAIAnomalyGenerator`` has the same constructor and call
contract. It imports neither anomalib nor torchvision; ``CAIDraem`` needs anomalib, so it is built on
first access (``cai_aug.anomalib.CAIDraem``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cai_aug.frontends.augment import CAIAugment
from cai_aug.frontends.common import BankLike, ConfigLike, bank_path, check_bank

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
        Anomaly bank folder or ``AnomalyBank``; ``anomaly_source_path=`` is accepted as an alias. The
        positional order is ``PerlinAnomalyGenerator``'s: ``(anomaly_source_path, probability,
        blend_factor, rotation_range, dual_mask)``; everything else is keyword-only.
    probability : float
        Chance of an anomaly per image (a keyed draw, see ``CAIAugment``); settable.
    blend_factor, rotation_range, dual_mask
        ``PerlinAnomalyGenerator``'s arguments, accepted so the class drops into DRAEM, DSR, GLASS and
        anomalib's synthetic data code; CAI has no counterpart (Poisson editing sets the blend, the
        defect its own shape), so a value given is ignored with one warning per process.
    seed : int or None
        ``int`` (default 0): keys ``(seed, rank, epoch, call, position)``, the same anomalies whatever the
        global RNG; call ``set_epoch`` from ``on_train_epoch_start`` to key them by epoch. ``None``:
        follow the host, that is Lightning's global seed (``$PL_GLOBAL_SEED``, set by
        ``seed_everything``) when set, else keys drawn from the global torch RNG (``torch.manual_seed``).
    anomaly_source_path : path, optional
        anomalib's name for the bank.
    **kwargs
        Every other keyword of ``CAIAugment``: ``config``, ``preset``, any ``CAIConfig`` field,
        ``classes``, ``exclude``, ``device`` ...

    Notes
    -----
    ``forward(img)``: ``img`` ``(C, H, W)`` or ``(B, C, H, W)``, float in [0, 1] (DRAEM uses no
    ``Normalize``; up to 0.05 outside is clamped, normalised input raises a ``ValueError`` that says so);
    returns ``(augmented, mask)``, ``augmented`` the shape and dtype of ``img``, ``mask`` ``(1, H, W)``
    or ``(B, 1, H, W)`` float in {0, 1}, on the device of ``img``.
    """

    def __init__(
        self,
        bank: BankLike | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | None = None,
        rotation_range: tuple[float, float] | None = None,
        dual_mask: bool | None = None,
        *,
        seed: int | None = 0,
        anomaly_source_path: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if (bank is None) == (anomaly_source_path is None):
            raise ValueError("CAIAnomalyGenerator needs one anomaly bank: bank= or anomaly_source_path=")
        for keyword, value in (("blend_factor", blend_factor), ("rotation_range", rotation_range)):
            if value is not None:
                _warn_once(keyword)
        if dual_mask:
            _warn_once("dual_mask")
        super().__init__(bank if bank is not None else Path(anomaly_source_path), probability, seed, **kwargs)

    @property
    def probability(self) -> float:
        """anomalib's name for ``p`` (its code sets ``augmenter.probability`` after construction)."""
        return self.p

    @probability.setter
    def probability(self, value: float) -> None:
        self.p = value

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(C, H, W)`` -> ``(C, H, W), (1, H, W)``; ``(B, C, H, W)`` -> ``(B, C, H, W), (B, 1, H, W)``."""
        augmented, masks, _ = super().forward(img)
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
        config, preset : optional
            The engine options (a ``CAIConfig``, its ``to_dict()``, or a preset name such as ``"paper"``);
            the defaults are ``CAIConfig``'s.
        classes, exclude, device : optional
            As for ``CAIAnomalyGenerator``.
        beta
            ``Draem``'s blend factor of its Perlin anomalies: no meaning for CAI, ignored with a warning.
        enable_sspcab, sspcab_lambda, pre_processor, post_processor, evaluator, visualizer
            As for ``Draem``.
        **options
            Any ``CAIConfig`` field (``mode``, ``anomalies``, ``quotas`` ...) on top of ``config``.

        Notes
        -----
        ``on_train_epoch_start`` calls the generator's ``set_epoch``; the epoch and call counters (and
        the seed in use) are saved in the checkpoint, so a run resumed mid-epoch continues the key
        sequence instead of repeating the anomalies it has already made. The generator computes on the
        device of the batches, that is the model's.
        """

        def __init__(
            self,
            bank: str | os.PathLike,
            probability: float = 0.5,
            seed: int | None = None,
            config: ConfigLike = None,
            preset: str | None = None,
            classes: Sequence[str] | None = None,
            exclude: str | Sequence[str] | None = None,
            device: str | None = None,
            beta: float | tuple[float, float] | None = None,
            enable_sspcab: bool = False,
            sspcab_lambda: float = 0.1,
            pre_processor: Any = True,
            post_processor: Any = True,
            evaluator: Any = True,
            visualizer: Any = True,
            **options: Any,
        ) -> None:
            folder = bank_path(check_bank(bank))
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
                probability,
                beta,
                seed=seed,
                config=config,
                preset=preset,
                classes=classes,
                exclude=exclude,
                device=device,
                **options,
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
