"""The engine configuration: every option of :class:`~cai_aug.engine.cai.CAI`, its default and its check, once.

``CAIConfig`` is a frozen dataclass: validated at construction (a bad value fails where it is written,
not at the first call inside a DataLoader worker or a Ray actor), hashable (front ends key their engine
cache with it) and serialisable (``to_dict``/``from_dict`` give plain JSON values, as Albumentations'
``to_dict`` does for its transforms). Seed and device are not part of it: they say which anomalies and
where, not how anomalies are made, and every front end owns them itself.

Examples
--------
>>> from cai_aug.engine.config import CAIConfig
>>> config = CAIConfig(mode="mixed", quotas="4:3:3")
>>> config.quotas
(4.0, 3.0, 3.0)
>>> CAIConfig.from_dict(config.to_dict()) == config
True
>>> config.replace(margin=4).margin
4
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from cai_aug.engine.masks import MASK_RULES
from cai_aug.engine.matching import parse_quotas, synthesis_probabilities

Mode = Literal["normal", "mixed", "both"]
ForegroundMode = Literal["auto", "none", "rembg"]
Backend = Literal["auto", "torch", "cupy"]
Overlap = Literal["stack", "apart"]

#: Poisson guidance modes: source gradients, per pixel pair the larger of source and target gradient, or
#: either one per sample (half and half, drawn from the sample's key).
MODES: tuple[str, ...] = get_args(Mode)
#: How the anomalies of one image share it: a later one that meets an earlier one goes on top of it, or
#: later ones are placed clear of the earlier ones.
OVERLAPS: tuple[str, ...] = get_args(Overlap)
#: Foreground estimators by name (a callable ``(B, C, H, W) -> (B, 1, H, W)`` is accepted too).
FOREGROUNDS: tuple[str, ...] = get_args(ForegroundMode)
#: Poisson solver backends.
BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass(frozen=True)
class CAIConfig:
    """How the CAI engine makes pseudo anomalies (the library's defaults; ``preset="paper"`` gives the paper's).

    Parameters
    ----------
    mode : {"normal", "mixed", "both"}
        Poisson guidance: source gradients, the larger of source and target gradient per pixel pair, or
        ``"both"``: each sample draws one of the two with probability 1/2 (the reference code writes both
        kinds; which one trains the better detector depends on the domain, see the README).
    quotas : (Nl, Nm, Ns) or "Nl:Nm:Ns"
        Multi-scale quotas of large, medium and small synthesis types; online they are the
        probabilities of the types. Stored as a tuple of three floats.
    foreground : {"auto", "none", "rembg"} or callable
        Foreground estimator; a callable ``(B, C, H, W) -> (B, 1, H, W)`` works but does not serialise.
    threshold : float
        T of the difference mask in image units, in ``[0, 1)`` (7/255: the reference's ``> 7``).
    margin : int
        Size of the square kernel that closes and then dilates the pattern mask into Omega (>= 0).
    median : int
        Odd median (majority) filter size of the difference mask (1: no filter).
    mask_rule : {"hysteresis", "majority"}
        ``"majority"`` (the paper's): the difference above ``threshold``, median filtered; ``"hysteresis"``:
        that, plus every pixel above ``threshold`` connected to one changed by more than three times it,
        so a thin but clearly visible change is never taught as normal.
    min_mask_pixels : int
        A pseudo anomaly with a smaller mask is redrawn (>= 0).
    allow_upscale : bool
        Allow ``r = R' / R > 1`` (the paper's default).
    ratio_decimals : int or None
        Resolution of ``R'`` (the reference rounds to one decimal); None draws it continuously.
    max_attempts : int
        Draws per sample before it is returned unchanged and labelled normal (>= 1).
    anomalies : int
        Pseudo anomalies per image (>= 1), each with its own key, made together in one batched pass;
        the mask is their union.
    overlap : {"stack", "apart"}
        What happens where two anomalies of an image meet. ``"stack"`` (the default): each is placed
        on its own, and one that meets an earlier one is solved on top of it, as if they were injected
        one after the other (overlapping anomalies merge into one larger, compound defect);
        ``"apart"``: a later one is placed clear of the earlier ones' regions (redrawn where it would
        meet one), so every anomaly sits in normal surroundings.
    use_poisson, use_stm, use_ils : bool
        Ablation switches: paste under the mask instead of Poisson editing; ``R'`` uniform in
        ``[0.1, 1]`` whatever the source's type; centre anywhere with the box inside the image.
    atol : float or None
        Poisson stopping rule in image units: a plane stops once its largest pixel error is estimated
        below ``atol`` (1/255 by default: an error no one can see, and the CPU path's speed); None
        solves to ``rtol`` only (the exact solve, tested against a direct solver).
    grey_injection : bool
        A grey target (one channel, or three equal ones) receives the source's luminance only, never
        its colour (True, the default); False injects the source's colour as the paper does.
    paste_weight : float
        In ``[0, 1]``: each sample moves its Poisson result inside the pattern mask towards a plain
        paste of the source by a weight drawn uniformly in ``[0, paste_weight]`` (0, the paper: Poisson
        editing alone). Crisp-edged pseudo anomalies for domains whose defects have hard edges.
    rtol, max_iter, backend
        Poisson solver settings (see :func:`cai_aug.poisson_blend`); the first of ``rtol`` and ``atol``
        met stops a plane.

    Raises
    ------
    ValueError
        A value out of its range (the integer options' bounds are :data:`LIMITS`) or not one of its choices.
    TypeError
        A value of the wrong type (a string threshold, a float ``median`` with a fraction ...).

    Notes
    -----
    Front ends and the command line build one ``CAIConfig`` and pass it on; the keyword arguments
    they still accept go through :meth:`replace`, so every option is checked here and only here.
    """

    mode: Mode = "both"
    quotas: tuple[float, float, float] | str = (4.0, 3.0, 3.0)
    foreground: ForegroundMode | Callable[..., Any] = "auto"
    threshold: float = 7 / 255
    margin: int = 8
    median: int = 7
    mask_rule: str = "hysteresis"
    min_mask_pixels: int = 10
    allow_upscale: bool = True
    ratio_decimals: int | None = 1
    max_attempts: int = 8
    anomalies: int = 3
    overlap: Overlap = "stack"
    use_poisson: bool = True
    use_stm: bool = True
    use_ils: bool = True
    atol: float | None = 1 / 255
    grey_injection: bool = True
    paste_weight: float = 0.0
    rtol: float = 1e-4
    max_iter: int = 200
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        # Normalised values are written back so that equal settings compare and hash equal
        # ("4:3:3" == (4, 3, 3), margin 8.0 == 8).
        set_ = object.__setattr__
        set_(self, "mode", _choice("mode", self.mode, MODES))
        set_(self, "quotas", _quotas(self.quotas))
        set_(self, "foreground", _foreground(self.foreground))
        set_(self, "threshold", _real("threshold", self.threshold, 0.0, 1.0, "[0, 1) (image units: 7/255 = 7 of 255)"))
        set_(self, "margin", _integer("margin", self.margin, *LIMITS["margin"]))
        set_(self, "median", _integer("median", self.median, *LIMITS["median"]))
        if self.median % 2 == 0:
            raise ValueError(f"median must be an odd filter size, got {self.median}")
        set_(self, "mask_rule", _choice("mask_rule", self.mask_rule, MASK_RULES))
        set_(self, "min_mask_pixels", _integer("min_mask_pixels", self.min_mask_pixels, 0))
        set_(self, "allow_upscale", _boolean("allow_upscale", self.allow_upscale))
        if self.ratio_decimals is not None:
            set_(self, "ratio_decimals", _integer("ratio_decimals", self.ratio_decimals, *LIMITS["ratio_decimals"]))
        set_(self, "max_attempts", _integer("max_attempts", self.max_attempts, *LIMITS["max_attempts"]))
        set_(self, "anomalies", _integer("anomalies", self.anomalies, *LIMITS["anomalies"]))
        set_(self, "overlap", _choice("overlap", self.overlap, OVERLAPS))
        for name in ("use_poisson", "use_stm", "use_ils", "grey_injection"):
            set_(self, name, _boolean(name, getattr(self, name)))
        if self.atol is not None:
            set_(self, "atol", _real("atol", self.atol, 0.0, math.inf, "(0, inf) or None", low_open=True))
        set_(self, "paste_weight", _real("paste_weight", self.paste_weight, 0.0, 1.0, "[0, 1]", high_closed=True))
        set_(self, "rtol", _real("rtol", self.rtol, 0.0, math.inf, "(0, inf)", low_open=True))
        set_(self, "max_iter", _integer("max_iter", self.max_iter, *LIMITS["max_iter"]))
        set_(self, "backend", _choice("backend", self.backend, BACKENDS))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Names of the options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def preset(cls, name: str) -> CAIConfig:
        """The named configuration: ``"default"`` (this library's defaults) or ``"paper"`` (the paper's
        reference settings: normal guidance, the source's colour on every target, an exact Poisson solve).

        >>> CAIConfig.preset("paper").grey_injection
        False
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
        return cls(**PRESETS[name])

    @classmethod
    def build(
        cls, config: CAIConfig | Mapping[str, Any] | None = None, *, preset: str | None = None, **overrides: Any
    ) -> CAIConfig:
        """A config from a config, a dict (``from_dict``), a preset name or None (the defaults), with
        ``overrides`` on top.

        This is how every constructor that takes ``config=`` and engine keywords combines them.
        """
        if preset is not None and config is not None:
            raise ValueError("give either config or preset, not both (a preset is a whole configuration)")
        if preset is not None:
            base = cls.preset(preset)
        elif config is None:
            base = cls()
        elif isinstance(config, CAIConfig):
            base = config
        elif isinstance(config, Mapping):
            base = cls.from_dict(config)
        else:
            raise TypeError(f"config must be a CAIConfig, a dict or None, got {type(config).__name__}")
        return base.replace(**overrides) if overrides else base

    @classmethod
    def from_attributes(cls, source: Any) -> CAIConfig:
        """A config from the attributes of ``source`` named like options (e.g. parsed command-line flags);
        options it lacks keep their defaults."""
        return cls(**{name: getattr(source, name) for name in cls.fields() if hasattr(source, name)})

    def replace(self, **changes: Any) -> CAIConfig:
        """A copy with ``changes`` applied (and checked)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``quotas`` as a list); ``CAIConfig.from_dict`` reads them back.

        Raises
        ------
        TypeError
            When ``foreground`` is a callable (code does not serialise: name a mode instead).
        """
        if callable(self.foreground):
            raise TypeError(
                "a CAIConfig with a callable foreground does not serialise: use one of "
                f"{FOREGROUNDS} or keep the config in memory"
            )
        values = {name: getattr(self, name) for name in self.fields()}
        values["quotas"] = list(self.quotas)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CAIConfig:
        """The config of ``values`` (as ``to_dict`` writes them; missing options take their defaults)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"from_dict takes a mapping, got {type(values).__name__}")
        _check_names(values)
        return cls(**dict(values))


#: One line of help per option, the single source of the command line's ``--help`` and of the
#: configuration page of the documentation (a test checks every field has one).
OPTION_HELP: dict[str, str] = {
    "mode": "Poisson guidance: source gradients (normal), the larger of source and target (mixed), or one of "
    "the two per image (both)",
    "quotas": "large:medium:small synthesis-type quotas",
    "foreground": "foreground estimator (where an anomaly may go)",
    "threshold": "difference-mask threshold T in image units (7/255: the reference's > 7 of 255)",
    "margin": "kernel size that closes and dilates the pattern mask into the solved region Omega",
    "median": "odd median filter size of the difference mask",
    "mask_rule": "difference mask: majority (the paper's median-filtered threshold) or hysteresis (also keeps "
    "pixels above T connected to a change above 3T)",
    "min_mask_pixels": "a pseudo anomaly with a smaller mask is redrawn",
    "allow_upscale": "allow enlarging a source (r = R'/R > 1)",
    "ratio_decimals": "decimals of R' ('none': continuous)",
    "max_attempts": "draws per image before it is written as normal",
    "anomalies": "pseudo anomalies per image, made in one batched pass (mask: their union)",
    "overlap": "anomalies of one image that meet: stack (the later one on top, as one after the other) or "
    "apart (later ones placed clear of earlier ones)",
    "use_poisson": "Poisson editing (--no-use-poisson pastes the pattern: the paper's ablation)",
    "use_stm": "source-target matching (--no-use-stm: R' uniform in [0.1, 1], the paper's ablation)",
    "use_ils": "injection location selection (--no-use-ils: anywhere, foreground ignored)",
    "atol": "Poisson stop at this estimated max pixel error in image units ('none': exact solve to rtol)",
    "paste_weight": "largest weight of a plain paste of the source over the Poisson result (0: Poisson alone)",
    "grey_injection": "a grey target receives the source's luminance only (--no-grey-injection: its colour)",
    "rtol": "Poisson solver relative residual",
    "max_iter": "Poisson solver iteration limit",
    "backend": "Poisson solver backend",
}


#: Inclusive ``(low, high)`` of the integer options. The upper bounds are far above any useful value and
#: stop a typo before it allocates (margin 100000: a 320 GB canvas) or runs for hours (anomalies 100000).
LIMITS: dict[str, tuple[int, int]] = {
    "margin": (0, 256),
    "median": (1, 255),
    "ratio_decimals": (0, 15),
    "max_attempts": (1, 100),
    "anomalies": (1, 32),
    "max_iter": (0, 10_000),
}


#: Named configurations (:meth:`CAIConfig.preset`): options that differ from the class defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "mode": "normal",
        "quotas": (4.0, 3.0, 3.0),
        "anomalies": 1,
        "grey_injection": False,
        "atol": None,
        "mask_rule": "majority",
    },
}


# ---------------------------------------------------------------------- checks
def _check_names(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(CAIConfig.fields()))
    if unknown:
        raise TypeError(f"unknown engine option(s) {unknown}; the options are {list(CAIConfig.fields())}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


def _quotas(value: Any) -> tuple[float, float, float]:
    if not isinstance(value, (str, Sequence)) or isinstance(value, bytes):
        raise TypeError(f"quotas must be (Nl, Nm, Ns) or a 'Nl:Nm:Ns' string, got {value!r}")
    try:
        quotas = parse_quotas(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"quotas must look like 4:3:3 or (4, 3, 3) (large:medium:small), got {value!r}") from error
    if not all(math.isfinite(q) for q in quotas):
        raise ValueError(f"quotas must be finite, got {value!r}")
    synthesis_probabilities(quotas)  # non-negative with a positive sum
    return quotas


def _foreground(value: Any) -> Any:
    if callable(value):
        return value
    if value not in FOREGROUNDS:
        raise ValueError(f"foreground must be one of {FOREGROUNDS} or a callable (B,C,H,W) -> (B,1,H,W), got {value!r}")
    return str(value)


def _real(
    name: str, value: Any, low: float, high: float, text: str, *, low_open: bool = False, high_closed: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (low < value if low_open else low <= value) or not (value <= high if high_closed else value < high):
        raise ValueError(f"{name} must lie in {text}, got {value}")
    return value


def _integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        value = int(value)
    elif float(value).is_integer():  # 8.0 from a JSON file or a CLI float is still 8
        value = int(value)
    else:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def _boolean(name: str, value: Any) -> bool:
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if not (isinstance(value, bool) or numpy_bool):  # 1, "yes", None: a typo, not a switch
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` (None stays None), or a ValueError when it is malformed or absent.

    Every constructor that takes ``device=`` calls this, so ``device="cuda"`` on a machine without CUDA
    fails at construction rather than on the first batch.
    """
    import torch  # the options themselves stay torch-free; only the device needs it

    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asks for CUDA, but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved
