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

from cai_aug.engine.config import BACKENDS, FOREGROUNDS, MODES, OPTION_HELP, PRESETS, CAIConfig

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
        help_text = OPTION_HELP[name]
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

    Raises a clear ``ValueError`` or ``TypeError`` for a bad value.
    """
    given = {name: getattr(args, name) for name in CAIConfig.fields() if hasattr(args, name)}
    return CAIConfig.build(preset=getattr(args, "preset", None), **given)
