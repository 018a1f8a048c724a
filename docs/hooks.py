"""MkDocs hooks: the configuration page's option table is rendered from ``CAIConfig`` (one source), and the
benchmark figures are published from where the benchmarks write them (``benchmarks/speed/*.png``,
``benchmarks/detector/figures/*.png``) as ``images/benchmarks/<name>.png``, never copied by hand; and the
Sphinx roles some docstrings use (``:func:`x` ``) render as plain code, not as raw role text."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

MARKER = "<!-- caiconfig-table -->"
ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("benchmarks/speed/*.png", "benchmarks/detector/figures/*.png")
# A Sphinx role as the Markdown renderer leaves it: ":func:<code>~pkg.mod.name</code>".
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):<code>(~?)([^<]*)</code>")


def config_table() -> str:
    """A Markdown table of every ``CAIConfig`` field: name, default and its ``OPTION_HELP`` line."""
    from cai_aug.engine.config import OPTION_HELP, CAIConfig

    rows = ["| Field | Default | Meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(CAIConfig):
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        meaning = OPTION_HELP[field.name].replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def benchmark_figures() -> list[Path]:
    """The committed benchmark plots, sorted."""
    return sorted(path for pattern in FIGURES for path in ROOT.glob(pattern))


def on_files(files: Files, config) -> Files:
    """Add every benchmark figure to the site as ``images/benchmarks/<name>``."""
    for path in benchmark_figures():
        files.append(File.generated(config, f"images/benchmarks/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    """Replace the marker on any page with the generated table."""
    if MARKER in markdown:
        return markdown.replace(MARKER, config_table())
    return markdown


def _role_as_code(match: re.Match) -> str:
    """``:func:`~a.b.c` `` -> ``<code>c</code>`` (the ``~`` keeps the last part, as Sphinx shows it)."""
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    """Render the Sphinx roles left in docstrings as plain code."""
    return ROLE.sub(_role_as_code, html)
