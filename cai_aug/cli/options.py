"""Command-line flags of the engine options, made from :class:`~cai_aug.engine.config.CAIConfig`.

One flag per ``CAIConfig`` field (``--mode``, ``--quotas``, ``--threshold`` ... ``--backend``), with the
config's own default and choices, so a new engine option needs no edit here beyond its help line, and
:func:`engine_config` turns the parsed flags into the config every sub-command passes on. ``--preset``
starts from a named configuration (``paper``); the flags given on top of it win. An engine flag that is
not given is left out of the parsed namespace (``argparse.SUPPRESS``) so that a preset can tell it from
one given with the default's value.
"""

from __future__ import annotations

import argparse
import dataclasses

from cai_aug.engine.config import BACKENDS, FOREGROUNDS, MODES, PRESETS, CAIConfig

# Help per option; defaults and choices come from CAIConfig.
HELP = {
    "mode": "Poisson guidance: source gradients (normal), the larger of source and target (mixed), or one of "
    "the two per image (both)",
    "quotas": "large:medium:small synthesis-type quotas",
    "foreground": "foreground estimator (where an anomaly may go)",
    "threshold": "difference-mask threshold T in image units (7/255: the reference's > 7 of 255)",
    "margin": "kernel size that closes and dilates the pattern mask into the solved region Omega",
    "median": "odd median filter size of the difference mask",
    "min_mask_pixels": "a pseudo anomaly with a smaller mask is redrawn",
    "allow_upscale": "allow enlarging a source (r = R'/R > 1)",
    "ratio_decimals": "decimals of R' ('none': continuous)",
    "max_attempts": "draws per image before it is written as normal",
    "anomalies": "pseudo anomalies injected into each image, one after the other (mask: their union)",
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
CHOICES = {"mode": MODES, "foreground": FOREGROUNDS, "backend": BACKENDS}


def _decimals(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _tolerance(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _quotas_text(quotas: tuple[float, ...]) -> str:
    return ":".join(f"{q:g}" for q in quotas)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per engine option (``--mode``, ``--quotas`` ...), in a group of its own."""
    group = parser.add_argument_group("engine options (see cai_aug.CAIConfig)")
    group.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="start from a named configuration: default, or paper (the paper's settings: normal guidance, "
        "the source's colour on grey targets, exact Poisson solve); flags given beside it win",
    )
    default = CAIConfig()
    unset = argparse.SUPPRESS
    for field in dataclasses.fields(CAIConfig):
        name, value = field.name, getattr(default, field.name)
        flag = "--" + name.replace("_", "-")
        help_text = HELP.get(name, name)
        if isinstance(value, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=help_text)
        elif name == "quotas":
            group.add_argument(flag, default=unset, help=f"{help_text} ({_quotas_text(value)})")
        elif name == "ratio_decimals":
            group.add_argument(flag, type=_decimals, default=unset, help=f"{help_text} ({value})")
        elif name == "atol":
            group.add_argument(flag, type=_tolerance, default=unset, help=f"{help_text} ({value:.4g})")
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else f"{value}"
            group.add_argument(
                flag, type=type(value), default=unset, choices=CHOICES.get(name), help=f"{help_text} ({shown})"
            )


def engine_config(args: argparse.Namespace) -> CAIConfig:
    """The :class:`CAIConfig` of parsed flags: ``--preset`` (or the defaults) with the flags given on top.

    The resolved options are written back onto ``args`` (``args.mode`` ...), so code that reads the
    namespace later (the Ray driver) sees the same configuration. Raises a clear ``ValueError`` or
    ``TypeError`` for a bad value.
    """
    given = {name: getattr(args, name) for name in CAIConfig.fields() if hasattr(args, name)}
    config = CAIConfig.build(preset=getattr(args, "preset", None), **given)
    for name in CAIConfig.fields():
        setattr(args, name, getattr(config, name))
    return config
